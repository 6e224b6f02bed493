"""Whole-slide formats through OpenSlide (SVS, NDPI, MRXS, SCN, BIF, generic tiled and
pyramidal TIFF). ``openslide-bin`` ships the library, so nothing is installed system-wide.
"""

from __future__ import annotations

import numpy as np

from data.errors import DataError, Problem
from data.wsi import pixel_size
from data.wsi.base import Level, SlideImage


def _openslide():
    import openslide  # imported on use: the library loads a shared object

    return openslide


def detect(path: str) -> str | None:
    """OpenSlide's vendor name for the file (``"generic-tiff"``, ``"aperio"``, ...), or
    None when OpenSlide cannot read it."""
    try:
        return _openslide().OpenSlide.detect_format(path)
    except Exception:  # noqa: BLE001 - any failure means "not for OpenSlide"
        return None


class OpenSlideImage(SlideImage):
    """A slide opened by OpenSlide; transparent (unscanned) areas read as white.

    Raises:
        DataError: OpenSlide cannot open or read the file.
    """

    reader = "openslide"

    def __init__(self, path: str, slide: str = "", mpp: float | None = None):
        self.path, self.slide = str(path), slide
        openslide = _openslide()
        try:
            self._osr = openslide.OpenSlide(self.path)
        except (openslide.OpenSlideError, OSError) as exc:
            raise DataError(Problem(self.path, slide, "image", "a slide OpenSlide reads "
                                    "(SVS, NDPI, MRXS, SCN, tiled TIFF)", f"error: {exc}",
                                    "the file is truncated or in another format; export it "
                                    "again or convert it to a tiled TIFF")) from exc
        osr = self._osr
        self.levels = tuple(Level(h, w, float(d)) for (w, h), d in
                            zip(osr.level_dimensions, osr.level_downsamples, strict=True))
        self.vendor = osr.properties.get("openslide.vendor", "")
        self.pixel_size_um = pixel_size.check_override(mpp) or \
            pixel_size.from_openslide(osr.properties, self.path)

    def read_level(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        ds = self.levels[level].downsample
        try:
            region = self._osr.read_region((int(round(x0 * ds)), int(round(y0 * ds))), level,
                                           (x1 - x0, y1 - y0))
        except _openslide().OpenSlideError as exc:
            raise DataError(Problem(self.path, self.slide, f"level {level} window "
                                    f"y {y0}:{y1}, x {x0}:{x1}", "readable tiles",
                                    f"error: {exc}", "the file is damaged; export it again")
                            ) from exc
        rgba = np.asarray(region)
        rgb, alpha = rgba[..., :3], rgba[..., 3:]
        if alpha.min() == 255:
            return np.ascontiguousarray(rgb)
        a = alpha.astype(np.uint16)
        return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)

    def close(self) -> None:
        osr = getattr(self, "_osr", None)
        if osr is not None:
            osr.close()
