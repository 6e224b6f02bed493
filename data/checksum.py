"""Content checksums of files, streamed (weights files of several GB are never read whole),
and a cache of them by file (path, size, mtime) so a file is hashed once, not once per run."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from data.atomic import atomic_write_json
from data.errors import DataError

log = logging.getLogger("hespot")

#: files whose sha256 the cache keeps (the most recently hashed)
CACHE_ENTRIES = 256


def sha256_file(path: str | Path, block: int = 2**22) -> str:
    """Hex sha256 of the file's bytes, read ``block`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where hespot keeps what it may recompute: ``$HESPOT_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/hespot``, else ``~/.cache/hespot``."""
    if os.environ.get("HESPOT_CACHE_DIR"):
        return Path(os.environ["HESPOT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hespot"


def cached_sha256(path: str | Path) -> str:
    """:func:`sha256_file` of ``path``, hashed only when the cache
    (``cache_dir()/sha256.json``) has no entry for its resolved path with its current size
    and mtime (a changed file is hashed again). A cache that cannot be read or written is
    passed over: the file is hashed."""
    path = Path(path).resolve()
    st = path.stat()
    key, stamp = str(path), [st.st_size, st.st_mtime_ns]
    store = cache_dir() / "sha256.json"
    try:
        entries = json.loads(store.read_text())
        hit = entries.get(key) if isinstance(entries, dict) else None
    except (OSError, ValueError):
        entries, hit = {}, None
    if isinstance(hit, list) and hit[:2] == stamp and len(hit) == 3:
        return str(hit[2])
    digest = sha256_file(path)
    entries = {k: v for k, v in entries.items() if k != key}
    entries[key] = [*stamp, digest]
    try:  # a cache is optional: a run never fails for it
        store.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(store, dict(list(entries.items())[-CACHE_ENTRIES:]))
    except (OSError, DataError) as exc:
        log.debug("sha256 cache %s not written: %s", store, exc)
    return digest
