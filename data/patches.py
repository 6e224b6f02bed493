"""Square patches centred on spots, read window by window from a slide's image (its
pixels in the canonical HDF5, or the referenced slide file read in place).

Spots are grouped into horizontal bands; each band's window is read once (only the chunks
or tiles it touches) and every patch in it is cut from memory, so a slide's image is never
read once per spot. Patches that overhang the image border are padded. Given the model's
input side, a patch is cut from the coarsest pyramid level that still has that many
pixels across it (its physical size unchanged), so reading does not grow with the scan
resolution.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from data.errors import ConfigError, DataError, Problem
from data.h5 import CanonicalH5

PAD_MODES = ("reflect", "constant", "edge")
#: patches up to this side are cut from a band with one vectorised gather (a copy loop
#: per spot costs more than the copy there); larger ones are copied one by one
SMALL_PATCH = 48


def resolve_patch_px(size_px: int | None = 224, size_um: float | None = None,
                     pixel_size_um: float | None = None, where: str = "") -> int:
    """Patch side in pixels: ``size_um / pixel_size_um`` when ``size_um`` is given, else
    ``size_px``.

    Raises:
        DataError: ``size_um`` is given but the slide has no recorded pixel size.
    """
    if size_um is not None:
        if not pixel_size_um:
            raise DataError(Problem(where, "", "pixel_size_um", "a recorded pixel size",
                                    "none", "give the patch size in pixels (--patch-px) "
                                    "instead of µm, or import the slide again with its pixel "
                                    "size (import-wsi --mpp, import-her2st --pixel-size, "
                                    "import-table's pixel_size_um column)"))
        return max(1, int(round(size_um / pixel_size_um)))
    if size_px is None or size_px < 1:
        raise ConfigError(f"patch size must be a positive number of pixels, got {size_px}")
    return int(size_px)


@dataclass
class PatchCropper:
    """Crop ``size`` x ``size`` uint8 patches centred on spots of one slide.

    Args:
        h5: an open canonical file.
        slide: slide name.
        size: patch side in pixels.
        pad_mode: "reflect", "constant" or "edge" for patches overhanging the border.
        pad_value: fill for "constant".
        band_px: the tallest window read at once (rows, of the level read); bounds memory
            to band_px x image width x 3 bytes.
        out_px: the side patches are resized to afterwards (the model input), or None:
            patches are then cut from the level whose downsample is at most
            ``size / out_px`` (:meth:`SlideImage.best_level`) and are ``size / downsample``
            pixels a side; None cuts ``size`` px from level 0.
    """

    h5: CanonicalH5
    slide: str
    size: int
    pad_mode: str = "reflect"
    pad_value: int = 0
    band_px: int = 1024
    out_px: int | None = None

    def __post_init__(self) -> None:
        if self.pad_mode not in PAD_MODES:
            raise ConfigError(f"pad_mode must be one of {PAD_MODES}, got {self.pad_mode!r}")
        self.level, self.downsample = 0, 1.0
        if self.out_px:
            image = self.h5.image(self.slide)
            self.level = image.best_level(self.size / self.out_px)
            lev = image.levels[self.level]
            self.downsample = lev.downsample
            self.height, self.width = lev.height, lev.width
            self.size = max(1, int(round(self.size / self.downsample)))
        else:
            self.height, self.width = self.h5.image_shape(self.slide)[:2]

    def _read_box(self, top: int, left: int, bottom: int, right: int) -> np.ndarray:
        """uint8 (bottom - top, right - left, 3): a box that may overhang the image."""
        y0, y1 = max(top, 0), min(bottom, self.height)
        x0, x1 = max(left, 0), min(right, self.width)
        if y0 >= y1 or x0 >= x1:
            return np.full((bottom - top, right - left, 3), self.pad_value, np.uint8)
        if self.pad_mode == "reflect":
            # reflection mirrors rows/columns up to the pad width inside the image: read
            # them too, or np.pad would reflect past the end of a too-small window
            y0 = max(0, min(y0, 2 * self.height - 1 - bottom))
            y1 = min(self.height, max(y1, 1 - top))
            x0 = max(0, min(x0, 2 * self.width - 1 - right))
            x1 = min(self.width, max(x1, 1 - left))
        window = self.h5.read_window(self.slide, y0, y1, x0, x1) if self.level == 0 else \
            self.h5.image(self.slide).read_level(self.level, y0, y1, x0, x1)
        pad = ((max(y0 - top, 0), max(bottom - y1, 0)), (max(x0 - left, 0), max(right - x1, 0)),
               (0, 0))
        if any(p for pair in pad for p in pair):
            kwargs = {"constant_values": self.pad_value} if self.pad_mode == "constant" else {}
            window = np.pad(window, pad, mode=self.pad_mode, **kwargs)
        r, c = min(top, y0), min(left, x0)  # the padded window's origin in image coordinates
        return window[top - r:bottom - r, left - c:right - c]

    def crop(self, x: np.ndarray, y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Patches centred on (x, y).

        Args:
            x: (n,) level-0 pixel columns; y: (n,) level-0 pixel rows.
            out: uint8 (n, size, size, 3) to write them into (shared memory, say); None:
                a new array.

        Returns:
            uint8 (n, size, size, 3), in the order of the inputs (``size`` of the level
            read): ``out`` where given.
        """
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if self.level:
            x, y = x / self.downsample, y / self.downsample
        shape = (len(x), self.size, self.size, 3)
        if out is None:
            out = np.empty(shape, np.uint8)
        elif out.shape != shape or out.dtype != np.uint8:
            raise ValueError(f"out must be uint8 {shape}, got {out.dtype} {out.shape}")
        if len(x) == 0:
            return out
        half = self.size // 2
        tops = np.round(y).astype(np.int64) - half
        lefts = np.round(x).astype(np.int64) - half
        order = np.argsort(tops, kind="stable")
        sorted_tops = tops[order]
        start = 0
        while start < len(order):  # one band (one window read) per turn, not per spot
            limit = sorted_tops[start] + max(self.band_px - self.size, 0)
            stop = int(np.searchsorted(sorted_tops, limit, side="right"))
            idx = order[start:stop]
            top, bottom = sorted_tops[start], sorted_tops[stop - 1] + self.size
            left, right = lefts[idx].min(), lefts[idx].max() + self.size
            box = self._read_box(top, left, bottom, right)
            rows, cols = tops[idx] - top, lefts[idx] - left
            if self.size <= SMALL_PATCH:  # one gather: Python per spot would dominate
                windows = sliding_window_view(box, (self.size, self.size), axis=(0, 1))
                out[idx] = windows[rows, cols].transpose(0, 2, 3, 1)
            else:
                for i, r, c in zip(idx, rows, cols, strict=True):
                    out[i] = box[r:r + self.size, c:c + self.size]
            start = stop
        return out


def crop_patches(h5: CanonicalH5, slide: str, size: int, indices: np.ndarray | None = None,
                 pad_mode: str = "reflect") -> np.ndarray:
    """uint8 (n, size, size, 3) patches for the slide's spots (all, or ``indices``)."""
    table = h5.positions(slide)  # x, y only: no abundances read
    idx = np.arange(len(table)) if indices is None else np.asarray(indices)
    return PatchCropper(h5, slide, size, pad_mode).crop(table.x[idx], table.y[idx])


def iter_patch_batches(h5: CanonicalH5, slide: str, size: int, batch_size: int,
                       start: int = 0, pad_mode: str = "reflect"
                       ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (indices (b,), patches uint8 (b, size, size, 3)) over the slide's spots from
    row ``start`` on, ``batch_size`` spots at a time, in spot-table order."""
    table = h5.positions(slide)  # x, y only: no abundances read
    cropper = PatchCropper(h5, slide, size, pad_mode)
    for s in range(start, len(table), batch_size):
        idx = np.arange(s, min(s + batch_size, len(table)))
        yield idx, cropper.crop(table.x[idx], table.y[idx])
