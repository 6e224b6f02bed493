"""A DataFrame as CSV: exactly ``frame.to_csv(index=False)``'s bytes, made by pandas in
blocks of rows, so a million-spot frame is formatted piece by piece (the output bytes,
not a second copy of the frame as Python strings, is what is held), and written
atomically."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from data.atomic import atomic_write_bytes

#: rows formatted at once (64k rows x 35 floats: ~25 MB of text)
BLOCK_ROWS = 65_536


def csv_blocks(frame: pd.DataFrame, rows: int = BLOCK_ROWS) -> Iterator[bytes]:
    """The CSV bytes of ``frame`` (header first, no index), block by block of ``rows``."""
    for start in range(0, max(len(frame), 1), rows):
        part = frame.iloc[start:start + rows]
        yield part.to_csv(index=False, header=start == 0).encode()


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """``frame.to_csv(index=False).encode()``, built block by block."""
    return b"".join(csv_blocks(frame))


def write_csv(path: str | Path, frame: pd.DataFrame) -> Path:
    """Write :func:`csv_bytes` of ``frame`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, csv_bytes(frame))
