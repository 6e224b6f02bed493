"""The Zarr store handed from stage 1 to stage 2.

Layout: ``<root>/<backbone>/<slide>/`` holds float32 arrays (n_spots, dim) chunked by
spots, ``spot_index`` int64 (n_spots,) and ``done`` uint8 (n_chunks,). The group's
attributes hold ``settings`` (everything that determines the values: compared on resume),
``info`` (provenance: weights file, device, versions) and ``arrays`` (name -> layer and
crop size). A chunk's ``done`` flag is set only after its features are written, so a run
killed at any point resumes at the first chunk not done.
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
from regress.features import FeatureSpec, open_store, read_array


def array_name(layer: str, crop_px: int, primary_px: int) -> str:
    """Name of a feature array: ``features``/``stages`` for the primary crop, else
    ``features_448px``/``stages_448px``."""
    base = "features" if layer == "pooled" else layer
    return base if crop_px == primary_px else f"{base}_{crop_px}px"


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
        """Write rows of chunk ``chunk`` of every array, then mark it done."""
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


def open_slide(root: str | Path, backbone: str, slide: str, n_spots: int,
               dims: Mapping[str, int], chunk_spots: int, settings: Mapping[str, Any],
               info: Mapping[str, Any], array_meta: Mapping[str, Any],
               overwrite: bool = False) -> SlideWriter:
    """Open (resume) or create the group of one backbone x slide.

    Raises:
        DataError: the group exists with other settings and finished chunks, and
            ``overwrite`` is False.
    """
    store = zarr.open_group(str(root), mode="a")
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


def read_features(root: str | Path, backbone: str, slide: str,
                  name: str = "features") -> np.ndarray:
    """float32 (n_spots, dim) of a complete slide (stage 2's reader of the store).

    Raises:
        DataError: missing store, backbone, slide or array, or an unfinished slide.
    """
    return read_array(open_store(root), str(root), FeatureSpec(backbone, name), slide)


def slide_attrs(root: str | Path, backbone: str, slide: str) -> dict[str, Any]:
    store = zarr.open_group(str(root), mode="r")
    return dict(store[f"{backbone}/{slide}"].attrs)
