"""The embeddings store: the one hand-over from stage 1 to stage 2 (its format, writer and
reader). No torch here: stage 1 writes through :func:`open_slide`, stage 2 and the report
read through :func:`read_array`.

Layout (Zarr)::

    <root>/                            attrs: hespot_store_format (int)
    <root>/<backbone>/<slide>/<array>  float32 (n_spots, dim), chunked by spots
    <root>/<backbone>/<slide>/spot_index  int64 (n_spots,)
    <root>/<backbone>/<slide>/done     uint8 (n_chunks,), chunked by 1

Arrays are ``features`` (pooled, primary crop), ``stages`` (mean+std of intermediate
stages) and the same at other crop sizes (``features_448px``...). A slide group's
attributes hold ``settings`` (everything that determines the values: compared on resume),
``info`` (provenance: weights file, device, versions) and ``arrays`` (name -> layer and
crop size). A chunk's ``done`` flag is set only after its rows are written, so a run
killed at any point resumes at the first chunk not done.

Stores written before the format attribute existed have the same layout (format 1) and
are read as they are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from data.errors import DataError, Problem

STORE_FORMAT = 1
FORMAT_ATTR = "hespot_store_format"
BOOKKEEPING = ("done", "spot_index")


@dataclass(frozen=True)
class FeatureSpec:
    """One array of the store: ``backbone`` and array name (``features``, ``stages``,
    ``features_448px``...). Written ``backbone`` or ``backbone:array`` on the command line."""

    backbone: str
    array: str = "features"

    @classmethod
    def parse(cls, text: str) -> FeatureSpec:
        backbone, _, array = text.partition(":")
        return cls(backbone.strip(), array.strip() or "features")

    def __str__(self) -> str:
        return self.backbone if self.array == "features" else f"{self.backbone}:{self.array}"


def array_name(layer: str, crop_px: int, primary_px: int) -> str:
    """Name of a feature array: ``features``/``stages`` for the primary crop, else
    ``features_448px``/``stages_448px``."""
    base = "features" if layer == "pooled" else layer
    return base if crop_px == primary_px else f"{base}_{crop_px}px"


# ---------------------------------------------------------------- writer (stage 1)

@dataclass
class SlideWriter:
    """Writes one (backbone, slide) group chunk by chunk."""

    group: zarr.Group
    chunk_spots: int
    n_spots: int

    @property
    def n_chunks(self) -> int:
        return -(-self.n_spots // self.chunk_spots)

    def first_incomplete(self) -> int:
        """Index of the first chunk not yet written (``n_chunks`` when all are)."""
        done = self.group["done"][:]
        missing = np.flatnonzero(done == 0)
        return int(missing[0]) if len(missing) else self.n_chunks

    @property
    def complete(self) -> bool:
        return self.first_incomplete() == self.n_chunks

    def write_chunk(self, chunk: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write rows of chunk ``chunk`` of every array (float32 (rows, dim) each), then
        mark it done."""
        s = chunk * self.chunk_spots
        e = min(s + self.chunk_spots, self.n_spots)
        for name, values in arrays.items():
            target = self.group[name]
            expected = (e - s, *target.shape[1:])
            if values.shape != expected:  # zarr would silently truncate a wider array
                raise ValueError(f"{self.group.path}/{name}: chunk {chunk} has shape "
                                 f"{values.shape}, expected {expected}")
            target[s:e] = values.astype(np.float32)
        self.group["done"][chunk] = 1


def _any_done(group: zarr.Group) -> bool:
    """Whether a slide's group holds any finished chunk (a group without one, e.g. from a run
    that failed before its first chunk, is replaced freely: nothing is lost)."""
    return "done" not in group or bool(np.any(group["done"][:]))


def _canon(settings: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings))


def _check_format(store: zarr.Group, root: str) -> None:
    found = int(store.attrs.get(FORMAT_ATTR, 1))
    if found > STORE_FORMAT:
        raise DataError(Problem(root, "", FORMAT_ATTR, f"store format <= {STORE_FORMAT}",
                                f"format {found} (a newer hespot wrote it)",
                                "upgrade hespot, or write to another --store"))


def open_slide(root: str | Path, backbone: str, slide: str, n_spots: int,
               dims: Mapping[str, int], chunk_spots: int, settings: Mapping[str, Any],
               info: Mapping[str, Any], array_meta: Mapping[str, Any],
               overwrite: bool = False) -> SlideWriter:
    """Open (resume) or create the group of one backbone x slide.

    Args:
        dims: array name -> feature width; each array is float32 (n_spots, dim).
        settings: what determines the values; a group stored with other settings and
            finished chunks is refused unless ``overwrite``.

    Raises:
        DataError: the group exists with other settings and finished chunks, and
            ``overwrite`` is False; or the store is of a newer format.
    """
    store = zarr.open_group(str(root), mode="a")
    _check_format(store, str(root))
    if FORMAT_ATTR not in store.attrs:
        store.attrs[FORMAT_ATTR] = STORE_FORMAT
    key = f"{backbone}/{slide}"
    settings = _canon(settings)
    if key in store:
        old = dict(store[key].attrs.get("settings", {}))
        if old == settings and not overwrite:
            return SlideWriter(store[key], chunk_spots, n_spots)
        if not overwrite and _any_done(store[key]):
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            detail = "; ".join(f"{k}: stored {old.get(k)!r}, now {settings.get(k)!r}"
                               for k in diff[:4])
            raise DataError(Problem(str(root), slide, f"{key} settings ({', '.join(diff)})",
                                    "the settings the stored features were made with",
                                    detail, "pass --overwrite to recompute this slide, or "
                                    "write to another --store"))
        del store[key]
    group = store.require_group(key)
    for name, dim in dims.items():
        group.create_array(name, shape=(n_spots, dim), chunks=(chunk_spots, dim),
                           dtype="float32", fill_value=np.nan)
    index = group.create_array("spot_index", shape=(n_spots,), chunks=(max(1, n_spots),),
                               dtype="int64")
    index[:] = np.arange(n_spots)
    n_chunks = -(-n_spots // chunk_spots)
    group.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="uint8", fill_value=0)
    group.attrs.update({"settings": settings, "info": _canon(info),
                        "arrays": _canon(array_meta)})
    return SlideWriter(group, chunk_spots, n_spots)


# ---------------------------------------------------------------- reader (stage 2, report)

def open_store(root: str | Path) -> zarr.Group:
    """The store, read-only.

    Raises:
        DataError: no store at ``root``, or one of a newer format.
    """
    if not Path(root).exists():
        raise DataError(Problem(str(root), "", "", "an embeddings store", "no such folder",
                                "run `make embeddings` (hespot embed) first"))
    store = zarr.open_group(str(root), mode="r")
    _check_format(store, str(root))
    return store


def read_array(store: zarr.Group, root: str, spec: FeatureSpec, slide: str,
               n_spots: int | None = None) -> np.ndarray:
    """float32 (n_spots, dim) of one finished (backbone, slide, array); with ``n_spots``
    the row count is checked against the spot table.

    Raises:
        DataError: missing backbone, slide or array, an unfinished slide, or a row count
            that differs from the spot table's.
    """
    fix = (f"run `make embeddings` (hespot embed --backbones {spec.backbone}"
           f"{' --stages' if spec.array.startswith('stages') else ''}) first")
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
    X = np.asarray(group[spec.array][:], dtype=np.float32)
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
