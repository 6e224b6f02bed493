"""The feeding side of stage 1: a unit's patches, a group of chunks at a time, cropped in
reader processes or in the model's process, and handed over as uint8 (the model's process
converts, resizes and normalises them on the device:
:meth:`embed.extract.FeatureExtractor.prepare`).

Processes, not threads: cropping is numpy and Python under the GIL, so threads do not
scale (issue 27, on the H200 machine: 1 reader thread 1,236 patches/s, 8 threads 1,575,
while the model eats 2,259 spots/s). A uint8 patch is a quarter of the float32 one the
reader used to ship.

A reader crops a group straight into one of a ring of shared-memory slots
(:class:`SharedSlots`, anonymous ``mmap`` made before the readers fork) and sends only the
group's and slot's numbers back; the model's process reads the patches in place and hands
the slot out again once it asks for the next group. No patch is pickled or copied between
processes (a torch ``DataLoader`` copied each 9.6 MB item into fresh shared memory: on the
2-core machine one reader process delivered 730-835 spots/s where cropping in the model's
process ran 3,230).
"""

from __future__ import annotations

import logging
import math
import mmap
import multiprocessing
import os
import pickle
import queue
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from data.child import die_with_parent
from data.errors import InterruptedRun, Problem
from data.h5 import CanonicalH5
from data.patches import PatchCropper
from embed.stain import MacenkoFit
from embed.units import WorkUnit

log = logging.getLogger("hespot")

#: reader processes start as forks of the model's process: no re-import, the slots shared
READER_START = "fork"
#: groups in flight per reader process (slots of the ring)
READ_AHEAD = 2
#: seconds between checks that every reader process still lives, while waiting for one
POLL_S = 0.2


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


class UnitChunks:
    """Group ``i``: the unit's ``i``-th run of ``group_chunks`` chunks of ``chunk_spots``
    spots, one uint8 (n, s, s, 3) array per crop side, each side cut with one window read
    per band (:class:`data.patches.PatchCropper`) and stain-normalised by ``stain`` when
    given. The canonical file is opened once per process that reads (a reader process
    never uses its parent's handle); :meth:`use` gives the model's process its already
    open one."""

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

    def croppers(self) -> list[PatchCropper]:
        """This process's croppers, one per crop side (the file opened on first use)."""
        if self._open is None or self._open[0] != os.getpid():
            h5 = CanonicalH5(self.h5_path)  # this process's own handle, closed at its exit
            self._open = (os.getpid(), h5, self._croppers(h5))
        return self._open[2]

    def __len__(self) -> int:
        return -(-self.unit.n_chunks // self.group_chunks)

    def chunks(self, i: int) -> tuple[int, int]:
        """(first chunk of the unit, count) of group ``i``."""
        first = i * self.group_chunks
        return first, min(self.group_chunks, self.unit.n_chunks - first)

    def rows(self, i: int) -> slice:
        """The unit's spots of group ``i``."""
        first, count = self.chunks(i)
        return slice(first * self.chunk_spots,
                     min((first + count) * self.chunk_spots, self.unit.n_spots))

    def shapes(self, i: int) -> list[tuple[int, int, int, int]]:
        """uint8 (n, s, s, 3) per crop side of group ``i``."""
        n = len(range(self.unit.n_spots)[self.rows(i)])
        return [(n, c.size, c.size, 3) for c in self.croppers()]

    def read(self, i: int, out: list[np.ndarray] | None = None) -> list[np.ndarray]:
        """Group ``i``'s patches per crop side, written into ``out`` where given."""
        rows = self.rows(i)
        x, y = self.unit.x[rows], self.unit.y[rows]
        outs = out or [None] * len(self.unit.sides)
        patches = [cr.crop(x, y, o) for cr, o in zip(self.croppers(), outs, strict=True)]
        if self.stain is not None:
            patches = [self.stain.apply(p) for p in patches]
            if out is not None:
                for o, p in zip(out, patches, strict=True):
                    o[...] = p
        return patches


class SharedSlots:
    """``n`` buffers of ``nbytes`` in anonymous shared memory (``mmap``), made before the
    reader processes fork, so that they and the model's process see the same pages; not
    in ``/dev/shm``, so not bounded by its size."""

    def __init__(self, n: int, nbytes: int) -> None:
        self.maps = [mmap.mmap(-1, max(1, nbytes)) for _ in range(n)]
        self.bytes = [np.frombuffer(m, np.uint8) for m in self.maps]

    def views(self, k: int, shapes: list[tuple[int, ...]]) -> list[np.ndarray]:
        """Slot ``k`` as consecutive uint8 arrays of ``shapes``."""
        out, start = [], 0
        for shape in shapes:
            size = math.prod(shape)
            out.append(self.bytes[k][start:start + size].reshape(shape))
            start += size
        return out


class ReaderDied(RuntimeError):
    """A reader process ended before its work was done (killed, out of memory)."""

    def __init__(self, pid: int, exitcode: int | None) -> None:
        how = (f"killed by {signal.Signals(-exitcode).name}" if exitcode and exitcode < 0
               else f"exit code {exitcode}")
        super().__init__(f"reader process {pid} ended: {how}")
        self.pid = pid


def _reader(data: UnitChunks, slots: SharedSlots, tasks, results, setup) -> None:
    """A reader process: crop each (group, slot) of ``tasks`` into its slot and report
    (group, slot, None), or (group, slot, the exception) and stop; None ends it."""
    if setup is not None:
        setup()  # SIGKILLed when the model's process ends, however it ends
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C: the model's process stops us
    torch.set_num_threads(1)
    for i, k in iter(tasks.get, None):
        try:
            data.read(i, slots.views(k, data.shapes(i)))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the model's process
            try:
                pickle.loads(pickle.dumps(exc))  # it must travel back whole
            except Exception:  # noqa: BLE001 - sent as text instead
                exc = RuntimeError(f"reader process {os.getpid()}: {exc!r}")
            results.put((i, k, exc))
            return
        results.put((i, k, None))


def can_start_readers() -> bool:
    """Whether this process may start reader processes: not a daemonic one (a Dask
    worker's, by default), and where ``fork`` exists."""
    return (not multiprocessing.current_process().daemon
            and READER_START in multiprocessing.get_all_start_methods())


def _next_result(results, procs: list) -> tuple[int, int, BaseException | None]:
    """The next reader's report; :class:`ReaderDied` as soon as a reader is found killed
    (or ended without reporting why)."""
    while True:
        try:
            return results.get(timeout=POLL_S)
        except queue.Empty:
            for p in procs:
                if p.exitcode is None:
                    continue
                if p.exitcode == 0:  # it ended after reporting its error: read that
                    try:
                        return results.get(timeout=5 * POLL_S)
                    except queue.Empty:
                        pass
                raise ReaderDied(p.pid, p.exitcode) from None


def _read_by_processes(data: UnitChunks, h5: CanonicalH5, readers: int, pin: bool
                       ) -> Iterator[Group]:
    ctx = multiprocessing.get_context(READER_START)
    n = len(data)
    data.use(h5)  # the slot sizes from this process's croppers; readers open their own
    slots = SharedSlots(min(n, readers * READ_AHEAD),
                        sum(math.prod(s) for s in data.shapes(0)))
    tasks, results = ctx.SimpleQueue(), ctx.Queue()
    setup = die_with_parent()
    procs = []
    free, ready, sent = list(range(len(slots.maps))), {}, 0
    try:
        for r in range(readers):
            procs.append(ctx.Process(target=_reader, args=(data, slots, tasks, results, setup),
                                     daemon=True, name=f"hespot-reader-{r}"))
            procs[-1].start()
        for want in range(n):
            while free and sent < n:
                tasks.put((sent, free.pop()))
                sent += 1
            while want not in ready:
                i, k, exc = _next_result(results, procs)
                if exc is not None:
                    raise exc
                ready[i] = k
            k = ready.pop(want)
            patches = [torch.from_numpy(v) for v in slots.views(k, data.shapes(want))]
            if pin:  # a copy in page-locked memory: the device copies from it later
                patches = [p.pin_memory() for p in patches]
            first, count = data.chunks(want)
            yield Group(data.unit.first_chunk + first, count, patches)
            # asked for the next group: this one's batches are prepared (copied), so
            # its slot is free again (embed.worker.run_unit reads no batch ahead)
            free.append(k)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
        for p in procs:
            p.join()
        tasks.close()
        results.close()


def unit_groups(data: UnitChunks, h5: CanonicalH5, readers: int, pin: bool = False
                ) -> Iterator[Group]:
    """The groups of ``data``, in order: read by ``readers`` processes into shared slots
    (copied to pinned memory when ``pin``) or, ``readers`` 0 or where processes cannot
    start (:func:`can_start_readers`), read here through ``h5``."""
    if readers > 0 and not can_start_readers():
        log.debug("reader processes cannot start here (a daemonic process): patches are "
                  "read in this process")
        readers = 0
    if readers <= 0 or len(data) <= 1:  # one group: a reader could only add its start
        data.use(h5)
        for i in range(len(data)):
            first, count = data.chunks(i)
            yield Group(data.unit.first_chunk + first, count,
                        [torch.from_numpy(np.ascontiguousarray(p)) for p in data.read(i)])
        return
    yield from _read_by_processes(data, h5, min(readers, len(data)), pin)


@contextmanager
def reader_failures(h5_path: str, unit: WorkUnit) -> Iterator[None]:
    """A reader process that dies (killed, out of memory) becomes one
    :class:`InterruptedRun` naming it, the slide and the chunks; finished chunks are kept,
    so a rerun resumes."""
    try:
        yield
    except ReaderDied as exc:
        last = unit.first_chunk + unit.n_chunks - 1
        raise InterruptedRun(Problem(
            h5_path, unit.slide, f"{unit.job.key}, chunks {unit.first_chunk}..{last}",
            "reader processes that finish", str(exc), "see why it ended (memory? killed?) "
            "and run the same command again: finished chunks are kept")) from None
