"""The reader interface every slide image offers, whatever holds its pixels.

A :class:`SlideImage` has one or more pyramid levels (level 0 is full resolution) and
reads rectangular windows of any level; nothing reads a whole slide at full resolution.
Thumbnails are box averages of the coarsest level that is still big enough, read band by
band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Level:
    """One pyramid level: its size in pixels and its downsample from level 0."""

    height: int
    width: int
    downsample: float


class SlideImage:
    """A slide's pixels, read window by window.

    Subclasses set ``path`` (named in messages), ``slide``, ``reader`` (the registry
    name), ``levels`` (level 0 first, downsamples increasing) and ``pixel_size_um``
    (µm per level-0 pixel, None when unknown), and implement :meth:`read_level`.
    """

    path: str = ""
    slide: str = ""
    reader: str = ""
    levels: tuple[Level, ...] = ()
    pixel_size_um: float | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of level 0."""
        return self.levels[0].height, self.levels[0].width

    def read_level(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """uint8 (y1 - y0, x1 - x0, 3) pixels of a window of ``level`` (coordinates in
        that level's pixels), which must lie inside the level."""
        raise NotImplementedError

    def read_window(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """uint8 (y1 - y0, x1 - x0, 3) pixels of a level-0 window inside the image."""
        return self.read_level(0, y0, y1, x0, x1)

    def best_level(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (level 0 if
        none is): patches cut there keep at least the pixels the model needs."""
        best = 0
        for i, lev in enumerate(self.levels):
            if lev.downsample <= downsample * (1 + 1e-6):
                best = i
        return best

    def thumbnail(self, max_px: int, band_rows: int = 512
                  ) -> tuple[np.ndarray, tuple[float, float]]:
        """Box-averaged thumbnail, longest side at most ``max_px``.

        Read band by band from the coarsest level at least ``max_px`` on its longest side
        (level 0 when there is no pyramid). Rows and columns left over by the integer
        factor are dropped.

        Returns:
            uint8 (h, w, 3) and (fy, fx): level-0 pixels per thumbnail pixel, so
            thumbnail pixel (i, j) covers level-0 rows i*fy..(i+1)*fy.
        """
        max_px = max(1, max_px)
        level = 0
        for i, lev in enumerate(self.levels):
            if max(lev.height, lev.width) >= max_px:
                level = i
        lev = self.levels[level]
        H, W = lev.height, lev.width
        f = max(1, math.ceil(max(H, W) / max_px))
        fy, fx = min(f, H), min(f, W)
        h, w = H // fy, W // fx
        out = np.empty((h, w, 3), np.uint8)
        step = max(1, band_rows // fy)
        for i0 in range(0, h, step):
            i1 = min(h, i0 + step)
            band = np.ascontiguousarray(self.read_level(level, i0 * fy, i1 * fy, 0, w * fx))
            # sum the fy rows of each block (contiguous vectors), then the fx columns
            rows = band.reshape(i1 - i0, fy, w * fx * 3).sum(axis=1, dtype=np.uint32)
            total = rows.reshape(i1 - i0, w, fx, 3).sum(axis=2)
            out[i0:i1] = np.minimum(255, (total + fy * fx // 2) // (fy * fx)).astype(np.uint8)
        return out, (fy * lev.downsample, fx * lev.downsample)

    def verify(self, max_px: int = 4096) -> None:
        """Read the coarsest level whole when it is at most ``max_px`` a side (the tiles
        scanners write last), else its four corners: a damaged or truncated file fails
        here, before any expensive work. Raises the reader's DataError."""
        level = len(self.levels) - 1
        h, w = self.levels[level].height, self.levels[level].width
        if max(h, w) <= max_px:
            self.read_level(level, 0, h, 0, w)
            return
        for y0, x0 in ((0, 0), (0, w - 256), (h - 256, 0), (h - 256, w - 256)):
            y0, x0 = max(0, y0), max(0, x0)
            self.read_level(level, y0, min(h, y0 + 256), x0, min(w, x0 + 256))

    def close(self) -> None:
        """Release file handles (a no-op where there are none)."""

    def __enter__(self) -> SlideImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if not self.levels:
            return f"{type(self).__name__}({self.path!r}, not open)"
        h, w = self.shape
        return (f"{type(self).__name__}({self.path!r}, {h}x{w} px, {len(self.levels)} "
                f"level(s), {self.pixel_size_um} um/px)")
