"""The embeddings store's format: its constants, the URL/path of a root, the format check
and the checksum scan of chunks. Layout: :mod:`data.store`; names of groups and arrays:
:mod:`data.store.items`."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from data.errors import DataError, Problem

STORE_FORMAT = 1
FORMAT_ATTR = "hespot_store_format"
BOOKKEEPING = ("done", "spot_index")
#: feature arrays' codecs after the bytes codec: zarr's default zstd, then a checksum
CODECS = (ZstdCodec(level=0), Crc32cCodec())
#: chunks read at once when checking stored chunks (64 x 64 spots x 1280 x 4 B = 21 MB)
VERIFY_BLOCK = 64


def is_url(root: str | Path) -> bool:
    """Whether ``root`` is an fsspec URL (``memory://``, ``s3://``) rather than a path."""
    return "://" in str(root) and not str(root).startswith("file://")


def exists(root: str | Path) -> bool:
    """Whether anything is stored at ``root`` (a path or an fsspec URL)."""
    if not is_url(root):
        return Path(root).exists()
    fs, path = fsspec.core.url_to_fs(str(root))
    return fs.exists(path)


def bad_chunks(array: zarr.Array, chunk_spots: int, among: np.ndarray | None = None
               ) -> list[tuple[int, str]]:
    """(chunk, error) for every chunk of ``array`` (rows chunked by ``chunk_spots``) that
    fails to decode; only chunks where ``among`` (bool (n_chunks,)) is true are read.
    Reads :data:`VERIFY_BLOCK` chunks at once and looks chunk by chunk only into a block
    that fails."""
    n = array.shape[0]
    n_chunks = -(-n // chunk_spots)
    wanted = np.ones(n_chunks, bool) if among is None else np.asarray(among, bool)
    bad = []
    for b in range(0, n_chunks, VERIFY_BLOCK):
        block = [c for c in range(b, min(b + VERIFY_BLOCK, n_chunks)) if wanted[c]]
        if not block:
            continue
        try:
            array[block[0] * chunk_spots:min((block[-1] + 1) * chunk_spots, n)]
            continue
        except Exception:  # noqa: BLE001 - any decode failure: find the chunk below
            pass
        for c in block:
            try:
                array[c * chunk_spots:min((c + 1) * chunk_spots, n)]
            except Exception as exc:  # noqa: BLE001 - codec errors have no common type
                bad.append((c, f"{type(exc).__name__}: {exc}"[:200]))
    return bad


def check_format(store: zarr.Group, root: str) -> None:
    found = int(store.attrs.get(FORMAT_ATTR, 1))
    if found > STORE_FORMAT:
        raise DataError(Problem(root, "", FORMAT_ATTR, f"store format <= {STORE_FORMAT}",
                                f"format {found} (a newer hespot wrote it)",
                                "upgrade hespot, or write to another --store"))


