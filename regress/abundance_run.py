"""Stage 2's abundance part (``hespot regress``): LOSO of every abundance candidate
(:data:`regress.abundance.ABUNDANCE_MODELS`) and of the training mean composition
through the same loop as the rank models (:func:`regress.loso.run_loso`), the choice of
the one with the least mean per-spot total-variation distance, its 90 % intervals
(:mod:`regress.intervals`) and the out-of-distribution scores (:mod:`regress.ood`).

Writes ``OUT/predictions/abundance-<name>/{oof,test}.csv`` (abundances),
``OUT/predictions/ood/{oof,test}.csv`` (column ``ood_score`` per spot; oof: each training
slide scored against the other ones) and returns ``report.json``'s ``abundance`` section::

    models: name -> {per_slide: slide -> {tv, tv_mean, pearson, coverage, width, spot, type},
                     mean: {...}, spec, seconds}
    training_mean: {per_slide: slide -> {tv, pearson}, mean}
    chosen, calibration (Calibration.as_dict()), simplex,
    ood: {threshold: {slide, spot}, per_slide: slide -> verdict held out (nested), test}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from data.cluster import TaskMap
from data.store import FeatureSpec
from regress.abundance import ABUNDANCE_MODELS, AbundanceSpec, sums_to_one
from regress.abundance_kinds import make_abundance_model
from regress.features import SlideSet, assemble
from regress.intervals import calibrate, nested_coverage
from regress.loso import fit_predict, run_loso
from regress.metrics import pearson_per_type, tv_distance
from regress.models import ConstantRegressor
from regress.ood import OODReference, Threshold, nested_flags, verdict, warning_line
from regress.ood import calibrate as calibrate_ood
from regress.recipes import Recipe, prepare
from regress.results import predictions_frame, write_predictions

log = logging.getLogger("hespot")

OOD_ID = "ood"


def abundance_id(name: str) -> str:
    """The predictions folder (and model id) of an abundance candidate."""
    return f"abundance-{name}"


def abundance_recipe(recipe: Recipe, spec: AbundanceSpec) -> Recipe:
    """The rank recipe with the candidate's spatial context, without its smoothing of
    predictions where the candidate says so."""
    levers = {k: v for k, v in (("context_k", spec.context_k),
                                ("context_wide", spec.context_wide)) if v}
    if not spec.smooth:
        levers["smooth_w"] = 0.0
    return replace(recipe, **levers) if levers else recipe


def _scores(P: np.ndarray, Y: np.ndarray) -> dict[str, float]:
    return {"tv": float(tv_distance(Y, P).mean()),
            "pearson": float(pearson_per_type(Y, P).mean())}


def _mean(per_slide: dict[str, dict[str, float]]) -> dict[str, float]:
    """Each score averaged over the held-out slides, and the TV ratios to the training
    mean's: of the means (``tv_ratio``) and averaged per slide (``tv_ratio_slides``)."""
    keys = next(iter(per_slide.values())).keys()
    mean = {k: float(np.mean([v[k] for v in per_slide.values()])) for k in keys}
    if "tv_mean" in mean:
        mean["tv_ratio"] = mean["tv"] / mean["tv_mean"]
        mean["tv_ratio_slides"] = float(np.mean([v["tv"] / v["tv_mean"]
                                                 for v in per_slide.values()]))
    return mean


def _candidate(spec: AbundanceSpec, recipe: Recipe, data: SlideSet, tasks: TaskMap,
               baseline: dict[str, dict[str, float]], simplex: bool, out: Path):
    """LOSO of one candidate: its report entry and its out-of-fold predictions."""
    prepared, post = prepare(data, abundance_recipe(recipe, spec))
    res = run_loso(lambda s=spec: make_abundance_model(s), prepared, "raw",
                   postprocess=post, tasks=tasks)
    write_predictions(out, abundance_id(spec.name),
                      predictions_frame(res.oof, data.cell_types, data.xy, data.spot_ids),
                      predictions_frame(res.test, data.cell_types, data.xy, data.spot_ids))
    cover = nested_coverage(res.oof, data.Y, upper_bound=1.0 if simplex else None)
    per_slide = {s: {**_scores(P, data.Y[s]), "tv_mean": baseline[s]["tv"],
                     **cover.get(s, {"coverage": float("nan"), "width": float("nan")}),
                     **res.per_slide[s]} for s, P in res.oof.items()}
    entry = {"spec": {"name": spec.name, "kind": spec.kind, "transform": spec.transform,
                      "context_k": spec.context_k, "context_wide": spec.context_wide,
                      "smooth": spec.smooth, "description": spec.description},
             "recipe": abundance_recipe(recipe, spec).as_dict(), "per_slide": per_slide,
             "mean": _mean(per_slide), "seconds": round(res.seconds, 2)}
    m = entry["mean"]
    log.info("abundance %s: TV %.3f (training mean %.3f, ratio %.3f), Pearson %.3f, "
             "coverage %.3f, width %.3f (%.1f s)", spec.name, m["tv"], m["tv_mean"],
             m["tv_ratio"], m["pearson"], m["coverage"], m["width"], res.seconds)
    return entry, res.oof


class OODScorer(BaseEstimator):
    """:class:`regress.ood.OODReference` as an estimator for the LOSO loop: ``predict``
    gives float (n_spots, 1) spot scores."""

    def __init__(self, n_components: int = 32):
        self.n_components = n_components

    def fit(self, X, y=None, groups=None):
        self.reference_ = OODReference.fit(X, self.n_components)
        return self

    def predict(self, X):
        return self.reference_.score(X)[:, None]


def ood_section(data: SlideSet, recipe: Recipe, out: Path) -> dict:
    """OOD scores of every training slide held out and of the test slides (fit on all
    training slides), the calibrated thresholds, and each slide's verdict; writes
    ``predictions/ood/{oof,test}.csv``; logs a warning line per flagged test slide."""
    stage1 = assemble(data, [FeatureSpec.parse(f) for f in recipe.features])
    held = {s: fit_predict(OODScorer, stage1, [t for t in data.train if t != s], [s],
                           "raw")[1][s][:, 0] for s in data.train}
    threshold = calibrate_ood(held)
    test = fit_predict(OODScorer, stage1, data.train, data.test, "raw")[1] if data.test else {}
    test = {s: v[:, 0] for s, v in test.items()}
    frames = [predictions_frame({s: v[:, None] for s, v in d.items()}, ["ood_score"],
                                data.xy, data.spot_ids) for d in (held, test)]
    write_predictions(out, OOD_ID, *frames)
    section = {"features": list(recipe.features), "threshold": vars(threshold),
               "per_slide": nested_flags(held),
               "test": {s: verdict(v, threshold) for s, v in test.items()}}
    for slide, result in section["test"].items():
        if result["ood_flagged"]:
            log.warning(warning_line(slide, result))
    return section


def run_abundance(data: SlideSet, recipe: Recipe, tasks: TaskMap, out: Path,
                  names: Sequence[str] = tuple(ABUNDANCE_MODELS)) -> dict:
    """LOSO of the training mean and every named candidate; the chosen one's intervals;
    the OOD scores. Returns report.json's ``abundance`` section (module docstring)."""
    simplex = sums_to_one(np.concatenate([data.Y[s] for s in data.train]))
    const = run_loso(ConstantRegressor, data, "raw", tasks=tasks)
    baseline = {s: _scores(P, data.Y[s]) for s, P in const.oof.items()}
    models, oof = {}, {}
    for name in names:
        models[name], oof[name] = _candidate(ABUNDANCE_MODELS[name], recipe, data, tasks,
                                             baseline, simplex, out)
    chosen = min(models, key=lambda m: (models[m]["mean"]["tv"], m))
    cal = calibrate(oof[chosen], data.Y, upper_bound=1.0 if simplex else None)
    log.info("abundance model chosen by LOSO TV: %s", chosen)
    return {"models": models, "chosen": chosen, "simplex": simplex,
            "training_mean": {"per_slide": baseline, "mean": _mean(baseline)},
            "calibration": cal.as_dict(), "ood": ood_section(data, recipe, out)}


def threshold_of(section: dict) -> Threshold:
    """The OOD thresholds of a report's abundance section."""
    return Threshold(**section["ood"]["threshold"])
