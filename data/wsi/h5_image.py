"""A slide image whose pixels are in the canonical HDF5 itself (one level)."""

from __future__ import annotations

import h5py
import numpy as np

from data.chunks import DECODE_ERRORS, ChunkWindows
from data.chunks import supports as chunk_windows_support
from data.errors import DataError, Problem
from data.wsi.base import Level, SlideImage


class H5Image(SlideImage):
    """``images/<split>/<slide>``, a uint8 (H, W, 3) dataset, read window by window.

    Deflate-chunked images (what the importers write) are inflated chunk by chunk with
    ISA-L (:mod:`data.chunks`, ~3x h5py's zlib); other layouts via h5py slicing.
    """

    reader = "hdf5"

    def __init__(self, dset: h5py.Dataset, path: str, slide: str, chunk_cache_mb: int = 64):
        self.path, self.slide, self._dset = path, slide, dset
        h, w = dset.shape[:2]
        self.levels = (Level(int(h), int(w), 1.0),)
        value = dset.attrs.get("pixel_size_um")
        self.pixel_size_um = float(value) if value is not None else None
        self._windows = ChunkWindows(dset, chunk_cache_mb) if chunk_windows_support(dset) \
            else None

    def read_level(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        try:
            if self._windows is None:
                return self._dset[y0:y1, x0:x1]
            return self._windows.read(y0, y1, x0, x1)
        except DECODE_ERRORS as exc:  # a damaged chunk (HDF5's or the inflater's error)
            raise DataError(Problem(self.path, self.slide, "image", "chunks that decode",
                                    f"rows {y0}:{y1}, columns {x0}:{x1}: {exc}"[:300],
                                    "the file is damaged or truncated: import the slide "
                                    "again")) from exc
