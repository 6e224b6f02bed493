"""Content checksums of files, streamed (weights files of several GB are never read whole)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_file(path: str | Path, block: int = 2**22) -> str:
    """Hex sha256 of the file's bytes, read ``block`` bytes at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    return h.hexdigest()
