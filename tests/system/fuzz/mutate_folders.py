"""Seeded corruptions of the inputs that are folders: an embeddings store (a ``zarr.json``
of the root, a group or an array given wrong or missing fields; a chunk damaged,
truncated, deleted or swapped for another; an array or slide group removed) and a model
folder (``model.json``'s fields; an array file or LightGBM text model changed, most of
the time with its checksum in ``model.json`` updated, so the change reaches the code
past the checksum check)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from data.checksum import sha256_file
from tests.system.fuzz.mutate import (
    bytes_mutation,
    json_mutation,
    npz_mutation,
    pick,
    safely,
    text_mutation,
)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def store_mutation(rng: random.Random, store: Path) -> str:
    """One corruption of a Zarr store's metadata, chunks or layout."""
    files = _files(store)
    meta = [p for p in files if p.name == "zarr.json"]
    chunks = [p for p in files if p.name != "zarr.json"]
    how = rng.random()
    if how < 0.5 and meta:
        path = pick(rng, meta)
        return f"{path.relative_to(store.parent)}: {safely(json_mutation, rng, path)}"
    if how < 0.85 and chunks:
        path = pick(rng, chunks)
        where = path.relative_to(store.parent)
        choice = rng.random()
        if choice < 0.15:
            path.unlink()
            return f"{where}: deleted"
        if choice < 0.3:
            other = pick(rng, chunks)
            shutil.copyfile(other, path) if other != path else path.write_bytes(b"")
            return f"{where}: replaced by {other.relative_to(store.parent)}"
        return f"{where}: {bytes_mutation(rng, path)}"
    folders = sorted(p for p in store.rglob("*") if p.is_dir())
    if not folders:
        return "no folder to remove"
    gone = pick(rng, folders)
    shutil.rmtree(gone)
    return f"{gone.relative_to(store.parent)}: removed"


def model_mutation(rng: random.Random, folder: Path) -> str:
    """model.json's fields (half the time), else one of its files (re-signed 3 times in
    4)."""
    meta_path = folder / "model.json"
    others = [p for p in _files(folder) if p.name != "model.json"]
    if rng.random() < 0.5 or not others:
        # the stage-1 spec (features) one time in five: another spec runs stage 1 in a
        # fresh interpreter (importing torch: 5 to 60 s here)
        keep = None if rng.random() < 0.2 else (lambda p: not p or p[0] != "features")
        return safely(lambda r, p: json_mutation(r, p, keep), rng, meta_path)
    path = pick(rng, others)
    if path.suffix == ".npz":
        what = safely(npz_mutation, rng, path)
    elif path.suffix == ".txt":
        what = safely(text_mutation, rng, path)
    else:
        what = bytes_mutation(rng, path)
    try:
        meta = json.loads(meta_path.read_text())
        files = meta.get("files") if isinstance(meta, dict) else None
    except (ValueError, OSError):
        files = None
    if isinstance(files, dict) and path.name in files and rng.random() < 0.75:
        files[path.name] = sha256_file(path)
        meta_path.write_text(json.dumps(meta, indent=1))
        what += " (checksum updated)"
    return what
