"""The canonical HDF5's atomic writer (layout: :mod:`data.h5`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from data.atomic import atomic_path
from data.wsi.base import SlideImage
from data.wsi.reference import ImageRef
from data.wsi.tissue import TissueMask

IMAGE_CHUNK = (512, 512, 3)

@dataclass
class SlideRecord:
    """One slide to write: its spot table, its image and attributes.

    ``image`` is a uint8 (H, W, 3) array, a zero-argument callable returning one (so a
    writer holds one image in memory at a time), an open :class:`SlideImage` (copied
    window by window, never whole) or an :class:`ImageRef` (written as a reference).
    """

    name: str
    split: str
    table: np.ndarray
    image: np.ndarray | Callable[[], np.ndarray] | SlideImage | ImageRef
    pixel_size_um: float | None = None
    source: str = ""
    extra_fields: tuple[str, ...] = ()
    tissue: TissueMask | None = None


def _copy_windows(f: h5py.File, key: str, image: SlideImage, compression_level: int,
                  band_rows: int = IMAGE_CHUNK[0]) -> h5py.Dataset:
    """Copy a slide image into a chunked dataset, one band of chunk rows at a time."""
    h, w = image.shape
    chunks = tuple(min(c, s) for c, s in zip(IMAGE_CHUNK, (h, w, 3), strict=True))
    dset = f.create_dataset(key, shape=(h, w, 3), dtype=np.uint8, chunks=chunks,
                            compression="gzip", compression_opts=compression_level,
                            shuffle=True)
    for y0 in range(0, h, band_rows):
        y1 = min(h, y0 + band_rows)
        dset[y0:y1] = image.read_window(y0, y1, 0, w)
    return dset


def _write_image(f: h5py.File, rec: SlideRecord, compression_level: int
                 ) -> h5py.Dataset | h5py.Group:
    key = f"images/{rec.split}/{rec.name}"
    if isinstance(rec.image, ImageRef):
        node = f.create_group(key)
        rec.image.write(node)
        return node
    if isinstance(rec.image, SlideImage):
        return _copy_windows(f, key, rec.image, compression_level)
    image = rec.image() if callable(rec.image) else rec.image
    chunks = tuple(min(c, s) for c, s in zip(IMAGE_CHUNK, image.shape, strict=True))
    return f.create_dataset(key, data=image, chunks=chunks, compression="gzip",
                            compression_opts=compression_level, shuffle=True)


def write_h5(path: str | Path, slides: Iterable[SlideRecord], compression_level: int = 4) -> Path:
    """Write slides in the canonical layout, atomically.

    The file is written to a temporary name in the same folder and renamed over ``path``
    only when complete, so a failure leaves any existing file untouched and no partial one.
    Images are stored chunked (512 x 512 x 3) and gzip-compressed, or as references.
    """
    path = Path(path)
    with atomic_path(path, suffix=".tmp.h5") as tmp, h5py.File(tmp, "w") as f:
        f.create_group("images")
        f.create_group("spots")
        for rec in slides:
            dset = _write_image(f, rec, compression_level)
            if rec.tissue is not None:
                rec.tissue.write(f, f"tissue/{rec.split}/{rec.name}")
            if rec.pixel_size_um is not None:
                dset.attrs["pixel_size_um"] = float(rec.pixel_size_um)
            if rec.source:
                dset.attrs["source"] = rec.source
            tab = f.create_dataset(f"spots/{rec.split}/{rec.name}", data=rec.table)
            if rec.extra_fields:
                tab.attrs["extra_fields"] = list(rec.extra_fields)
    return path



def write_first_spots(src: str | Path, dst: str | Path, n_spots: int) -> Path:
    """A copy of the canonical file ``src`` in which every slide keeps only its first
    ``n_spots`` spots: the same slides (images, tissue masks and attributes copied as
    stored, chunk by chunk, nothing decoded), a smaller workload (benchmarks). Written
    atomically, like :func:`write_h5`."""
    with atomic_path(dst, suffix=".tmp.h5") as tmp, h5py.File(src, "r") as a, \
            h5py.File(tmp, "w") as b:
        for key, value in a.attrs.items():
            b.attrs[key] = value
        for name in a:
            if name != "spots":
                a.copy(a[name], b, name=name)
        for split in a.get("spots", {}):
            for slide, table in a["spots"][split].items():
                copy = b.create_dataset(f"spots/{split}/{slide}", data=table[:n_spots])
                for key, value in table.attrs.items():
                    copy.attrs[key] = value
    return Path(dst)
