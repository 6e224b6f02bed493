"""The canonical HDF5 layout (the challenge's) and its reader; the writer is
:mod:`data.h5.writer`.

Layout::

    images/Train/<slide>   uint8 (H, W, 3)
    images/Test/<slide>    uint8 (H, W, 3)
    spots/Train/<slide>    structured array: x, y, <cell types...> [, extra fields]
    spots/Test/<slide>     structured array: x, y [, extra fields]

``x`` is the pixel column and ``y`` the pixel row of the spot centre. Optional attributes
on ``images/<split>/<slide>``: ``pixel_size_um`` (float) and ``source`` (str). Optional
attribute ``extra_fields`` on ``spots/<split>/<slide>``: names of numeric fields that are
not cell types. String fields (such as ``spot_id``) are never cell types.

A slide's image may instead be held by reference: ``images/<split>/<slide>`` is then a
group whose attributes name the image file, its reader, size, pixel size and content hash
(:mod:`data.wsi.reference`); its pixels are read from that file in place. Optional
``tissue/<split>/<slide>``: the tissue mask an importer found (:mod:`data.wsi.tissue`).
Every image, held or referenced, is read through one interface (:meth:`CanonicalH5.image`,
a :class:`data.wsi.base.SlideImage`).

The reader reads the challenge's ``elucidata_ai_challenge_data.h5`` as it is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from data.chunks import hash_stored
from data.errors import DataError, Problem
from data.h5.layout import H5_ERRORS, SPLITS, layout_problem, read_mask
from data.spots import COORDS, SpotTable, cell_type_fields, decode_utf8
from data.wsi.base import SlideImage
from data.wsi.h5_image import H5Image
from data.wsi.reference import MARK, ImageRef
from data.wsi.tissue import TissueMask

#: rows of a spot table read at once (19 MB for x, y and 35 float64 cell types)
SPOT_BLOCK = 65_536

class CanonicalH5:
    """Read-only access to a file in the canonical layout.

    Use as a context manager. Images are read window by window (h5py reads only the
    chunks a window touches, with a chunk cache), never whole per spot.

    Raises:
        DataError: the file is missing, not HDF5, truncated, or lacks the layout's groups.
    """

    def __init__(self, path: str | Path, chunk_cache_mb: int = 64):
        self.path = Path(path)
        self.chunk_cache_mb = chunk_cache_mb
        self._images: dict[str, SlideImage] = {}
        if not self.path.exists():
            raise DataError(Problem(str(self.path), "", "", "an HDF5 file", "no such file",
                                    "check the path (make demo writes out/her2st.h5)"))
        try:
            self._f = h5py.File(self.path, "r", rdcc_nbytes=chunk_cache_mb * 2**20)
            where, found = layout_problem(self._f)
        except H5_ERRORS as exc:  # its root group unreadable too
            if hasattr(self, "_f"):
                self._f.close()
            raise DataError(Problem(str(self.path), "", "", "a readable HDF5 file",
                                    f"unreadable ({exc})",
                                    "the file is truncated or corrupt: copy or import it again")
                            ) from exc
        if where:
            self.close()
            raise DataError(Problem(str(self.path), "", where,
                                    "groups images/{Train,Test} and spots/{Train,Test}",
                                    found, "write the file with one of the hespot import-* "
                                    "commands"))

    def close(self) -> None:
        for image in list(self._images.values()):
            image.close()
        self._images = {}
        self._f.close()

    def __enter__(self) -> CanonicalH5:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def h5(self) -> h5py.File:
        return self._f

    def slides(self, split: str) -> list[str]:
        """Slide names of one split ("Train" or "Test") that have a spot table, sorted."""
        group = self._f["spots"].get(split)
        return sorted(group.keys()) if group is not None else []

    @property
    def train_slides(self) -> list[str]:
        return self.slides("Train")

    @property
    def test_slides(self) -> list[str]:
        return self.slides("Test")

    def split_of(self, slide: str) -> str:
        """The split holding ``slide``; DataError naming the known slides if none does."""
        for split in SPLITS:
            if slide in self._f["spots"].get(split, {}):
                return split
        known = self.train_slides + self.test_slides
        raise DataError(Problem(str(self.path), slide, "spots", f"one of the slides {known}",
                                "no such slide", "pass a slide name that is in the file"))

    def _image(self, slide: str) -> h5py.Dataset | h5py.Group:
        key = f"images/{self.split_of(slide)}/{slide}"
        if key not in self._f:
            raise DataError(Problem(str(self.path), slide, key, "an image dataset", "none",
                                    "add the slide's image (re-run the importer)"))
        return self._f[key]

    def image_ref(self, slide: str) -> ImageRef | None:
        """The slide's image reference, or None when its pixels are in the file."""
        node = self._image(slide)
        if isinstance(node, h5py.Group):
            if MARK not in node.attrs:
                raise DataError(Problem(str(self.path), slide, node.name,
                                        "an image dataset or an image reference", "a group "
                                        "without hespot_image_ref", "re-run the importer"))
            try:
                return ImageRef.read(node)
            except (KeyError, ValueError, TypeError) as exc:
                raise DataError(Problem(str(self.path), slide, node.name,
                                        "a complete image reference", f"error: {exc}",
                                        "import the slide again")) from exc
        return None

    def image(self, slide: str) -> SlideImage:
        """The slide's image for windowed reads (the file's pixels, or the referenced
        file opened in place); kept open for the next call, closed with the file.

        The last two slides opened stay open; older ones are dropped (not closed: a
        reader thread may still hold one)."""
        images = self._images  # read once: a reader thread may replace it
        if slide in images:
            return images[slide]
        ref = self.image_ref(slide)
        image = ref.open(self.path, slide) if ref is not None else \
            H5Image(self._image(slide), str(self.path), slide, self.chunk_cache_mb)
        kept = list(images.items())[-1:]
        self._images = dict([*kept, (slide, image)])
        return image

    def image_shape(self, slide: str) -> tuple[int, ...]:
        """Shape of the slide's image, (H, W, 3) in a valid file (read from attributes
        for a referenced image: the file is not opened)."""
        ref = self.image_ref(slide)
        if ref is not None:
            return (ref.height, ref.width, 3)
        return tuple(self._image(slide).shape)

    def pixel_size_um(self, slide: str) -> float | None:
        """Micrometres per pixel if the file records it (the challenge file does not)."""
        value = self._image(slide).attrs.get("pixel_size_um")
        return float(value) if value is not None else None

    def tissue(self, slide: str) -> TissueMask | None:
        """The tissue mask recorded at import (slides laid out on a grid), else None."""
        key = f"tissue/{self.split_of(slide)}/{slide}"
        return read_mask(self._f[key], str(self.path), slide) if key in self._f else None

    def extra_fields(self, slide: str) -> tuple[str, ...]:
        raw = self._f[f"spots/{self.split_of(slide)}/{slide}"].attrs.get("extra_fields", [])
        return tuple(v.decode() if isinstance(v, bytes) else str(v) for v in np.atleast_1d(raw))

    @property
    def cell_types(self) -> tuple[str, ...]:
        """Cell-type columns of the first train slide (data.check verifies they agree)."""
        train = self.train_slides
        if not train:
            return ()
        slide = train[0]
        empty = self._f[f"spots/Train/{slide}"][:0]
        return tuple(cell_type_fields(empty, self.extra_fields(slide)))

    def _table(self, slide: str) -> h5py.Dataset:
        return self._f[f"spots/{self.split_of(slide)}/{slide}"]

    def raw_table(self, slide: str) -> np.ndarray:
        """The stored structured array of one slide, whole (:meth:`spot_blocks` reads it
        a block of rows at a time)."""
        return self._table(slide)[()]

    def n_spots(self, slide: str) -> int:
        """Rows of the slide's spot table (from the metadata: nothing is read)."""
        return int(self._table(slide).shape[0])

    def spot_blocks(self, slide: str, rows: int = SPOT_BLOCK
                    ) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, structured rows) of the slide's spot table, ``rows`` at a time: a
        table of millions of spots is read in bounded memory."""
        dset = self._table(slide)
        for start in range(0, dset.shape[0], rows):
            yield start, dset[start:start + rows]

    def _require_coords(self, slide: str, names: tuple[str, ...]) -> None:
        for c in COORDS:
            if c not in names:
                split = self.split_of(slide)
                raise DataError(Problem(str(self.path), slide, f"spots/{split}/{slide}:{c}",
                                        "fields x (pixel column) and y (pixel row)",
                                        f"fields {list(names)}",
                                        "rename the coordinate fields to x and y"))

    def coords(self, slide: str) -> tuple[np.ndarray, np.ndarray]:
        """float64 (n_spots,) x (pixel column) and y (pixel row) of the slide's spots, read
        field by field (the rest of the table is not loaded)."""
        dset = self._table(slide)
        self._require_coords(slide, dset.dtype.names or ())
        return tuple(np.asarray(dset.fields(c)[()], dtype=np.float64) for c in COORDS)

    def positions(self, slide: str) -> SpotTable:
        """The slide's spot positions alone: a :class:`SpotTable` with x and y (no cell
        types, abundances or extra fields read), for stages that only crop patches."""
        x, y = self.coords(slide)
        return SpotTable(slide, self.split_of(slide), x, y)

    def abundance_blocks(self, slide: str, rows: int = SPOT_BLOCK
                         ) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float64 (b, n_types) abundances) of a slide's cell-type columns
        (:attr:`cell_types` of that slide's own table), ``rows`` at a time."""
        types = cell_type_fields(self._table(slide)[:0], self.extra_fields(slide))
        for start, block in self.spot_blocks(slide, rows):
            Y = np.empty((len(block), len(types)))
            for j, c in enumerate(types):
                Y[:, j] = block[c]
            yield start, Y

    def spots(self, slide: str) -> SpotTable:
        """The slide's spot table; cell types are the training columns. Read a block of
        rows at a time (no copy of the whole stored table is held)."""
        split = self.split_of(slide)
        dset = self._table(slide)
        names = dset.dtype.names or ()
        self._require_coords(slide, names)
        n = dset.shape[0]
        cell_types: tuple[str, ...] = ()
        Y = None
        if split == "Train":
            cell_types = tuple(cell_type_fields(dset[:0], self.extra_fields(slide)))
            Y = np.empty((n, len(cell_types)))
        others = [c for c in names if c not in COORDS and c not in cell_types]
        x, y = np.empty(n), np.empty(n)
        raw = {c: np.empty(n, dset.dtype[c]) for c in others}
        for start, block in self.spot_blocks(slide):
            stop = start + len(block)
            x[start:stop], y[start:stop] = block["x"], block["y"]
            for j, c in enumerate(cell_types):
                Y[start:stop, j] = block[c]
            for c in others:
                raw[c][start:stop] = block[c]
        extra = {c: decode_utf8(col) if col.dtype.kind == "S" else col
                 for c, col in raw.items()}
        return SpotTable(slide, split, x, y, cell_types, Y, extra)

    def read_window(self, slide: str, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """uint8 (y1 - y0, x1 - x0, 3) level-0 pixels of a window inside the image."""
        return self.image(slide).read_window(y0, y1, x0, x1)

    def thumbnail(self, slide: str, max_px: int) -> tuple[np.ndarray, tuple[float, float]]:
        """uint8 (h, w, 3) box-averaged thumbnail and its (fy, fx) level-0 pixels per
        thumbnail pixel (:meth:`SlideImage.thumbnail`)."""
        return self.image(slide).thumbnail(max_px)

    def fingerprint(self, slide: str) -> str:
        """sha256 over what patches depend on: spot positions and image content (raw
        chunks when chunked; a referenced file's sha256). Abundances are left out, so
        another tier of the same slides reuses the embeddings."""
        h = hashlib.sha256()
        for values in self.coords(slide):
            h.update(values.tobytes())
        ref = self.image_ref(slide)
        if ref is not None:
            h.update(repr(((ref.height, ref.width, 3), "uint8")).encode())
            h.update(ref.content_hash(self.path, slide).encode())
            return h.hexdigest()
        dset = self._image(slide)
        h.update(repr((dset.shape, str(dset.dtype))).encode())
        hash_stored(h, dset)
        return h.hexdigest()
