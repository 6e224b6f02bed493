"""Slide images read in place: one reader interface (:class:`data.wsi.base.SlideImage`)
over the canonical HDF5's own pixels, whole-slide files through OpenSlide, plain and
OME-TIFF through tifffile and JPEG/PNG through PIL; pixel sizes from file metadata; the
tissue detector and the spot grid laid over it for slides without spots."""
