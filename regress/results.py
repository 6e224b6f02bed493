"""The result contract, torch-free: LOSO results and their scores, predictions on disk and
the LOSO report (``report.json`` + ``report.md``). Stage 2 and the fine-tuned CNN path
(``embed.finetune``) both write through it, so reports, ensembles and submit treat them alike.

Every model (stage 2's regressors, the fine-tuned CNN) writes
``<out>/predictions/<model_id>/oof.csv`` and ``test.csv`` with columns
``slide, row, spot_id, x, y, <cell types...>`` and adds its entry to ``report.json``
(entries of other models are kept); ``report.md`` is rebuilt from it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.atomic import atomic_write_text
from data.errors import DataError, Problem
from regress.metrics import spearman_per_spot, spearman_per_type

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
        return {m: float(np.mean([s[m] for s in self.per_slide.values()]))
                for m in ("spot", "type")}


def predictions_frame(preds: Mapping[str, np.ndarray], cell_types, xy, spot_ids) -> pd.DataFrame:
    """One row per spot of every slide in ``preds``: meta columns then the cell types."""
    frames = []
    for slide, P in preds.items():
        meta = pd.DataFrame({"slide": slide, "row": np.arange(len(P)),
                             "spot_id": spot_ids[slide], "x": xy[slide][:, 0],
                             "y": xy[slide][:, 1]})
        frames.append(pd.concat([meta, pd.DataFrame(P, columns=list(cell_types))], axis=1))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=META_COLUMNS + list(cell_types))


def write_predictions(out: Path, model_id: str, oof: pd.DataFrame, test: pd.DataFrame) -> Path:
    folder = Path(out) / "predictions" / model_id
    atomic_write_text(folder / "oof.csv", oof.to_csv(index=False))
    atomic_write_text(folder / "test.csv", test.to_csv(index=False))
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
    return pd.read_csv(path, dtype={"spot_id": str, "slide": str})


def load_report(out: Path) -> dict[str, Any]:
    path = Path(out) / "report.json"
    if path.is_file():
        return json.loads(path.read_text())
    return {"models": {}}


def update_report(out: Path, entries: Mapping[str, dict], **top: Any) -> dict[str, Any]:
    """Merge model entries (and top-level fields) into report.json; rebuild report.md."""
    report = load_report(out)
    report["models"].update(entries)
    report.update(top)
    atomic_write_text(Path(out) / "report.json", json.dumps(report, indent=1))
    atomic_write_text(Path(out) / "report.md", render_markdown(report))
    return report


def model_entry(result, cell_types, kind: str, target: str, config: dict) -> dict:
    """The report entry of one LosoResult."""
    return {"kind": kind, "target": target, "per_slide": result.per_slide,
            "mean": result.mean, "per_type": dict(zip(cell_types, map(float, result.per_type),
                                                     strict=True)),
            "seconds": round(result.seconds, 2), "fitted": result.fitted, "config": config}


def loso_table(report: Mapping[str, Any]) -> str:
    """Markdown table: one row per model, per-spot / per-type Spearman per slide and mean."""
    models = report.get("models", {})
    if not models:
        return "(no models)\n"
    slides = sorted({s for m in models.values() for s in m["per_slide"]})
    head = "| model | " + " | ".join(slides) + " | mean spot | mean type | s |"
    lines = [head, "|" + "---|" * (len(slides) + 4)]
    order = sorted(models, key=lambda k: -models[k]["mean"]["spot"])
    for name in order:
        m = models[name]
        cells = [f"{m['per_slide'][s]['spot']:.3f} / {m['per_slide'][s]['type']:.3f}"
                 if s in m["per_slide"] else "" for s in slides]
        lines.append(f"| {name} | " + " | ".join(cells) +
                     f" | **{m['mean']['spot']:.3f}** | **{m['mean']['type']:.3f}** |"
                     f" {m.get('seconds', 0):.0f} |")
    return "\n".join(lines) + "\n"


def render_markdown(report: Mapping[str, Any]) -> str:
    models = report.get("models", {})
    parts = ["# hespot LOSO report\n",
             "Leave-one-slide-out Spearman. Each cell: per-spot (across cell types, "
             "averaged over spots; the challenge's metric) / per-type (across spots, "
             "averaged over cell types). Constant rows/columns score 0.\n",
             loso_table(report)]
    if models:
        parts.append("\n## Per cell type (mean over held-out slides)\n")
        names = sorted(models)
        types = list(next(iter(models.values()))["per_type"])
        parts.append("| cell type | " + " | ".join(names) + " |")
        parts.append("|" + "---|" * (len(names) + 1))
        for t in types:
            parts.append(f"| {t} | " + " | ".join(
                f"{models[n]['per_type'].get(t, float('nan')):.3f}" for n in names) + " |")
    if "ablation" in report:
        parts.append(f"\n## Ablation (ridge, LOSO; chosen: {report['ablation']['chosen']})\n")
        parts.append("Cells: per-spot / per-type Spearman. 'better than plain': held-out "
                     "slides where the recipe beats the plain one on the metric its target "
                     "serves (per-spot for spot_rank, per-type for type_rank).\n")
        parts.append(report["ablation"]["table"])
    if "config" in report:
        parts.append("\n## Configuration\n\n```json\n" + json.dumps(report["config"], indent=1)
                     + "\n```\n")
    return "\n".join(parts) + "\n"
