"""The feeding side of stage 1: a unit's patches, a group of chunks at a time, cropped in
reader processes (a torch ``DataLoader`` over the unit's chunk groups) or in the model's
process, and handed over as uint8 tensors (shared memory; pinned memory for a GPU). The
model's process converts, resizes and normalises them on the device
(:meth:`embed.extract.FeatureExtractor.prepare`).

Processes, not threads: cropping is numpy and Python under the GIL, so threads do not
scale (issue 27, on the H200 machine: 1 reader thread 1,236 patches/s, 8 threads 1,575,
while the model eats 2,259 spots/s). A uint8 patch is a quarter of the float32 one the
reader used to ship.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data.errors import InterruptedRun, Problem
from data.h5 import CanonicalH5
from data.patches import PatchCropper
from embed.stain import MacenkoFit
from embed.units import WorkUnit

log = logging.getLogger("hespot")

#: reader processes start as forks of the model's process: no re-import, ~10 ms each
READER_START = "fork"
#: groups each reader process reads ahead
READ_AHEAD = 4
_DEAD_READER = re.compile(r"DataLoader worker \(pid(?:\(s\))? ([\d, ]+)\)")


@dataclass(frozen=True)
class Group:
    """Consecutive chunks of a unit, read at once.

    Attributes:
        first_chunk: the slide's index of the group's first chunk.
        n_chunks: chunks in the group.
        patches: per crop side (:attr:`WorkUnit.sides`), uint8 (n_spots, s, s, 3) tensors,
            ``s`` the side of the pyramid level read (resized on the device).
    """

    first_chunk: int
    n_chunks: int
    patches: list[torch.Tensor]


class UnitChunks(Dataset):
    """Item ``i``: (i, [uint8 tensor per crop side]) of the unit's ``i``-th group of
    ``group_chunks`` chunks of ``chunk_spots`` spots; each crop side is cut with one window
    read per band (:class:`data.patches.PatchCropper`), stain-normalised by ``stain``
    when given. The canonical file is opened once per process that reads (a reader
    process never uses its parent's handle); :meth:`use` gives the model's process its
    already open one."""

    def __init__(self, h5_path: str, unit: WorkUnit, chunk_spots: int, group_chunks: int,
                 pad_mode: str, out_px: int, stain: MacenkoFit | None = None) -> None:
        self.h5_path, self.unit, self.chunk_spots = h5_path, unit, chunk_spots
        self.group_chunks, self.pad_mode, self.out_px, self.stain = (
            max(1, group_chunks), pad_mode, out_px, stain)
        self._open: tuple[int, CanonicalH5 | None, list[PatchCropper]] | None = None

    def use(self, h5: CanonicalH5) -> None:
        """Read through ``h5`` (an open file of this process) instead of opening one."""
        self._open = (os.getpid(), h5, self._croppers(h5))

    def _croppers(self, h5: CanonicalH5) -> list[PatchCropper]:
        return [PatchCropper(h5, self.unit.slide, c, self.pad_mode, out_px=self.out_px)
                for c in self.unit.sides]

    def __len__(self) -> int:
        return -(-self.unit.n_chunks // self.group_chunks)

    def chunks(self, i: int) -> tuple[int, int]:
        """(first chunk of the unit, count) of group ``i``."""
        first = i * self.group_chunks
        return first, min(self.group_chunks, self.unit.n_chunks - first)

    def __getitem__(self, i: int) -> tuple[int, list[torch.Tensor]]:
        if self._open is None or self._open[0] != os.getpid():
            h5 = CanonicalH5(self.h5_path)  # this process's own handle, closed at its exit
            self._open = (os.getpid(), h5, self._croppers(h5))
        first, count = self.chunks(i)
        rows = slice(first * self.chunk_spots,
                     min((first + count) * self.chunk_spots, self.unit.n_spots))
        patches = [cr.crop(self.unit.x[rows], self.unit.y[rows]) for cr in self._open[2]]
        if self.stain is not None:
            patches = [self.stain.apply(p) for p in patches]
        return i, [torch.from_numpy(np.ascontiguousarray(p)) for p in patches]


def can_start_readers() -> bool:
    """Whether this process may start reader processes: not a daemonic one (a Dask
    worker's, by default), and where ``fork`` exists."""
    return (not multiprocessing.current_process().daemon
            and READER_START in multiprocessing.get_all_start_methods())


def unit_groups(data: UnitChunks, h5: CanonicalH5, readers: int, pin: bool = False
                ) -> Iterator[Group]:
    """The groups of ``data``, in order: read by ``readers`` processes (their patches in
    shared memory, copied to pinned memory when ``pin``) or, ``readers`` 0 or where
    processes cannot start (:func:`can_start_readers`), read here through ``h5``."""
    if readers > 0 and not can_start_readers():
        log.debug("reader processes cannot start here (a daemonic process): patches are "
                  "read in this process")
        readers = 0
    if readers <= 0:
        data.use(h5)
        for i in range(len(data)):
            yield Group(data.unit.first_chunk + data.chunks(i)[0], data.chunks(i)[1],
                        data[i][1])
        return
    loader = DataLoader(data, batch_size=None, shuffle=False,
                        num_workers=min(readers, len(data)), pin_memory=pin,
                        prefetch_factor=READ_AHEAD, multiprocessing_context=READER_START)
    with warnings.catch_warnings():  # Python 3.12 warns of fork beside threads: the
        # readers run no thread of ours and touch no lock the parent's threads hold
        warnings.filterwarnings("ignore", message=".*fork.*", category=DeprecationWarning)
        batches = iter(loader)
    for i, patches in batches:
        first, count = data.chunks(i)
        yield Group(data.unit.first_chunk + first, count, patches)


@contextmanager
def reader_failures(h5_path: str, unit: WorkUnit) -> Iterator[None]:
    """A reader process that dies (killed, out of memory) becomes one
    :class:`DataError` naming it, the slide and the chunks (torch raises it where the
    model's process notices: in the loader or from its SIGCHLD handler); finished chunks
    are kept, so a rerun resumes."""
    try:
        yield
    except RuntimeError as exc:
        found = _DEAD_READER.search(str(exc))
        if found is None:
            raise
        pids = found.group(1).strip(" ,")
        last = unit.first_chunk + unit.n_chunks - 1
        raise InterruptedRun(Problem(
            h5_path, unit.slide, f"{unit.job.key}, chunks {unit.first_chunk}..{last}",
            "reader processes that finish", f"reader process {pids} ended: "
            f"{str(exc).splitlines()[0].strip()}", "see why it ended (memory? killed?) "
            "and run the same command again: finished chunks are kept")) from None

