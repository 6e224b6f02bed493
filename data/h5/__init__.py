"""The canonical HDF5 layout: :mod:`data.h5.reader` (layout and reader) and
:mod:`data.h5.writer` (atomic writer)."""

from data.h5.reader import H5_ERRORS, SPLITS, CanonicalH5
from data.h5.writer import IMAGE_CHUNK, SlideRecord, write_first_spots, write_h5

__all__ = ["H5_ERRORS", "SPLITS", "IMAGE_CHUNK", "CanonicalH5", "SlideRecord", "write_first_spots",
           "write_h5"]
