"""The fault suite's watch on processes (``tests/system/faults.py``): every process under
a command, from ``/proc`` (whatever process group or session it moved to), Dask's worker
processes among them, and those that still run after the command was killed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state, ppid, pgrp, ...,
    start time at index 19), or None when the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every process under ``pid`` (children, grandchildren, ...),
    from ``/proc``; whatever process group or session they put themselves in."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, str] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
            starts[int(entry.name)] = fields[19]
    found: dict[int, str] = {}
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found[child] = starts[child]
                todo.append(child)
    return found


def dask_workers(pids: dict[int, str]) -> int:
    """How many of ``pids`` are worker processes that Dask's nannies spawned."""
    def cmdline(pid: int) -> bytes:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return b""
    return sum(b"multiprocessing.spawn" in cmdline(p) for p in pids)


def workers_started(proc: subprocess.Popen, workers: int,
                    timeout: float = 600) -> float | None:
    """Wait until ``workers`` Dask worker processes run under ``proc``; the
    ``time.perf_counter()`` then, or None if ``proc`` ended first (or ``timeout`` s)."""
    deadline = time.perf_counter() + timeout
    while proc.poll() is None and time.perf_counter() < deadline:
        if dask_workers(descendants(proc.pid)) >= workers:
            return time.perf_counter()
        time.sleep(0.1)
    return None


def _running(pid: int, start: str) -> bool:
    """Whether the process ``pid`` that started at ``start`` runs (not a zombie)."""
    fields = _stat(pid)
    return fields is not None and fields[19] == start and fields[0] not in "ZX"


def survivors(session: int, started: dict[int, str] | None = None,
              wait_s: float = 3.0) -> list[int]:
    """Processes of the killed command that still run ``wait_s`` after it was killed:
    those of its session (process group) and ``started`` (its descendants, pid -> start
    time, listed just before the kill: Dask's nannies and workers, wherever they moved);
    they are then killed."""
    started = started or {}
    deadline = time.monotonic() + wait_s
    while True:
        left = [p for p, start in started.items() if _running(p, start)]
        try:
            os.killpg(session, 0)
            group = True
        except ProcessLookupError:
            group = False
        if not (left or group):
            return []
        if time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if group:
        try:
            os.killpg(session, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left or [session]
