"""The result contract, torch-free: LOSO results and their scores, out-of-fold and test
predictions on disk, the scores in ``report.json`` (with ``report.md``, rendered from it by
:mod:`regress.outputs.markdown`) and the ranking of models. Stage 2 and the fine-tuned CNN
path (``embed.finetune``) both write through it, so reports, ensembles and submit treat
them alike. Files for people and other tools (predictions.csv, .h5ad, ...) are
:mod:`regress.outputs`.

Every model (stage 2's regressors, the fine-tuned CNN) writes
``<out>/predictions/<model_id>/oof.csv`` and ``test.csv`` with columns
``slide, row, spot_id, x, y, <cell types...>`` and adds its entry to ``report.json``
(entries of other models are kept); ``report.md`` is rebuilt from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.atomic import atomic_write_json, atomic_write_text
from data.csvwrite import write_csv
from data.errors import DataError, Problem
from regress.metrics import spearman_per_spot, spearman_per_type
from regress.outputs.markdown import render_markdown

META_COLUMNS = ["slide", "row", "spot_id", "x", "y"]


@dataclass
class LosoResult:
    """Out-of-fold and test predictions with their scores.

    Attributes:
        oof: held-out slide -> float (n_spots, n_types) predictions.
        test: test slide -> float (n_spots, n_types) predictions (fit on all train slides).
        per_slide: slide -> {"spot": mean per-spot Spearman, "type": mean per-type}.
        per_type: float (n_types,) per-type Spearman averaged over held-out slides.
        seconds: wall time of the whole LOSO + final fit.
        fitted: params of interest of the final model (e.g. alpha).
    """

    oof: dict[str, np.ndarray] = field(default_factory=dict)
    test: dict[str, np.ndarray] = field(default_factory=dict)
    per_slide: dict[str, dict[str, float]] = field(default_factory=dict)
    per_type: np.ndarray | None = None
    seconds: float = 0.0
    fitted: dict = field(default_factory=dict)
    _per_type: list = field(default_factory=list, repr=False)

    def add_fold(self, slide: str, P: np.ndarray, T: np.ndarray) -> None:
        """Record a held-out slide's predictions P and its scores against the truth T."""
        self.oof[slide] = P
        pt = spearman_per_type(T, P)
        self._per_type.append(pt)
        self.per_slide[slide] = {"spot": float(spearman_per_spot(T, P).mean()),
                                 "type": float(pt.mean())}
        self.per_type = np.mean(self._per_type, axis=0)

    @property
    def mean(self) -> dict[str, float]:
        """{"spot": ..., "type": ...}: the per-slide scores averaged over held-out slides."""
        return {m: float(np.mean([s[m] for s in self.per_slide.values()]))
                for m in ("spot", "type")}


def predictions_frame(preds: Mapping[str, np.ndarray], cell_types: Sequence[str],
                      xy: Mapping[str, np.ndarray],
                      spot_ids: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """One row per spot of every slide in ``preds`` (slide -> float (n_spots, n_types)):
    meta columns (``xy``: slide -> float (n_spots, 2)) then the cell types."""
    frames = []
    for slide, P in preds.items():
        meta = pd.DataFrame({"slide": slide, "row": np.arange(len(P)),
                             "spot_id": spot_ids[slide], "x": xy[slide][:, 0],
                             "y": xy[slide][:, 1]})
        frames.append(pd.concat([meta, pd.DataFrame(P, columns=list(cell_types))], axis=1))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=META_COLUMNS + list(cell_types))


def write_predictions(out: Path, model_id: str, oof: pd.DataFrame, test: pd.DataFrame) -> Path:
    """Write ``<out>/predictions/<model_id>/oof.csv`` and ``test.csv``; returns the folder."""
    folder = Path(out) / "predictions" / model_id
    write_csv(folder / "oof.csv", oof)      # to_csv(index=False)'s bytes, in blocks
    write_csv(folder / "test.csv", test)
    return folder


def read_predictions(out: Path, model_id: str, which: str) -> pd.DataFrame:
    """``which`` = "oof" or "test"; DataError naming the file when absent."""
    path = Path(out) / "predictions" / model_id / f"{which}.csv"
    if not path.is_file():
        have = sorted(p.name for p in (Path(out) / "predictions").glob("*")) \
            if (Path(out) / "predictions").exists() else []
        raise DataError(Problem(str(path), "", model_id, f"predictions of a model in {have}",
                                "no such file", "run `make regress` (or make finetune), or "
                                "pick a model that exists"))
    try:
        frame = pd.read_csv(path, dtype={"spot_id": str, "slide": str})
    except (OSError, ValueError) as exc:  # not text, not a table, an empty file
        frame, why = None, f"unreadable ({exc})"
    else:
        why = _predictions_problem(frame)
    if why:
        raise DataError(Problem(str(path), "", which, "predictions as make regress writes "
                                f"them ({', '.join(META_COLUMNS)}, then finite values)", why,
                                "run `make regress` again (it rewrites the file)"))
    return frame


def _predictions_problem(frame: pd.DataFrame) -> str:
    missing = [c for c in META_COLUMNS if c not in frame]
    values = frame.drop(columns=[c for c in ("slide", "row", "spot_id") if c in frame])
    typed = len(frame) > 0  # an empty table's columns have no type to check
    text = [c for c in values if typed and values[c].dtype.kind not in "fiu"]
    if missing or frame.columns.duplicated().any() or \
            (typed and frame["row"].dtype.kind not in "iu"):
        return f"columns {list(frame.columns)[:8]} (rows numbered by whole numbers)"
    if text or values.shape[1] <= 2:
        return f"non-numeric columns {text[:3]}" if text else "no cell-type columns"
    if not np.isfinite(values.to_numpy(float)).all():
        return "values that are not finite"
    return ""


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _report_problem(report: Any) -> str:
    """What keeps report.json from being what ``make regress`` writes (the fields submit
    and fit read), or ""."""
    if not isinstance(report, dict) or not isinstance(report.get("models"), dict):
        return "no object of models"
    for m, e in report["models"].items():
        scores = [e.get("mean")] + list(e.get("per_slide", {}).values()) \
            if isinstance(e, dict) and isinstance(e.get("per_slide", {}), dict) else [None]
        if not (isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("kind",
                                                                                 "target"))):
            return f"models.{m}: no kind or target"
        if not all(isinstance(v, dict) and _number(v.get("spot")) and _number(v.get("type"))
                   for v in scores):
            return f"models.{m}: scores that are not numbers"
    return ""


def load_report(out: Path) -> dict[str, Any]:
    """report.json of ``out`` as a dict, or ``{"models": {}}`` when there is none.

    Raises:
        DataError: a report.json that is not JSON, or not as ``make regress`` writes it.
    """
    path = Path(out) / "report.json"
    if not path.is_file():
        return {"models": {}}
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        report, why = None, f"unreadable ({exc})"
    else:
        why = _report_problem(report)
    if why:
        raise DataError(Problem(str(path), "", "", "the LOSO report of make regress", why,
                                "run `make regress` again, or move the file away"))
    return report


def update_report(out: Path, entries: Mapping[str, dict], **top: Any) -> dict[str, Any]:
    """Merge model entries (and top-level fields) into report.json; rebuild report.md.

    report.json holds data only: the markdown ``ablation.table`` of earlier releases is
    dropped when the file is rewritten."""
    report = load_report(out)
    report["models"].update(entries)
    report.update(top)
    if isinstance(report.get("ablation"), dict):
        report["ablation"].pop("table", None)
    atomic_write_json(Path(out) / "report.json", report)
    atomic_write_text(Path(out) / "report.md", render_markdown(report, rank_models(report)))
    return report


def model_entry(result: LosoResult, cell_types: Sequence[str], kind: str, target: str,
                config: dict) -> dict:
    """The report entry of one LosoResult."""
    return {"kind": kind, "target": target, "per_slide": result.per_slide,
            "mean": result.mean, "per_type": dict(zip(cell_types, map(float, result.per_type),
                                                     strict=True)),
            "seconds": round(result.seconds, 2), "fitted": result.fitted, "config": config}


def _score(value: Any) -> float:
    """A mean score as a sort key: NaN or missing ranks last."""
    value = float(value) if value is not None else math.nan
    return -math.inf if math.isnan(value) else value


def rank_models(report: Mapping[str, Any], include_constant: bool = True) -> list[str]:
    """Model ids of report.json, best first: by mean per-spot OOF Spearman (the challenge's
    metric), descending; ties by mean per-type Spearman, descending, then by id.

    Args:
        report: report.json as a dict (``{"models": {id: entry}}``).
        include_constant: keep the constant baselines (entries of ``kind`` "constant").
    """
    models = report.get("models", {})
    names = [m for m, e in models.items() if include_constant or e.get("kind") != "constant"]

    def key(m: str) -> tuple[float, float, str]:
        mean = models[m].get("mean", {})
        return -_score(mean.get("spot")), -_score(mean.get("type")), m

    return sorted(names, key=key)
