"""A model folder's maps part: the abundance model, its interval calibration and the OOD
reference, fitted by ``hespot fit`` from what ``hespot regress`` chose
(:func:`fit_maps`) and applied by ``hespot predict`` (:func:`predict_maps`).

Files beside the rank models (each listed with its sha256 in ``model.json``)::

    abundance-<name>.npz   the arrays of the model's kind (regress.abundance_kinds): a
                           ridge's scaler, coefficients and back-transform; a blend's
                           ridge and network
    ood.npz                the OOD reference (regress.ood.OODReference)

and ``model.json["abundance"]``: the model's id, kind, transform, recipe, LOSO scores, the
calibration, the OOD features, thresholds and held-out scores. A folder made before
abundances existed (format 1) has none: it still predicts rank scores, and says so.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.errors import DataError, Problem
from data.store import FeatureSpec
from regress.abundance import ABUNDANCE_MODELS
from regress.abundance_kinds import DEFAULT_KIND, KINDS, make_abundance_model
from regress.abundance_maps import units, warn_flagged
from regress.abundance_run import abundance_id
from regress.bundle_checks import read_npz
from regress.features import SlideSet, assemble
from regress.intervals import Calibration, intervals
from regress.loso import stack
from regress.ood import OODReference, Threshold, verdict
from regress.outputs.maps import Maps
from regress.recipes import Recipe, predict_slides, prepare

log = logging.getLogger("hespot")

OOD_FILE = "ood"   # ood.npz
OLD_FOLDER = ("model folder {folder} has no abundance model (made before abundances, or from "
              "a run without them): the maps hold rank scores only; abundances, intervals and "
              "OOD warnings need `hespot fit` again")


def _stage1(data: SlideSet, features: list[str]) -> SlideSet:
    return assemble(data, [FeatureSpec.parse(f) for f in features])


def fit_maps(data: SlideSet, section: dict[str, Any]
             ) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]], dict]:
    """The chosen abundance model and the OOD reference, fitted on every training slide.

    Args:
        data: the training (and test) slides holding every feature part of the recipes.
        section: report.json's ``abundance`` section.

    Returns:
        (model.json's ``abundance`` entry, file stem -> arrays, test slide -> float
        (n_spots, n_types) abundances: to check against the run's test.csv).
    """
    chosen = section["chosen"]
    entry = section["models"][chosen]
    recipe = Recipe.from_dict(entry["recipe"])
    prepared, post = prepare(data, recipe)
    X, Y, groups = stack(prepared, prepared.train, "raw")
    spec = ABUNDANCE_MODELS[chosen]
    est = make_abundance_model(spec).fit(X, Y, groups=groups)
    test = predict_slides(est, prepared, post, prepared.test, "abundance")
    stage1 = _stage1(data, section["ood"]["features"])
    ref = OODReference.fit(np.concatenate([stage1.X[s] for s in data.train]))
    model_id = abundance_id(chosen)
    meta = {"id": model_id, "name": chosen, "kind": spec.kind, "transform": est.transform,
            "description": entry["spec"]["description"], "recipe": entry["recipe"],
            "simplex": bool(section["simplex"]), "alpha": float(np.atleast_1d(est.alpha_)[0]),
            "loso": {"per_slide": entry["per_slide"], "mean": entry["mean"]},
            "training_mean": section["training_mean"]["mean"],
            "candidates": {m: e["mean"] for m, e in section["models"].items()},
            "calibration": section["calibration"], "ood": section["ood"],
            "files": [f"{model_id}.npz", f"{OOD_FILE}.npz"]}
    return meta, {model_id: KINDS[spec.kind].export(est), OOD_FILE: ref.as_arrays()}, test


REQUIRED = {**{kind: k.arrays for kind, k in KINDS.items()},
            "ood": ("mean", "scale", "centre", "components", "variances", "residual")}


def _arrays(folder: Path, name: str, kind: str) -> dict[str, np.ndarray]:
    """A checked model folder's npz of ``kind`` (:data:`REQUIRED`): the arrays it needs,
    numeric only, never unpickled.

    Raises:
        DataError: an array missing, or one that would need pickle.
    """
    fix = "fit the model again (hespot fit)"
    try:
        arrays = read_npz(folder / name)
    except ValueError as exc:
        raise DataError(Problem(str(folder), "", name, "numeric arrays (no pickle)",
                                f"refused: {exc}", fix)) from exc
    missing = [k for k in REQUIRED[kind] if k not in arrays]
    if missing or any(a.dtype.kind not in "fiub" for a in arrays.values()):
        raise DataError(Problem(str(folder), "", name, f"numeric arrays {list(REQUIRED[kind])}",
                                f"{sorted(arrays)} (missing {missing})", fix))
    odd = [k for k, a in arrays.items() if a.dtype.kind == "f" and not np.isfinite(a).all()]
    if odd:
        raise DataError(Problem(str(folder), "", f"{name}: {odd[0]}", "finite numbers",
                                "NaN or infinite values", fix))
    return arrays


def ood_verdicts(section: dict, reference: OODReference, data: SlideSet
                 ) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Spot scores and the verdict of every slide of ``data.test``."""
    stage1 = _stage1(data, section["ood"]["features"])
    threshold = Threshold(**section["ood"]["threshold"])
    scores = {s: reference.score(stage1.X[s]) for s in data.test}
    return scores, {s: verdict(v, threshold) for s, v in scores.items()}


def predict_maps(bundle, data: SlideSet, frame: pd.DataFrame, rank_score: np.ndarray,
                 per_type: np.ndarray | None) -> Maps:
    """The maps of ``data.test`` (in ``frame``'s rows, slide by slide in that order):
    abundances, intervals, OOD scores and verdicts (a warning line per flagged slide);
    rank scores only from a folder without an abundance model (one line says so)."""
    section = bundle.meta.get("abundance")
    cell_types = bundle.cell_types
    if not section:
        log.warning(OLD_FOLDER.format(folder=bundle.folder))
        return Maps(frame, cell_types, rank_score, per_type=per_type)
    kind = section.get("kind", DEFAULT_KIND)
    est = KINDS[kind].load(section["transform"],
                           _arrays(bundle.folder, section["files"][0], kind))
    prepared, post = prepare(data, Recipe.from_dict(section["recipe"]))
    with np.errstate(over="ignore", invalid="ignore"):  # refused below, in one line
        pred = predict_slides(est, prepared, post, data.test, "abundance")
    A = np.concatenate([pred[s] for s in data.test])
    if not np.isfinite(A).all():
        raise DataError(Problem(str(bundle.folder), "", section["files"][0],
                                "an abundance model whose predictions are finite",
                                "NaN or infinite abundances from its arrays",
                                "fit the model again (hespot fit)"))
    lower, upper = intervals(A, Calibration.from_dict(section["calibration"]))
    reference = OODReference.from_arrays(_arrays(bundle.folder, section["files"][1], "ood"))
    scores, slides = ood_verdicts(section, reference, data)
    warn_flagged(slides)
    return Maps(frame, cell_types, rank_score, A, lower, upper, per_type,
                np.concatenate([scores[s] for s in data.test]), slides,
                units(section["simplex"]))
