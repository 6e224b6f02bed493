"""The store's reader (stage 2, the report): finished arrays, checked and named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from data.errors import DataError, Problem
from data.store.format import BOOKKEEPING, bad_chunks, check_format, exists
from data.store.items import FeatureSpec


def open_store(root: str | Path) -> zarr.Group:
    """The store, read-only.

    Raises:
        DataError: no store at ``root``, or one of a newer format.
    """
    if not exists(root):
        raise DataError(Problem(str(root), "", "", "an embeddings store", "no such folder",
                                "run `make embeddings` (hespot embed) first"))
    store = zarr.open_group(str(root), mode="r")
    check_format(store, str(root))
    return store


def read_array(store: zarr.Group, root: str, spec: FeatureSpec, slide: str,
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
    if not np.all(group["done"][:] == 1):
        raise DataError(Problem(root, slide, key, "a finished slide", "an interrupted run",
                                "run `make embeddings` again: it resumes"))
    try:
        X = np.asarray(group[spec.array][:], dtype=np.float32)
    except Exception as exc:  # noqa: BLE001 - a codec's own error: named below
        chunk_spots = group[spec.array].chunks[0]
        bad = bad_chunks(group[spec.array], chunk_spots)
        if not bad:
            raise
        chunks = ", ".join(str(c) for c, _ in bad[:8]) + (" ..." if len(bad) > 8 else "")
        raise DataError(Problem(root, slide, f"{key}/{spec.array}",
                                "chunks that match their checksums",
                                f"damaged chunk(s) {chunks} ({bad[0][1]})",
                                "run `hespot embed` again with the same settings: it "
                                "recomputes damaged chunks")) from exc
    if n_spots is not None and len(X) != n_spots:
        raise DataError(Problem(root, slide, f"{key}/{spec.array}",
                                f"{n_spots} rows (the spot table)", f"{len(X)} rows",
                                "the HDF5 changed since: rerun embeddings with --overwrite"))
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
