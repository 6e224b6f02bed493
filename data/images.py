"""Reading slide images from disk (TIFF/OME-TIFF, JPEG, PNG) as uint8 RGB arrays."""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from data.errors import DataError, Problem

log = logging.getLogger("hespot")

TIFF_SUFFIXES = {".tif", ".tiff", ".btf"}
PIL_SUFFIXES = {".jpg", ".jpeg", ".png"}
_PIL_GUARD = threading.Lock()  # one open at a time changes PIL's global guard


@contextmanager
def open_pil(path: str | Path) -> Iterator[Image.Image]:
    """``Image.open(path)`` with PIL's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``,
    89 Mpx) off for this open only: whole-slide JPEGs and PNGs exceed it, and hespot
    bounds their size itself (:class:`data.wsi.pil_image.PilImage` refuses one over
    ``MAX_PIXELS`` from its header, before any decoding). PIL reads the guard when it
    opens a file, so it is restored as soon as the header is read, before the caller
    decodes; the image is closed when the block ends."""
    with _PIL_GUARD:
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    with image:
        yield image


#: what a damaged or hostile image file makes PIL, tifffile or their codecs raise
READ_ERRORS = (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError,
               AttributeError, ArithmeticError, RuntimeError, struct.error,
               tifffile.TiffFileError)


def is_file(path: str | Path, folder: bool = False) -> bool:
    """Whether ``path`` is a file (or, with ``folder``, a folder); False, not an error, for
    a name no file can have (too long, a NUL character), as a table may give one."""
    try:
        return Path(path).is_dir() if folder else Path(path).is_file()
    except (OSError, ValueError):
        return False


def _missing(path: Path, slide: str) -> DataError:
    return DataError(Problem(str(path), slide, "image", "an image file (TIFF, JPEG or PNG)",
                             "no such file", "check the image path"))


def _check_suffix(path: Path, slide: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in TIFF_SUFFIXES | PIL_SUFFIXES:
        raise DataError(Problem(str(path), slide, "image", "a .tif/.tiff/.jpg/.jpeg/.png file",
                                f"suffix {suffix!r}", "convert the image to TIFF or PNG"))
    return suffix


def to_rgb_uint8(array: np.ndarray, path: str, slide: str) -> np.ndarray:
    """Return (H, W, 3) uint8; gray and RGBA are converted with a warning.

    Raises:
        DataError: the pixels are not uint8 or the shape is not an image's.
    """
    if array.dtype != np.uint8:
        raise DataError(Problem(path, slide, "image dtype", "8-bit pixels (uint8)",
                                str(array.dtype),
                                "convert the image to 8-bit RGB (e.g. with tifffile or PIL)"))
    if array.ndim == 2:
        log.warning("%s, slide %s: grayscale image converted to RGB", path, slide)
        return np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim == 3 and array.shape[2] == 4:
        log.warning("%s, slide %s: RGBA image, alpha channel dropped", path, slide)
        return np.ascontiguousarray(array[:, :, :3])
    if array.ndim == 3 and array.shape[2] == 1:
        log.warning("%s, slide %s: single-channel image converted to RGB", path, slide)
        return np.repeat(array, 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise DataError(Problem(path, slide, "image shape", "(H, W, 3) RGB", str(array.shape),
                                "save the image as RGB"))
    return array


def load_image(path: str | Path, slide: str = "") -> np.ndarray:
    """Read an image file as uint8 (H, W, 3) RGB (the full-resolution level of a TIFF)."""
    path = Path(path)
    if not is_file(path):
        raise _missing(path, slide)
    suffix = _check_suffix(path, slide)
    try:
        if suffix in TIFF_SUFFIXES:
            array = tifffile.imread(path, series=0, level=0)
            if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[2] not in (3, 4):
                array = np.moveaxis(array, 0, -1)  # planar (C, H, W) -> (H, W, C)
        else:
            with open_pil(path) as im:
                if im.mode in ("I;16", "I", "F"):
                    array = np.asarray(im)
                elif im.mode in ("RGB", "RGBA", "L"):
                    array = np.asarray(im)
                else:
                    log.warning("%s, slide %s: %s image converted to RGB", path, slide, im.mode)
                    array = np.asarray(im.convert("RGB"))
    except READ_ERRORS as exc:
        raise DataError(Problem(str(path), slide, "image", "a readable image", f"error: {exc}",
                                "the file is truncated or not an image; export it again")
                        ) from exc
    return to_rgb_uint8(np.asarray(array), str(path), slide)
