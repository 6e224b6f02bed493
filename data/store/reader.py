"""The store's reader (stage 2, the report): finished arrays, checked and named."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from data.errors import DataError, Problem
from data.store.format import BOOKKEEPING, bad_chunks, check_format, exists
from data.store.items import FeatureSpec
from data.validate import MAX_CHUNK_BYTES

#: the widest feature array accepted (stage 1 writes a few thousand columns at most)
MAX_DIM = 1 << 16
_DAMAGED = "the store is damaged: embed into a new --store (or again with --overwrite)"


def open_store(root: str | Path) -> zarr.Group:
    """The store, read-only, its metadata (every group's and array's) read and checked.

    Raises:
        DataError: no store at ``root``, one of a newer format, or metadata zarr cannot
            read.
    """
    if not exists(root):
        raise DataError(Problem(str(root), "", "", "an embeddings store", "no such folder",
                                "run `make embeddings` (hespot embed) first"))
    try:
        with warnings.catch_warnings():  # zarr warns, then raises, on a damaged zarr.json
            warnings.simplefilter("ignore")
            store = zarr.open_group(str(root), mode="r")
            store.members(max_depth=None)
        check_format(store, str(root))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - zarr's parsers raise many types on bad JSON
        found = f"{type(exc).__name__}: {str(exc).rstrip('.')}"[:300]
        raise DataError(Problem(str(root), "", "zarr.json", "metadata zarr reads", found,
                                _DAMAGED)) from exc
    return store


def _check_declared(root: str, slide: str, key: str, array: zarr.Array, done: zarr.Array,
                    n_spots: int | None) -> None:
    """An array's shape, dtype and chunks and its ``done`` flags' shape, from the
    metadata: a damaged header never makes the reader allocate by its declared size."""
    shape, chunks = tuple(array.shape), tuple(array.chunks)
    bad = ""
    if len(shape) != 2 or array.dtype.kind != "f" or shape[1] > MAX_DIM or 0 in chunks:
        bad = f"shape {shape}, dtype {array.dtype}"
    elif int(np.prod(chunks, dtype=float)) * array.dtype.itemsize > MAX_CHUNK_BYTES:
        bad = f"chunks {chunks}"
    elif tuple(done.shape) != (-(-shape[0] // chunks[0]),):
        bad = f"done flags of shape {tuple(done.shape)} for {shape[0]} rows"
    if bad:
        raise DataError(Problem(root, slide, key, "float (spots, features) arrays with one "
                                "done flag per chunk", bad, _DAMAGED))
    if n_spots is not None and shape[0] != n_spots:
        raise DataError(Problem(root, slide, key, f"{n_spots} rows (the spot table)",
                                f"{shape[0]} rows",
                                "the HDF5 changed since: rerun embeddings with --overwrite"))


def read_array(store: zarr.Group, root: str, spec: FeatureSpec, slide: str,
               n_spots: int | None = None) -> np.ndarray:
    """:func:`_read_array`, zarr's warnings about damaged metadata silenced (the
    DataError it ends in names the problem)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _read_array(store, root, spec, slide, n_spots)


def _read_array(store: zarr.Group, root: str, spec: FeatureSpec, slide: str,
                n_spots: int | None = None) -> np.ndarray:
    """float32 (n_spots, dim) of one finished (backbone, slide, array); with ``n_spots``
    the row count is checked against the spot table.

    Raises:
        DataError: missing backbone, slide or array, an unfinished slide, or a row count
            that differs from the spot table's.
    """
    fix = f"run `make embeddings` (hespot embed --backbones {spec.item}) first"
    key = f"{spec.backbone}/{slide}"
    if key not in store:
        raise DataError(Problem(root, slide, key, f"embeddings of {spec.backbone}",
                                "none stored", fix))
    group = store[key]
    if spec.array not in group:
        have = sorted(k for k in group.array_keys() if k not in BOOKKEEPING)
        raise DataError(Problem(root, slide, f"{key}/{spec.array}", f"one of {have}",
                                "no such array", fix))
    if "done" not in group or not isinstance(group["done"], zarr.Array):
        raise DataError(Problem(root, slide, f"{key}/done", "the chunks' done flags",
                                "none", _DAMAGED))
    array = group[spec.array]
    if not isinstance(array, zarr.Array):
        raise DataError(Problem(root, slide, f"{key}/{spec.array}", "an array", "a group",
                                _DAMAGED))
    _check_declared(root, slide, f"{key}/{spec.array}", array, group["done"], n_spots)
    try:
        done = group["done"][:]
    except Exception as exc:  # noqa: BLE001 - a codec's own error
        raise DataError(Problem(root, slide, f"{key}/done", "readable done flags",
                                f"{type(exc).__name__}: {exc}"[:200], _DAMAGED)) from exc
    if not np.all(done == 1):
        raise DataError(Problem(root, slide, key, "a finished slide", "an interrupted run",
                                "run `make embeddings` again: it resumes"))
    try:
        X = np.asarray(array[:], dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - a codec's own error: named below
        chunk_spots = array.chunks[0]
        bad = bad_chunks(array, chunk_spots)
        if not bad:
            raise
        chunks = ", ".join(str(c) for c, _ in bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise DataError(Problem(root, slide, f"{key}/{spec.array}",
                                "chunks that match their checksums",
                                f"damaged chunk(s) {chunks} ({bad[0][1]})",
                                "run `hespot embed` again with the same settings: it "
                                "recomputes damaged chunks")) from exc
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():  # a chunk file gone reads as the fill value (NaN)
        raise DataError(Problem(root, slide, f"{key}/{spec.array}", "finite features",
                                f"{int(bad.sum())} rows NaN or infinite, first row "
                                f"{int(np.flatnonzero(bad)[0])} (a chunk missing?)",
                                "run `hespot embed --overwrite` for this slide"))
    return X


def read_features(root: str | Path, backbone: str, slide: str,
                  name: str = "features") -> np.ndarray:
    """float32 (n_spots, dim) of a complete slide, opening the store by path."""
    return read_array(open_store(root), str(root), FeatureSpec(backbone, name), slide)


def slide_attrs(root: str | Path, backbone: str, slide: str) -> dict[str, Any]:
    """The attributes (settings, info, arrays) of one backbone x slide group."""
    return dict(open_store(root)[f"{backbone}/{slide}"].attrs)


def backbones(store: zarr.Group) -> list[str]:
    """Backbone names held by the store, sorted."""
    return sorted(store.group_keys())
