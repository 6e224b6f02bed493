"""The store's writer (stage 1): one group per backbone x slide, created by the
coordinator, written chunk by chunk by tasks."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from data.errors import DataError, Problem
from data.store.format import (
    BOOKKEEPING,
    CODECS,
    FORMAT_ATTR,
    STORE_FORMAT,
    bad_chunks,
    check_format,
)


@dataclass
class SlideWriter:
    """Writes one (backbone, slide) group chunk by chunk."""

    group: zarr.Group
    chunk_spots: int
    n_spots: int

    @property
    def n_chunks(self) -> int:
        return -(-self.n_spots // self.chunk_spots)

    def missing_chunks(self) -> np.ndarray:
        """int (k,) indices of the chunks not yet written, ascending."""
        return np.flatnonzero(self.group["done"][:] == 0)

    def first_incomplete(self) -> int:
        """Index of the first chunk not yet written (``n_chunks`` when all are)."""
        missing = self.missing_chunks()
        return int(missing[0]) if len(missing) else self.n_chunks

    @property
    def complete(self) -> bool:
        return self.first_incomplete() == self.n_chunks

    def feature_arrays(self) -> list[str]:
        return sorted(k for k in self.group.array_keys() if k not in BOOKKEEPING)

    def damaged_chunks(self) -> dict[int, str]:
        """Finished chunks whose stored bytes do not decode (a checksum or a compressed
        frame that does not match): chunk -> the first array found damaged there."""
        done = self.group["done"][:] == 1
        damaged: dict[int, str] = {}
        for name in self.feature_arrays():
            for chunk, _ in bad_chunks(self.group[name], self.chunk_spots, done):
                damaged.setdefault(chunk, name)
        return dict(sorted(damaged.items()))

    def reset(self, chunks) -> None:
        """Mark ``chunks`` not done, so the next run computes them again."""
        for c in chunks:
            self.group["done"][int(c)] = 0

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


_CROP_KEYS = ("crops_px", "crops_um")


def covers(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Whether features stored with settings ``old`` include everything ``new`` asks for:
    the same settings but for more crops, or for stages beside the pooled features
    (``make tune``'s grid embeds a backbone at more crop sizes than ``make embeddings``;
    the smaller request then finds its arrays)."""
    rest = [k for k in set(old) | set(new) if k not in (*_CROP_KEYS, "stage_indices")]
    if any(old.get(k) != new.get(k) for k in rest):
        return False
    if new.get("stage_indices") not in ([], None, old.get("stage_indices")):
        return False  # pooled features only are served by a group with stages too
    return all({json.dumps(c) for c in new.get(k, [])} <= {json.dumps(c) for c in old.get(k, [])}
               for k in _CROP_KEYS)


def _damaged(group: zarr.Group, n_spots: int, wanted: Sequence[str]) -> bool:
    """Whether a slide's group can be neither resumed nor kept: no ``done`` flags, or an
    array (those it holds, and ``wanted``) missing, or of other rows or chunks than its
    ``done`` flags count."""
    try:
        done = group["done"]
        names = {k for k in group.array_keys() if k not in BOOKKEEPING} | set(wanted)
        arrays = [group[k] for k in names]
    except KeyError:
        return True
    if not isinstance(done, zarr.Array) or len(done.shape) != 1:
        return True
    return not all(isinstance(a, zarr.Array) and len(a.shape) == 2 and a.shape[0] == n_spots
                   and a.chunks[0] > 0 and -(-n_spots // a.chunks[0]) == done.shape[0]
                   for a in arrays)


def _complete(group: zarr.Group) -> bool:
    return "done" in group and bool(np.all(group["done"][:]))


def _canon(settings: Mapping[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(settings))


def open_slide(root: str | Path, backbone: str, slide: str, n_spots: int,
               dims: Mapping[str, int], chunk_spots: int, settings: Mapping[str, Any],
               info: Mapping[str, Any], array_meta: Mapping[str, Any],
               overwrite: bool = False) -> SlideWriter:
    """Open (resume) or create the group of one backbone x slide.

    Args:
        dims: array name -> feature width; each array is float32 (n_spots, dim).
        settings: what determines the values; a group stored with other settings and
            finished chunks is refused unless ``overwrite``, but a complete one whose
            settings :func:`covers` them (more crops) is used as it is, and one that
            these settings cover (fewer crops) is replaced.

    Raises:
        DataError: the group exists with other settings and finished chunks, and
            ``overwrite`` is False; or the store is of a newer format.
    """
    store = zarr.open_group(str(root), mode="a")
    check_format(store, str(root))
    if FORMAT_ATTR not in store.attrs:
        store.attrs[FORMAT_ATTR] = STORE_FORMAT
    key = f"{backbone}/{slide}"
    settings = _canon(settings)
    if key in store:
        old = store[key].attrs.get("settings", {})
        old = dict(old) if isinstance(old, dict) else {}
        intact = not _damaged(store[key], n_spots, dims if old == settings else ())
        if not overwrite and intact and (old == settings
                                         or (covers(old, settings) and _complete(store[key]))):
            return SlideWriter(store[key], chunk_spots, n_spots)
        # a request for more crops replaces the group: every stored array is computed again,
        # with the same settings, beside the new ones (nothing is lost)
        if not overwrite and intact and _any_done(store[key]) and not covers(settings, old):
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
                           dtype="float32", fill_value=np.nan, compressors=CODECS)
    index = group.create_array("spot_index", shape=(n_spots,), chunks=(max(1, n_spots),),
                               dtype="int64")
    index[:] = np.arange(n_spots)
    n_chunks = -(-n_spots // chunk_spots)
    group.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="uint8", fill_value=0)
    group.attrs.update({"settings": settings, "info": _canon(info),
                        "arrays": _canon(array_meta)})
    return SlideWriter(group, chunk_spots, n_spots)


def slide_writer(root: str | Path, backbone: str, slide: str) -> SlideWriter:
    """The writer of a group :func:`open_slide` created: what a task on another process
    or machine opens to write its chunks (it creates nothing)."""
    group = zarr.open_group(str(root), path=f"{backbone}/{slide}", mode="r+")
    name = next(k for k in group.array_keys() if k not in BOOKKEEPING)
    return SlideWriter(group, group[name].chunks[0], group[name].shape[0])



