"""Plain, OME and pyramidal TIFFs through tifffile: windows read tile by tile (or strip by
strip) through tifffile's Zarr view of each level, never the whole page."""

from __future__ import annotations

import logging

import imagecodecs
import numpy as np
import tifffile
import zarr

from data.errors import DataError, Problem
from data.images import READ_ERRORS
from data.validate import MAX_CHUNK_BYTES
from data.wsi import pixel_size
from data.wsi.base import Level, SlideImage

RGB_AXES = ("S", "C")
#: the most a TIFF's codecs shrink pixels (deflate 1032:1, LZW ~2700:1, JPEG less):
#: declared pixels beyond this times the stored bytes are refused unread
MAX_TIFF_RATIO = 10_000
#: levels up to this many pixels are read whatever the file stores
MIN_CHECKED_PX = 2**28


def _checked_lzw(data: bytes, out: int | None = None) -> bytes:
    """LZW decoded without the size tifffile expects: imagecodecs' decoder given an output
    size trusts the stream, and a corrupt one writes past the buffer (a segmentation
    fault, imagecodecs 2025.11); without it, the stream is sized first and a corrupt one
    raises. A segment of another size than expected is refused by tifffile's reshape."""
    return imagecodecs.lzw_decode(data)


def _guard_codecs() -> None:
    """Route tifffile's LZW decoding (compression 5) through :func:`_checked_lzw`."""
    codecs = getattr(tifffile.TIFF.DECOMPRESSORS, "_codecs", None)
    if isinstance(codecs, dict):
        codecs[5] = _checked_lzw


def _unreadable(path: str, slide: str, exc: Exception, where: str = "") -> DataError:
    return DataError(Problem(path, slide, f"image{where}", "a readable TIFF", f"error: {exc}",
                             "the file is damaged, truncated or not a TIFF; export it again"))


def _segments_problem(page: tifffile.TiffPage, size: int) -> str:
    """What is wrong with a page's tiles or strips (see ``TiffImage._check_extent``)."""
    offsets, counts = page.dataoffsets, page.databytecounts
    ends = [o + n for o, n in zip(offsets, counts, strict=False) if n]
    declared = float(np.prod(page.shape, dtype=float)) * page.dtype.itemsize
    chunk = float(np.prod(page.chunks, dtype=float)) * page.dtype.itemsize
    if len(offsets) != len(counts) or len(offsets) != int(np.prod(page.chunked)):
        return f"{len(offsets)} tile offsets and {len(counts)} sizes for {page.chunked} tiles"
    if ends and max(ends) > size:
        return f"tiles up to byte {max(ends):,}"
    if page.compression != 1 and chunk > MAX_CHUNK_BYTES:
        return f"compressed tiles of {page.chunks} px"
    if declared > MIN_CHECKED_PX * 3 and declared > MAX_TIFF_RATIO * sum(counts):
        return f"{page.shape} px declared, {sum(counts):,} bytes of tiles"
    return ""


class TiffImage(SlideImage):
    """A TIFF's first series; its reduced levels (pyramid) when it has them.

    Raises:
        DataError: unreadable file, pixels that are not 8-bit, or no Y/X axes.
    """

    reader = "tifffile"

    def __init__(self, path: str, slide: str = "", mpp: float | None = None):
        self.path, self.slide = str(path), slide
        _guard_codecs()
        quiet = logging.getLogger("tifffile")  # its errors come back as our DataError
        level, quiet.level = quiet.level, logging.CRITICAL
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            self._axes = [lev.axes for lev in series.levels]
            shapes = [lev.shape for lev in series.levels]
            dtype = series.dtype
        except READ_ERRORS as exc:
            raise _unreadable(self.path, slide, exc) from exc
        finally:
            quiet.setLevel(level)
        if dtype != np.uint8:
            self.close()
            raise DataError(Problem(self.path, slide, "image dtype", "8-bit pixels (uint8)",
                                    str(dtype), "convert the image to 8-bit RGB"))
        samples = [shape[a.index(c)] for a, shape in zip(self._axes, shapes, strict=True)
                   for c in RGB_AXES if c in a]
        if any("Y" not in a or "X" not in a for a in self._axes) or \
                any(n not in (1, 3, 4) for n in samples) or any(0 in sh for sh in shapes):
            self.close()
            raise DataError(Problem(self.path, slide, "image axes", "Y and X axes, 1, 3 or "
                                    "4 samples, no side of 0 px", f"axes {self._axes[0]!r} "
                                    f"of shape {shapes[0]}", "save the image as RGB"))
        h0, w0 = self._hw(0, shapes[0])
        levels = []
        for i, shape in enumerate(shapes):
            h, w = self._hw(i, shape)
            levels.append(Level(h, w, (h0 / h + w0 / w) / 2))
        self.levels = tuple(levels)
        self._arrays: dict[int, zarr.Array] = {}
        self.pixel_size_um = pixel_size.check_override(mpp) or self._file_pixel_size()
        self._check_extent()

    def _check_extent(self) -> None:
        """Every level's tiles (or strips), from its tags alone, before any pixel is read:
        as many as its size needs, each at most :data:`MAX_CHUNK_BYTES` decoded, inside
        the file, and together holding at least 1/:data:`MAX_TIFF_RATIO` of the declared
        pixels. A truncated file, or a header claiming 10^6 x 10^6 px with 1 kB of data,
        is named at open."""
        size = self._tif.filehandle.size
        for i, lev in enumerate(self._tif.series[0].levels):
            for page in lev.pages:
                if page is None or not hasattr(page, "dataoffsets"):
                    continue
                try:
                    why = _segments_problem(page, size)
                except READ_ERRORS as exc:  # tags tifffile cannot compute tiles from
                    why = f"{type(exc).__name__}: {exc}"
                if why:
                    self.close()
                    raise DataError(Problem(self.path, self.slide, f"level {i} tiles",
                                            f"tiles inside the file ({size:,} bytes) for "
                                            "the size its tags give", why, "the file is "
                                            "truncated or damaged: copy or export it again"))

    def _hw(self, level: int, shape: tuple[int, ...]) -> tuple[int, int]:
        axes = self._axes[level]
        return int(shape[axes.index("Y")]), int(shape[axes.index("X")])

    def _file_pixel_size(self) -> float | None:
        tif, path = self._tif, self.path
        got = pixel_size.from_ome(tif.ome_metadata, path) if tif.is_ome else None
        page = tif.pages.first
        if got is None:
            got = pixel_size.from_aperio_description(page.description, path) \
                if tif.is_svs else None
        if got is None:
            tags = page.tags
            xres, yres, unit = (tags.get(n) for n in
                                ("XResolution", "YResolution", "ResolutionUnit"))
            if xres is not None and isinstance(unit.value if unit is not None else None,
                                               int):
                got = pixel_size.from_resolution(
                    xres.value, yres.value if yres is not None else xres.value,
                    int(unit.value), "TIFF resolution tags", path)
        return got

    def _array(self, level: int) -> zarr.Array:
        if level not in self._arrays:
            store = self._tif.series[0].aszarr(level=level)
            self._arrays[level] = zarr.open_array(store, mode="r")
        return self._arrays[level]

    def read_level(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        axes = self._axes[level]
        index = tuple(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X"
                      else slice(None) if a in RGB_AXES else 0 for a in axes)
        try:
            window = np.asarray(self._array(level)[index])
        except READ_ERRORS as exc:
            raise _unreadable(self.path, self.slide, exc,
                              f" (level {level}, y {y0}:{y1}, x {x0}:{x1})") from exc
        kept = [a for a in axes if a in ("Y", "X") or a in RGB_AXES]
        if not any(a in RGB_AXES for a in kept):
            return np.repeat(window.transpose(kept.index("Y"), kept.index("X"))[..., None],
                             3, axis=2)
        c = next(a for a in kept if a in RGB_AXES)
        window = window.transpose(kept.index("Y"), kept.index("X"), kept.index(c))
        if window.shape[2] == 1:
            return np.repeat(window, 3, axis=2)
        return np.ascontiguousarray(window[:, :, :3])

    def close(self) -> None:
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()
