"""Where the tissue is: optical density and texture on a low-resolution view of the slide,
closed at the tissue's scale, holes inside the outline kept.

Stained tissue absorbs light (its optical density, OD = -log10(I / 256) averaged over
R, G, B, is high) or, where it is pale (loose stroma, fat), is textured: fibres, nuclei
and cell membranes make the OD vary from pixel to pixel, while glass, even glass tinted by
stain diffusing off the section, is smooth. A mask pixel is tissue where its OD is above
the slide's Otsu threshold (scikit-image; kept within :data:`MIN_OD`-:data:`MAX_OD`) or
its OD's local standard deviation is above :data:`TEXTURE`. Gaps narrower than
:data:`CLOSE_UM` are closed, holes inside the outline filled (a lumen or a fat lobule is
tissue to a pathologist) and specks dropped. Spots offset into the glass beyond the
closing's reach (the challenge's S_1) stay off the tissue.

The mask is computed on a thumbnail read from a coarse pyramid level (about
:data:`MASK_PX` on its longest side). It decides which grid spots an H&E-only slide gets
(:mod:`data.wsi.grid`), which spots ``data.check`` reports as background and the outline
drawn on the report's thumbnails.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py
import numpy as np
from scipy import ndimage
from skimage import filters

from data.errors import DataError, Problem
from data.wsi.base import SlideImage

#: longest side of the thumbnail the mask is computed on
MASK_PX = 2048
#: pixels darker than this (max channel) are scanner fill or pen, not tissue
MIN_BRIGHTNESS = 30
#: OD (mean of R, G, B) below this is never tissue by density, whatever Otsu says: the
#: bundled sections' glass, tinted or grey, lies at 0.02-0.11 (99.9 % of its pixels)
MIN_OD = 0.12
#: ... and above this always is: on a view that is all tissue (a crop, the challenge's
#: images) Otsu splits the tissue itself (the bundled sections' Otsu, 0.20-0.28, is
#: capped too: their tissue's median OD is 0.16-0.25, a tenth of it is under 0.1 and
#: found by its texture)
MAX_OD = 0.2
#: the OD's local standard deviation (:func:`texture`) above which a pixel is (textured)
#: tissue: on the bundled sections' glass 99.9 % of pixels stay under 0.007 (sensor noise
#: of sd 3 grey levels reads 0.003), inside their tissue half the pixels exceed 0.02-0.06
TEXTURE = 0.01
#: side of the square window (mask pixels) the texture is measured over
TEXTURE_PX = 5
#: gaps in the tissue narrower than twice this are closed (µm) ...
CLOSE_UM = 50.0
#: ... or, when the pixel size is unknown, than twice this share of the longest side
CLOSE_SHARE = 0.005
#: widest disc (mask pixels, radius) correlated with the mask; wider ones use a coarser mask
MAX_DISC = 8
#: connected pieces of tissue smaller than this are dropped as specks (µm^2)
MIN_AREA_UM2 = 20_000.0
#: ... or, when the pixel size is unknown, smaller than this share of the thumbnail
MIN_AREA_SHARE = 2e-4
#: the method recorded with a mask (a mask stored by an older version names its own)
METHOD = "od-texture"


class NoTissue(DataError):
    """The slide shows no tissue at all (blank glass)."""


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the slide and how it maps to level-0 pixels.

    Attributes:
        mask: bool (h, w); mask pixel (i, j) covers level-0 rows i*fy..(i+1)*fy.
        scale: (fy, fx), level-0 pixels per mask pixel.
        threshold: the OD threshold used; otsu: Otsu's threshold before the bounds.
        texture: the texture threshold used (NaN for a mask of another method).
        method: how the mask was found (:data:`METHOD`, or an older version's name).
    """

    mask: np.ndarray
    scale: tuple[float, float]
    threshold: float
    otsu: float
    texture: float = TEXTURE
    method: str = METHOD

    @property
    def rule(self) -> str:
        """The rule that made the mask, in words (for captions and logs)."""
        if self.method == METHOD:
            return f"optical density > {self.threshold:.3f} or texture > {self.texture:.3f}"
        return f"{self.method}, threshold {self.threshold:.3f}"

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
                           "texture": self.texture, "method": self.method})

    @classmethod
    def read(cls, dset: h5py.Dataset) -> TissueMask:
        a = dset.attrs
        fy, fx = (float(v) for v in a["scale"])
        method = a.get("method", "otsu-saturation")
        method = method.decode() if isinstance(method, bytes) else str(method)
        return cls(dset[()].astype(bool), (fy, fx), float(a["threshold"]), float(a["otsu"]),
                   float(a.get("texture", np.nan)), method)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """float32 (h, w): the optical density -log10((I + 1) / 256) of uint8 RGB (h, w, 3),
    averaged over the three channels (0 for white, 2.4 for black)."""
    lut = -np.log10((np.arange(256, dtype=np.float32) + 1) / 256)
    return (lut[rgb[..., 0]] + lut[rgb[..., 1]] + lut[rgb[..., 2]]) / np.float32(3)


def local_std(values: np.ndarray, size: int) -> np.ndarray:
    """float32 (h, w): the standard deviation of ``values`` (h, w) over a size x size window
    around each pixel (edges mirrored)."""
    v = values.astype(np.float32)
    mean = ndimage.uniform_filter(v, size)
    return np.sqrt(np.maximum(ndimage.uniform_filter(v * v, size) - mean * mean, 0))


def texture(od: np.ndarray, bright: np.ndarray) -> np.ndarray:
    """float32 (h, w): the OD's local standard deviation over :data:`TEXTURE_PX` wide
    windows, the smallest of the windows that hold the pixel: glass beside tissue (whose
    window centred on it holds the edge) and beside scanner fill (``bright`` False)
    reads as smooth; pixels inside textured tissue do not."""
    std = np.where(ndimage.minimum_filter(bright, TEXTURE_PX), local_std(od, TEXTURE_PX), 0)
    return ndimage.minimum_filter(std, TEXTURE_PX)


def close_gaps(mask: np.ndarray, radius: float) -> np.ndarray:
    """bool (h, w): ``mask`` closed by a square of half-side ``radius`` pixels (gaps
    narrower than 2 ``radius`` along rows or columns, 2.8 ``radius`` across diagonals, are
    closed; convex outlines are unchanged), then every hole inside it filled.

    A square rather than a disc: its maximum and minimum filters run row by row and
    column by column whatever the radius (0.3 s on a 2,048 px mask, a disc's 3 s). Beyond
    the edge the image continues as it is at the edge.
    """
    size = 2 * int(round(radius)) + 1
    closed = ndimage.minimum_filter(ndimage.maximum_filter(mask, size, mode="nearest"),
                                    size, mode="nearest")
    return fill_holes(mask | closed)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """bool (h, w): ``mask`` with every hole (a piece of background that does not touch
    the border) filled; as ``ndimage.binary_fill_holes``, by labels (4x faster)."""
    labels, n = ndimage.label(~mask)
    hole = np.ones(n + 1, bool)
    hole[0] = False
    hole[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    return mask | hole[labels]


def drop_specks(mask: np.ndarray, min_px: float) -> np.ndarray:
    """bool (h, w): ``mask`` without its connected pieces smaller than ``min_px`` pixels."""
    labels, n = ndimage.label(mask)
    if not n:
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= min_px
    keep[0] = False
    return keep[labels]


def _scales(image: SlideImage, scale: tuple[float, float], shape: tuple[int, int]
            ) -> tuple[float, float]:
    """(closing radius, smallest piece) in mask pixels, from µm where the size is known."""
    if image.pixel_size_um:
        um = image.pixel_size_um * float(np.sqrt(scale[0] * scale[1]))
        return CLOSE_UM / um, min(MIN_AREA_UM2 / um ** 2, 0.01 * shape[0] * shape[1])
    return CLOSE_SHARE * max(shape), MIN_AREA_SHARE * shape[0] * shape[1]


def detect_tissue(image: SlideImage, mask_px: int = MASK_PX) -> TissueMask:
    """The tissue mask of a slide, from a thumbnail of at most ``mask_px`` a side.

    Raises:
        NoTissue: no tissue at all (blank slide): the message gives the thresholds.
    """
    thumb, scale = image.thumbnail(mask_px)
    od = optical_density(thumb)
    bright = np.maximum(np.maximum(thumb[..., 0], thumb[..., 1]), thumb[..., 2]) \
        >= MIN_BRIGHTNESS
    textured = texture(od, bright) > TEXTURE
    found = float(filters.threshold_otsu(od[bright])) if bright.sum() > 1 else MAX_OD
    threshold = min(max(found, MIN_OD), MAX_OD)
    mask = bright & ((od > threshold) | textured)
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3), bool))
    radius, min_px = _scales(image, scale, mask.shape)
    mask = drop_specks(close_gaps(mask, radius), min_px)
    if not mask.any():
        raise NoTissue(Problem(image.path, image.slide, "tissue",
                                "stained tissue (dense or textured pixels)",
                                f"none: optical density threshold {threshold:.3f} (Otsu "
                                f"{found:.3f}, kept within {MIN_OD}-{MAX_OD}; largest "
                                f"{float(od[bright].max(initial=0)):.3f}), texture "
                                f"threshold {TEXTURE}",
                                "check that the slide is stained and not blank, or pass "
                                "--spots with the spot positions"))
    return TissueMask(mask, scale, threshold, found)
