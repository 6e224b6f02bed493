"""Fine-tuning checkpoints on disk: one file per (fold, epoch), written atomically, and the
settings they were trained with, so a resumed run never mixes two configurations.

Layout: ``OUT/finetune/<model_id>/settings.json`` and
``OUT/finetune/<model_id>/fold_<slide>/epoch_<n>.pt`` (n = 1, 2, ...; by default only the
last and the best epoch are kept) and ``predictions_tta<k>.npz`` (the fold's predictions).
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from data.atomic import atomic_write_bytes, atomic_write_json
from data.errors import ConfigError, DataError, Problem

log = logging.getLogger("hespot")


def checkpoint_path(folder: Path, epoch: int) -> Path:
    """The checkpoint file of ``epoch`` (1-based) in ``folder``."""
    return Path(folder) / f"epoch_{epoch}.pt"


def saved_epochs(folder: Path) -> list[int]:
    """Epochs (1-based) with a complete checkpoint in ``folder``, sorted."""
    found = [re.fullmatch(r"epoch_(\d+)\.pt", p.name) for p in Path(folder).glob("epoch_*.pt")]
    return sorted(int(m.group(1)) for m in found if m)


def prune_checkpoints(folder: Path, keep: set[int]) -> None:
    """Delete the epoch checkpoints of ``folder`` not in ``keep``."""
    for e in saved_epochs(folder):
        if e not in keep:
            checkpoint_path(folder, e).unlink(missing_ok=True)


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then rename over ``path``: a run
    killed while saving leaves the previous checkpoints intact and no partial file."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def save_arrays(path: Path, **arrays: Any) -> None:
    """``np.savez`` written atomically."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def _differences(stored: dict, settings: dict) -> list[str]:
    return [f"{k}: {stored.get(k)!r} -> {settings.get(k)!r}"
            for k in sorted(set(stored) | set(settings)) if stored.get(k) != settings.get(k)]


def load_checkpoint(path: Path, settings: dict) -> dict:
    """A checkpoint, refused when it was written with other settings.

    Raises:
        ConfigError: (a ValueError) naming the settings that differ and how to proceed.
        DataError: the file is damaged (torch cannot read it as weights and tensors).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        # torch's own text may advise weights_only=False (running the file's code): not shown
        raise DataError(Problem(str(path), "", "checkpoint", "a checkpoint of tensors",
                                f"a file torch cannot read ({type(exc).__name__})",
                                "delete it and run again: training resumes after the epoch "
                                "before it (or from the start); or pass --overwrite")) from exc
    if not isinstance(state, dict) or "model" not in state:
        raise DataError(Problem(str(path), "", "checkpoint", "a checkpoint of tensors",
                                "something else", "delete it and run again, or pass "
                                "--overwrite"))
    diff = _differences(state.get("settings", {}), settings)
    if diff:
        raise ConfigError(f"checkpoint {path} was written with other settings "
                         f"({'; '.join(diff)}); pass --overwrite to train from scratch, or "
                         "another --out")
    return state


def check_settings(root: Path, settings: dict, overwrite: bool) -> None:
    """Refuse a model folder trained with other settings; ``overwrite`` removes it first.

    Raises:
        ConfigError: (a ValueError) naming the settings that differ and how to proceed.
    """
    root = Path(root)
    path = root / "settings.json"
    if overwrite and root.exists():
        log.info("--overwrite: removing %s", root)
        shutil.rmtree(root)
    if path.is_file():
        diff = _differences(json.loads(path.read_text()), settings)
        if diff:
            raise ConfigError(f"{root} holds a run with other settings ({'; '.join(diff)}); "
                             "pass --overwrite to train from scratch, --model-id NAME to keep "
                             "both, or the same settings to resume")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)
