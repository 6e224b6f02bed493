"""``hespot map``'s output folder and its record, ``OUT/map.json``: which run the folder
holds (its inputs: slides, spots, grid, pixel size, model), which of its steps are done
and how long each took. A folder is used when it is empty or new, or when it holds this
same run (a second ``hespot map`` resumes: the import and stage 1's finished slides are
skipped); a folder with other files, or another run's, is refused before any work.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from data.atomic import atomic_write_json
from data.checksum import sha256_file
from data.errors import DataError, Problem
from regress.bundle_meta import MODEL_JSON

RECORD = "map.json"
#: what a folder being written may hold besides the run's files (the lock, temporaries)
IGNORED_PREFIXES = (".",)


def _file_key(path: str | Path, what: str) -> dict[str, Any]:
    """A file named by its resolved path, size and modification time.

    Raises:
        DataError: no such file.
    """
    p = Path(path).resolve()
    if not p.is_file():
        raise DataError(Problem(str(path), "", what, "a file", "not found" if not p.exists()
                                else "not a file", "check the path"))
    st = p.stat()
    return {"path": str(p), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def run_inputs(cfg, model_dir: Path, names: list[str]) -> dict[str, Any]:
    """What makes a run this run: the slides and spot files (path, size, time), their
    names, the grid, the pixel size, the tissue share and the model (its folder and
    model.json's sha256)."""
    return {"slides": [_file_key(s, "SLIDE") for s in cfg.slides], "names": names,
            "spots": [_file_key(s, "--spots") for s in cfg.spots], "grid": cfg.grid,
            "mpp": cfg.mpp, "min_tissue": cfg.min_tissue,
            "model": {"folder": str(model_dir.resolve()),
                      "model_json_sha256": sha256_file(model_dir / MODEL_JSON)}}


def _differences(old: Mapping, new: Mapping) -> str:
    keys = [k for k in new if old.get(k) != new.get(k)]
    return ", ".join(keys[:4]) or "its record"


def open_folder(out: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    """The record of ``out`` for a run of ``inputs``: a fresh one for an empty or new
    folder, the stored one when ``out`` holds this same run.

    Raises:
        DataError: ``out`` is a file, holds files of something else, or another run's.
    """
    fix = "give another --out, or remove the folder to start again"
    if out.exists() and not out.is_dir():
        raise DataError(Problem(str(out), "", "--out", "a folder", "a file", fix))
    record_path = out / RECORD
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
            old = record["inputs"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(Problem(str(record_path), "", "inputs", "the record of a "
                                    "hespot map run", f"unreadable ({exc})"[:200], fix)) from exc
        if old != inputs:
            raise DataError(Problem(str(out), "", RECORD, "an empty folder or one of this "
                                    "same run", "another run's files (it differs in "
                                    f"{_differences(old, inputs)})", fix))
        return record
    others = sorted(p.name for p in out.iterdir()
                    if not p.name.startswith(IGNORED_PREFIXES)) if out.is_dir() else []
    if others:
        raise DataError(Problem(str(out), "", "--out", "an empty folder or one of this same "
                                "hespot map run", f"other files ({', '.join(others[:3])}"
                                f"{', ...' if len(others) > 3 else ''})", fix))
    return {"inputs": inputs, "steps": {}}


def save(out: Path, record: dict[str, Any]) -> None:
    """Write the record atomically."""
    atomic_write_json(out / RECORD, record)
