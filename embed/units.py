"""Units of stage-1 work: (backbone, slide, range of chunks), the pieces an executor hands
out (design.md, "Scale beyond one machine").

A unit carries everything a task on another process or machine needs besides the files
(the spot coordinates of its rows, its crop sizes), so it can be pickled and sent; it
writes whole chunks of its slide's group, which the coordinator created, and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from data.store import BackboneItem, array_name


@dataclass(frozen=True, eq=False)
class WorkUnit:
    """Chunks ``first_chunk .. first_chunk + n_chunks - 1`` of one backbone x slide.

    Attributes:
        x, y: float64 (rows,) spot centres of the unit's rows, in slide order.
        crops: crop sides in px, the primary one first (one per stored crop: two crops
            may have the same px).
        primary_px: the primary crop side (names the arrays: ``features``,
            ``features_448px``...).
        crops_um: per crop, its side in µm where it was asked for in µm (names its
            arrays ``features_110um``...), else None; empty: none in µm.
    """

    job: BackboneItem
    slide: str
    first_chunk: int
    n_chunks: int
    x: np.ndarray
    y: np.ndarray
    crops: tuple[int, ...]
    primary_px: int
    crops_um: tuple[float | None, ...] = ()

    @property
    def n_spots(self) -> int:
        return len(self.x)

    @property
    def key(self) -> str:
        """A name unique within a run (Dask's task key)."""
        return f"embed-{self.job.key}-{self.slide}-{self.first_chunk}"

    @property
    def sides(self) -> tuple[int, ...]:
        """The distinct crop sides in px, the primary one first: one patch each."""
        return tuple(dict.fromkeys(self.crops))

    def array_names(self, layer: str) -> list[tuple[str, int]]:
        """(array name, index into :attr:`sides`) of every stored crop's ``layer`` array."""
        ums = self.crops_um or (None,) * len(self.crops)
        sides = self.sides
        return [(array_name(layer, px, self.primary_px, um), sides.index(px))
                for px, um in zip(self.crops, ums, strict=True)]


def chunk_runs(chunks: np.ndarray, max_chunks: int | None = None) -> Iterator[tuple[int, int]]:
    """(first chunk, count) of each run of consecutive ``chunks`` (int (k,) ascending),
    runs cut to at most ``max_chunks``."""
    chunks = np.asarray(chunks, dtype=np.int64)
    if not len(chunks):
        return
    breaks = np.flatnonzero(np.diff(chunks) != 1) + 1
    for run in np.split(chunks, breaks):
        step = max_chunks or len(run)
        for i in range(0, len(run), step):
            yield int(run[i]), len(run[i:i + step])


def slide_units(job: BackboneItem, slide: str, x: np.ndarray, y: np.ndarray,
                chunks: np.ndarray, chunk_spots: int, crops: tuple[int, ...],
                primary_px: int, max_chunks: int | None = None,
                crops_um: tuple[float | None, ...] = ()) -> list[WorkUnit]:
    """The units that compute ``chunks`` (int (k,)) of one backbone x slide whose spot
    centres are ``x``, ``y`` (float64 (n_spots,))."""
    units = []
    for first, count in chunk_runs(chunks, max_chunks):
        rows = slice(first * chunk_spots, min((first + count) * chunk_spots, len(x)))
        units.append(WorkUnit(job, slide, first, count, np.ascontiguousarray(x[rows]),
                              np.ascontiguousarray(y[rows]), tuple(crops), primary_px,
                              tuple(crops_um)))
    return units
