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
from pathlib import Path

import h5py
import numpy as np

from data.errors import DataError, Problem
from data.spots import COORDS, SpotTable, cell_type_fields
from data.wsi.base import SlideImage
from data.wsi.h5_image import H5Image
from data.wsi.reference import MARK, ImageRef
from data.wsi.tissue import TissueMask

SPLITS = ("Train", "Test")

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
        except OSError as exc:
            raise DataError(Problem(str(self.path), "", "", "a readable HDF5 file",
                                    f"unreadable ({exc})",
                                    "the file is truncated or corrupt: copy or import it again")
                            ) from exc
        missing = [g for g in ("images", "spots") if g not in self._f]
        if missing:
            self.close()
            raise DataError(Problem(str(self.path), "", "/".join(missing),
                                    "groups images/{Train,Test} and spots/{Train,Test}",
                                    f"no group {', '.join(missing)}",
                                    "write the file with one of the hespot import-* commands"))

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
        split = self.split_of(slide)
        key = f"images/{split}/{slide}"
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
        return TissueMask.read(self._f[key]) if key in self._f else None

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

    def raw_table(self, slide: str) -> np.ndarray:
        """The stored structured array of one slide."""
        return self._f[f"spots/{self.split_of(slide)}/{slide}"][()]

    def spots(self, slide: str) -> SpotTable:
        """The slide's spot table; cell types are the training columns."""
        split = self.split_of(slide)
        table = self.raw_table(slide)
        names = table.dtype.names or ()
        for c in COORDS:
            if c not in names:
                raise DataError(Problem(str(self.path), slide, f"spots/{split}/{slide}:{c}",
                                        "fields x (pixel column) and y (pixel row)",
                                        f"fields {list(names)}",
                                        "rename the coordinate fields to x and y"))
        cell_types: tuple[str, ...] = ()
        Y = None
        if split == "Train":
            cell_types = tuple(cell_type_fields(table, self.extra_fields(slide)))
            Y = np.stack([table[c].astype(np.float64) for c in cell_types], axis=1) \
                if cell_types else np.zeros((len(table), 0))
        extra = {}
        for n in names:
            if n in COORDS or n in cell_types:
                continue
            col = table[n]
            if col.dtype.kind == "S":
                col = np.char.decode(col, "utf-8")
            extra[n] = col
        return SpotTable(slide, split, table["x"].astype(np.float64),
                         table["y"].astype(np.float64), cell_types, Y, extra)

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
        table = self.raw_table(slide)
        for c in COORDS:
            h.update(np.ascontiguousarray(table[c], dtype=np.float64).tobytes())
        ref = self.image_ref(slide)
        if ref is not None:
            h.update(repr(((ref.height, ref.width, 3), "uint8")).encode())
            h.update(ref.content_hash(self.path, slide).encode())
            return h.hexdigest()
        dset = self._image(slide)
        h.update(repr((dset.shape, str(dset.dtype))).encode())
        if dset.chunks is not None:
            dsid = dset.id
            for i in range(dsid.get_num_chunks()):
                offset = dsid.get_chunk_info(i).chunk_offset
                h.update(dsid.read_direct_chunk(offset)[1])
        else:
            step = max(1, 2**24 // max(1, dset.shape[1] * 3))
            for r in range(0, dset.shape[0], step):
                h.update(dset[r:r + step].tobytes())
        return h.hexdigest()
