"""Atomic file writes: every output of hespot is written to a temporary name in its own
folder and renamed over the target only when complete, so a failed or killed run leaves
the previous file intact and never a half-written one. A full disk, a quota or a
read-only folder is a :class:`~data.errors.DataError` naming the output, not a traceback.

A temporary is named ``.<target>.<pid>-<host>.<random><suffix>``: the next write of the
same target removes the temporaries of writers that are gone (a SIGKILLed run cannot
remove its own), those of live writers and other hosts' are left alone.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from data.errors import DataError, Problem
from data.lock import pid_alive

log = logging.getLogger("hespot")

#: errors of the output side while writing (a full disk, a quota, a read-only mount)
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
#: ... and, when creating the output's folder or temporary file, no permission
SETUP_ERRNOS = WRITE_ERRNOS | {errno.EACCES, errno.EPERM}


def _unwritable(path: Path, exc: OSError) -> DataError:
    return DataError(Problem(str(path), "", "", "a writable folder with free space",
                             f"{exc.strerror or exc} ({exc.filename or path.parent})",
                             "free space, or write elsewhere (--out / --store); nothing was "
                             "written and the previous output is untouched"))


@contextmanager
def _writable(path: Path, errnos: set[int]) -> Iterator[None]:
    """Turn an OSError with one of ``errnos`` into :func:`_unwritable`'s DataError."""
    try:
        yield
    except OSError as exc:
        if exc.errno in errnos:
            raise _unwritable(path, exc) from exc
        raise


def _host() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _temp_prefix(path: Path) -> str:
    """The start of every temporary's name of ``path`` written by this process."""
    return f".{path.name}.{os.getpid()}-{_host()}."


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by writers gone from this host (killed while
    writing); returns them. A previous folder that :func:`atomic_dir` had moved aside when
    its writer was killed is put back first, if nothing took its place."""
    start, host = f".{path.name}.", _host()
    try:
        entries = [e for e in path.parent.iterdir() if e.name.startswith(start)]
    except OSError:
        return []
    removed = []
    for entry in entries:
        owner = re.match(r"(\d+)-([0-9a-f]{8})\.", entry.name[len(start):])
        if not owner or owner[2] != host or pid_alive(int(owner[1])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            previous = entry / "previous"
            if previous.exists() and not (path.exists() or path.is_symlink()):
                os.replace(previous, path)
                log.warning("%s: put back the previous output, moved aside by a run that "
                            "was killed while replacing it", path)
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        log.info("removed %s, left by a run that was killed while writing %s", entry, path)
        removed.append(entry)
    return removed


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it is renamed over ``path``
    (permissions as a new file's under the umask), on an error it is removed.

    ``suffix`` lets writers that check the extension (h5ad, HDF5) accept the name.
    """
    path = Path(path)
    with _writable(path, SETUP_ERRNOS):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        with _writable(path, WRITE_ERRNOS):
            yield tmp
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=1))


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a path in a temporary folder beside ``path``; on a clean exit it replaces
    ``path`` (an existing store is moved aside first and removed only once the new one is
    in place), on an error the temporary folder is removed and ``path`` is untouched."""
    path = Path(path)
    with _writable(path, SETUP_ERRNOS):
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path)
        work = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent))
    try:
        with _writable(path, WRITE_ERRNOS):
            yield work / path.name
        if path.exists() or path.is_symlink():
            old = work / "previous"
            os.replace(path, old)
            try:
                os.replace(work / path.name, path)
            except OSError:
                os.replace(old, path)
                raise
        else:
            os.replace(work / path.name, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
