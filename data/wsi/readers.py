"""The reader registry: which :class:`~data.wsi.base.SlideImage` opens a file.

``auto`` picks by suffix: vendor whole-slide suffixes (SVS, NDPI, MRXS, ...) go to
OpenSlide, and so do TIFFs OpenSlide recognises as a vendor's (Philips, Ventana); other
TIFFs (generic tiled/pyramidal, strip, OME) go to tifffile, which reads the same windows of
a generic pyramidal TIFF ~3.5x faster than OpenSlide here (``make bench-read``: 461 vs
131 patches/s of 224 px on the 28k x 30k benchmark slide); JPEG/PNG go to PIL.
``--reader openslide`` still reads generic TIFFs through OpenSlide.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from data.errors import ConfigError, DataError, Problem
from data.images import PIL_SUFFIXES, TIFF_SUFFIXES, is_file
from data.wsi.base import SlideImage
from data.wsi.openslide_image import OpenSlideImage, detect
from data.wsi.pil_image import PilImage
from data.wsi.tiff_image import TiffImage

READERS: dict[str, Callable[..., SlideImage]] = {
    "openslide": OpenSlideImage,
    "tifffile": TiffImage,
    "pil": PilImage,
}
OPENSLIDE_SUFFIXES = {".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide"}
SUFFIXES = sorted(OPENSLIDE_SUFFIXES | TIFF_SUFFIXES | PIL_SUFFIXES)


def choose_reader(path: str | Path, slide: str = "") -> str:
    """The reader ``auto`` uses for ``path``.

    Raises:
        DataError: no such file, or a suffix no reader handles.
    """
    path = Path(path)
    if not is_file(path):
        raise DataError(Problem(str(path), slide, "image", "an image file", "no such file",
                                "check the image path"))
    name = path.name.lower()
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        return "pil"
    if name.endswith((".ome.tif", ".ome.tiff")):
        return "tifffile"
    vendor = detect(str(path)) if suffix in OPENSLIDE_SUFFIXES | TIFF_SUFFIXES else None
    if vendor is not None and (vendor != "generic-tiff" or suffix not in TIFF_SUFFIXES):
        return "openslide"
    if suffix in TIFF_SUFFIXES:
        return "tifffile"
    if suffix in OPENSLIDE_SUFFIXES:
        raise DataError(Problem(str(path), slide, "image", f"a slide OpenSlide reads "
                                f"({suffix})", "a file OpenSlide does not recognise",
                                "the file is truncated or damaged; export it again"))
    raise DataError(Problem(str(path), slide, "image", f"one of {', '.join(SUFFIXES)}",
                            f"suffix {suffix!r}", "convert the image to a tiled TIFF (e.g. "
                            "with vips tiffsave --tile --pyramid) or to PNG"))


def open_image(path: str | Path, slide: str = "", reader: str = "auto",
               mpp: float | None = None) -> SlideImage:
    """Open a slide image file for windowed reads; ``mpp`` overrides its pixel size.

    Raises:
        ConfigError: an unknown reader name.
        DataError: the file is missing, unsupported or unreadable.
    """
    if reader == "auto":
        reader = choose_reader(path, slide)
    elif reader not in READERS:
        raise ConfigError(f"unknown image reader {reader!r}; choose auto or one of "
                          f"{sorted(READERS)}")
    elif not is_file(path):
        choose_reader(path, slide)  # raises the missing-file problem
    return READERS[reader](str(path), slide, mpp)
