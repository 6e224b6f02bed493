"""JPEG and PNG through PIL. These formats have no windowed reads: the image is decoded
whole on first use, as before (they hold small images: a challenge slide, Visium hires)."""

from __future__ import annotations

import numpy as np

from data.errors import DataError, Problem
from data.images import READ_ERRORS, load_image, open_pil
from data.wsi import pixel_size
from data.wsi.base import Level, SlideImage

#: the most pixels a JPEG/PNG may have: it is decoded whole (3 GB of RGB at the limit)
MAX_PIXELS = 2**30


class PilImage(SlideImage):
    """A JPEG/PNG, header read at open, pixels decoded whole at the first window."""

    reader = "pil"

    def __init__(self, path: str, slide: str = "", mpp: float | None = None):
        self.path, self.slide = str(path), slide
        try:
            with open_pil(path) as im:  # the size is checked here, from the header
                w, h = im.size
        except READ_ERRORS as exc:
            raise DataError(Problem(self.path, slide, "image", "a readable JPEG or PNG",
                                    f"error: {exc}", "the file is truncated or not an "
                                    "image; export it again")) from exc
        if h * w > MAX_PIXELS:  # decoded whole: a decompression bomb stops here
            raise DataError(Problem(self.path, slide, "image size", f"at most "
                                    f"{MAX_PIXELS / 1e9:.1f} Gpx for a JPEG/PNG (decoded whole)",
                                    f"{w} x {h} px", "convert the slide to a tiled TIFF "
                                    "(vips tiffsave --tile --pyramid), read in place"))
        self.levels = (Level(h, w, 1.0),)
        self.pixel_size_um = pixel_size.check_override(mpp)
        self._pixels: np.ndarray | None = None

    def read_level(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        if self._pixels is None:
            self._pixels = load_image(self.path, self.slide)
        return self._pixels[y0:y1, x0:x1]

    def verify(self, max_px: int = 4096) -> None:
        """Decode the file (JPEG/PNG have no cheaper check); kept for the reads after."""
        self.read_level(0, 0, 1, 0, 1)

    def close(self) -> None:
        self._pixels = None
