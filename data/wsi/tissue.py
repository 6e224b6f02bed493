"""Where the tissue is: Otsu on saturation of a low-resolution view of the slide.

Stained tissue is saturated (haematoxylin purple, eosin pink); glass, gaps and the
scanner's white fill are not. The mask is computed on a thumbnail read from a coarse
pyramid level (about :data:`MASK_PX` on its longest side), small specks are dropped and
holes inside tissue filled. It decides which grid spots an H&E-only slide gets
(:mod:`data.wsi.grid`) and which spots ``data.check`` reports as background.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
from scipy import ndimage

from data.errors import DataError, Problem
from data.wsi.base import SlideImage

#: longest side of the thumbnail the mask is computed on
MASK_PX = 2048
#: saturation below this is never tissue, whatever Otsu says (blank glass is ~0.01-0.03)
MIN_SATURATION = 0.05
#: ... and above this always is: on a view that is all tissue (a crop, the challenge's
#: images) Otsu splits the tissue itself (the bundled C2 slide's threshold is 0.156)
MAX_SATURATION = 0.2
#: pixels darker than this (max channel) are scanner fill or pen, not tissue
MIN_BRIGHTNESS = 30
#: widest disc (mask pixels, radius) correlated with the mask; wider ones use a coarser mask
MAX_DISC = 8
#: connected pieces of tissue smaller than this are dropped as specks (µm^2)
MIN_AREA_UM2 = 20_000.0
#: ... or, when the pixel size is unknown, smaller than this share of the thumbnail
MIN_AREA_SHARE = 2e-4


class NoTissue(DataError):
    """The slide shows no tissue at all (blank glass)."""


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the slide and how it maps to level-0 pixels.

    Attributes:
        mask: bool (h, w); mask pixel (i, j) covers level-0 rows i*fy..(i+1)*fy.
        scale: (fy, fx), level-0 pixels per mask pixel.
        threshold: the saturation threshold used; otsu: Otsu's threshold before the floor.
    """

    mask: np.ndarray
    scale: tuple[float, float]
    threshold: float
    otsu: float

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """``(0, w*fx, h*fy, 0)``: the mask's extent in level-0 pixels, for ``imshow``."""
        h, w = self.mask.shape
        return 0.0, w * self.scale[1], h * self.scale[0], 0.0

    @property
    def share(self) -> float:
        """Fraction of the (thumbnail) slide area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def _index(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, w = self.mask.shape
        i = np.clip((np.asarray(y, float) / self.scale[0]).astype(np.int64), 0, h - 1)
        j = np.clip((np.asarray(x, float) / self.scale[1]).astype(np.int64), 0, w - 1)
        return i, j

    def on_tissue(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """bool (n,): whether each level-0 point (x column, y row) lies on tissue."""
        return self.mask[self._index(x, y)]

    def coverage(self, x: np.ndarray, y: np.ndarray, radius_px: float) -> np.ndarray:
        """float (n,): the share of the disc of ``radius_px`` level-0 pixels around each
        point that is tissue (the centre pixel alone for discs under one mask pixel)."""
        r = radius_px / float(np.mean(self.scale))
        if r < 1:
            return self.on_tissue(x, y).astype(float)
        # discs wider than MAX_DISC mask pixels: average the mask over blocks first, so
        # the cost stays ~ mask pixels x MAX_DISC^2 whatever the slide's resolution
        f = max(1, int(np.ceil(r / MAX_DISC)))
        h, w = self.mask.shape
        hp, wp = -(-h // f) * f, -(-w // f) * f
        padded = np.zeros((hp, wp), np.float32)
        padded[:h, :w] = self.mask
        small = padded.reshape(hp // f, f, wp // f, f).mean(axis=(1, 3))
        k, rs = int(np.ceil(r / f)), r / f
        yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
        disc = (xx ** 2 + yy ** 2 <= rs * rs).astype(np.float32)
        share = ndimage.correlate(small, disc / disc.sum(), mode="constant", cval=0.0)
        i, j = self._index(x, y)
        return share[i // f, j // f].astype(float)

    def write(self, f: h5py.File, key: str) -> None:
        dset = f.create_dataset(key, data=self.mask.astype(np.uint8), compression="gzip")
        dset.attrs.update({"scale": np.asarray(self.scale, float),
                           "threshold": self.threshold, "otsu": self.otsu,
                           "method": "otsu-saturation"})

    @classmethod
    def read(cls, dset: h5py.Dataset) -> TissueMask:
        a = dset.attrs
        fy, fx = (float(v) for v in a["scale"])
        return cls(dset[()].astype(bool), (fy, fx), float(a["threshold"]), float(a["otsu"]))


def saturation(rgb: np.ndarray) -> np.ndarray:
    """float32 (h, w) HSV saturation of uint8 RGB, 0 where the pixel is black."""
    rgb = rgb.astype(np.float32)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0).astype(np.float32)


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(1, hist.sum())
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m = np.cumsum(p * centres)
    between = (m[-1] * w0 - m) ** 2 / np.maximum(w0 * (1 - w0), 1e-12)
    return float(edges[int(np.argmax(between[:-1])) + 1])


def detect_tissue(image: SlideImage, mask_px: int = MASK_PX,
                  min_saturation: float = MIN_SATURATION) -> TissueMask:
    """The tissue mask of a slide, from a thumbnail of at most ``mask_px`` a side.

    Raises:
        DataError: no tissue at all (blank slide): the message gives the thresholds.
    """
    thumb, scale = image.thumbnail(mask_px)
    sat = saturation(thumb)
    bright = thumb.max(axis=2) >= MIN_BRIGHTNESS
    found = otsu(sat[bright]) if bright.any() else 1.0
    threshold = min(max(found, min_saturation), max(MAX_SATURATION, min_saturation))
    mask = (sat > threshold) & bright
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
    mask = ndimage.binary_fill_holes(mask)
    if image.pixel_size_um:
        px_area = image.pixel_size_um ** 2 * scale[0] * scale[1]
        min_px = min(MIN_AREA_UM2 / px_area, 0.01 * mask.size)
    else:
        min_px = MIN_AREA_SHARE * mask.size
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_px
        keep[0] = False
        mask = keep[labels]
    if not mask.any():
        raise NoTissue(Problem(image.path, image.slide, "tissue",
                                "stained tissue (saturated pixels)",
                                f"none: saturation threshold {threshold:.3f} (Otsu "
                                f"{found:.3f}, kept within {min_saturation}-"
                                f"{MAX_SATURATION}), max saturation "
                                f"{float(sat.max()):.3f}",
                                "check that the slide is stained and not blank, or pass "
                                "--spots with the spot positions"))
    return TissueMask(mask, scale, threshold, found)
