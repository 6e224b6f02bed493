"""One writer per output: a lock file naming its holder (pid, host, start time, command).

Two runs writing the same embeddings store, checkpoint folder or ``OUT`` at once would mix
their outputs: the second refuses at start, naming the holder. A lock left by a killed
run (its pid gone on this host) is taken over with a warning. Readers of finished outputs
take no lock and are never blocked.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from data.errors import DataError, Problem

log = logging.getLogger("hespot")


def lock_path(output: str | Path) -> Path:
    """The lock file of an output: ``<folder>/.hespot.lock`` for a folder of outputs
    (``OUT``, a checkpoint folder), ``<store>.lock`` beside a Zarr store (``.zarr``)."""
    output = Path(output)
    if output.suffix == ".zarr":
        return output.with_name(output.name + ".lock")
    return output / ".hespot.lock"


def _holder() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join(sys.argv)[:300]}


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # written half by a run killed at that instant: stale below


def _stale(holder: dict) -> bool:
    """A lock from a run that is gone: same host and its pid not running (or unreadable)."""
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return True
    return holder.get("host") == socket.gethostname() and not pid_alive(pid)


@contextmanager
def output_lock(output: str | Path, what: str) -> Iterator[Path]:
    """Hold the lock of ``output`` for the duration of the block.

    Raises:
        DataError: another live run holds it (names its pid, host, start and command).
    """
    path = lock_path(output)
    created = not path.parent.exists()  # removed again if the run leaves it empty
    path.parent.mkdir(parents=True, exist_ok=True)
    me = _holder()
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            holder = _read(path)
            if holder.get("pid") == me["pid"] and holder.get("host") == me["host"]:
                yield path  # this process already holds it (a nested step)
                return
            if not _stale(holder):
                raise DataError(Problem(
                    str(path), "", "lock", f"no other run writing the {what} {output}",
                    f"held by pid {holder.get('pid')} on {holder.get('host')} since "
                    f"{holder.get('started')} ({holder.get('command', '')!r})",
                    "wait for that run to finish, or give another output; if it is gone "
                    "from another machine, delete the lock file")) from None
            log.warning("%s: taking over the lock of a run that is gone (pid %s on %s, "
                        "since %s)", path, holder.get("pid"), holder.get("host"),
                        holder.get("started"))
            path.unlink(missing_ok=True)
    else:  # pragma: no cover - another run took it over in between
        raise DataError(Problem(str(path), "", "lock", f"the {what} {output} free",
                                "taken by another run at the same instant", "run again"))
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    try:
        yield path
    finally:
        if _read(path).get("pid") == me["pid"]:
            path.unlink(missing_ok=True)
        if created and not any(path.parent.iterdir()):
            path.parent.rmdir()
