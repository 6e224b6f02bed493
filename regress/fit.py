"""Fit the chosen models on all training slides and save them as a model folder:
``hespot fit`` (``python -m regress.fit``, ``make fit``) -> ``OUT/model/``.

By default the folder holds what ``submit`` would submit: the best model of
``OUT/report.json``, or the ensemble given with ``--models`` (weights learned on the
out-of-fold predictions, or from the out-of-fold scores: ``--weighting``, as submit's; or
``--weights``). Each model is refitted exactly as ``make regress`` fitted it for
the test slides (same recipe, target, parameters and features), checked against its
``test.csv``, and written with the stage-1 spec of every feature part it reads, so
``hespot predict`` can embed new slides the same way. See :mod:`regress.bundle`.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np

from data.cli import (
    config_dict,
    config_parser,
    entry_point,
    lists_as_tuples,
    parse_list,
    resolve_config,
    run_stage,
)
from data.errors import ConfigError, DataError, Problem
from data.h5 import CanonicalH5
from data.store import FeatureSpec, open_store
from data.version import hespot_version
from regress.bundle import KINDS, check_writable, export_estimator, write_bundle
from regress.bundle_maps import fit_maps
from regress.card import card_summary, render_card, slide_sources
from regress.config import FitConfig
from regress.ensemble import WEIGHTINGS, learned_weights, read_oof
from regress.features import SlideSet, load_slides
from regress.loso import stack
from regress.models import make_model
from regress.recipes import Recipe, predict_slides, prepare
from regress.results import load_report, read_predictions
from regress.stage1_spec import read_spec
from regress.submit import choose_models, per_type_model

log = logging.getLogger("hespot")

MAX_GAP = 1e-6  # refitted vs the run's test predictions: a larger gap means changed inputs

def choose(report: dict, cfg: FitConfig) -> tuple[list[str], np.ndarray, str | None]:
    """The model ids and weights (summing to 1) that submit would submit, and the model of
    the per-type layer (or None).

    Raises:
        ConfigError: an unknown model, one that cannot be saved (the fine-tuned CNN), or
            weights that do not fit.
    """
    known = report.get("models", {})
    for m in cfg.models or ():
        if m not in known:
            raise ConfigError(f"unknown model {m!r}; known in {cfg.out}/report.json: "
                              f"{', '.join(sorted(known))}")
    models, weights = choose_models(report, cfg.models, cfg.weights)
    for m in models:
        if known[m]["kind"] not in KINDS:
            raise ConfigError(f"model {m!r} ({known[m]['kind']}) cannot be saved as a model "
                              f"folder: only {', '.join(KINDS)} can")
    if len(models) > 1 and not cfg.weights:
        with CanonicalH5(cfg.h5) as h5:
            cell_types = list(h5.cell_types)
        oof = read_oof(Path(cfg.out), cfg.h5, models, None)
        learned = learned_weights(cfg.weighting, False, oof, cell_types)
        weights = np.asarray(learned["weights"]) if learned else weights
    layer = per_type_model(report)
    return models, weights, layer if layer and known[layer]["kind"] in KINDS else None


def describe(model_id: str, entry: dict, weight: float, gap: float) -> dict:
    """A model's entry in model.json."""
    return {"id": model_id, "kind": entry["kind"], "target": entry["target"],
            "weight": float(weight), "params": entry["config"]["params"],
            "recipe": entry["config"]["recipe"],
            "loso": {"per_slide": entry["per_slide"], "mean": entry["mean"]},
            "check_max_abs_diff_vs_test_csv": gap}


def refit(data: SlideSet, entry: dict) -> tuple[object, dict[str, np.ndarray]]:
    """Refit one report entry on all training slides as ``make regress`` did.

    Returns:
        (estimator, final predictions per test slide (n_spots, n_types), after the
        recipe's post-processing).
    """
    prepared, post = prepare(data, Recipe.from_dict(entry["config"]["recipe"]))
    X, Y, groups = stack(prepared, prepared.train, entry["target"])
    est = make_model(entry["kind"], **lists_as_tuples(entry["config"]["params"]))
    est.fit(X, Y, groups=groups)
    return est, predict_slides(est, prepared, post, prepared.test, entry["kind"])


def check_against_run(out: str, model_id: str, cell_types: Sequence[str],
                      test: dict[str, np.ndarray]) -> float:
    """Max |difference| between the refitted model's test predictions and the run's
    ``predictions/<model>/test.csv`` (0 when the run wrote no test slide)."""
    if not test:
        return 0.0
    frame = read_predictions(Path(out), model_id, "test")
    diffs = [np.abs(part.sort_values("row")[list(cell_types)].to_numpy(float) - test[s]).max()
             for s, part in frame.groupby("slide", sort=False)]
    return float(max(diffs))


def checked(cfg: FitConfig, model_id: str, data: SlideSet, test: dict[str, np.ndarray]
            ) -> float:
    """The refitted model's max |difference| from the run's test.csv.

    Raises:
        DataError: above :data:`MAX_GAP` (the inputs changed since ``make regress``).
    """
    gap = check_against_run(cfg.out, model_id, data.cell_types, test)
    log.info("%s: refitted on %d slides; test predictions vs the run's test.csv: max "
             "|diff| %.2g", model_id, len(data.train), gap)
    if gap > MAX_GAP:
        raise DataError(Problem(str(Path(cfg.out) / "predictions" / model_id / "test.csv"),
                                "", model_id, f"the refitted model's test predictions "
                                f"(max |diff| <= {MAX_GAP:g})", f"max |diff| {gap:.3g}",
                                "the HDF5 file or the store changed since `make "
                                "regress`: run it again, then fit"))
    return gap


def _abundance(cfg: FitConfig, report: dict, data: SlideSet, saved: dict) -> dict | None:
    """model.json's abundance entry (its arrays added to ``saved``), or None with a
    warning when report.json has none."""
    section = report.get("abundance")
    if not section:
        log.warning("%s/report.json has no abundance model: this folder will predict rank "
                    "scores only (run `hespot regress` again, then fit)", cfg.out)
        return None
    meta, arrays, test = fit_maps(data, section)
    meta["check_max_abs_diff_vs_test_csv"] = checked(cfg, meta["id"], data, test)
    saved.update({stem: (a, []) for stem, a in arrays.items()})
    return meta


def run(cfg: FitConfig, command: str = "hespot fit") -> Path:
    """Fit and write the model folder (with its card; ``command`` made it); returns its
    path."""
    folder = Path(cfg.model_dir or Path(cfg.out) / "model")
    check_writable(folder)
    report = load_report(Path(cfg.out))
    models, weights, layer = choose(report, cfg)
    fitted = dict.fromkeys([*models, *([layer] if layer else [])])
    entries = {m: report["models"][m] for m in fitted}
    recipes = [e["config"]["recipe"] for e in entries.values()]
    recipes += [e["recipe"] for e in (report.get("abundance") or {}).get("models", {}).values()]
    specs = sorted({f for r in recipes for f in r["features"]})
    data = load_slides(cfg.h5, cfg.store, [FeatureSpec.parse(f) for f in specs])
    if len(data.train) < 1:
        raise DataError(Problem(cfg.h5, "", "spots/Train", "training slides", "none",
                                "fit on a file with training slides"))
    saved, described = {}, {}
    for model_id, entry in entries.items():
        est, test = refit(data, entry)
        saved[model_id] = export_estimator(est, entry["kind"])
        gap = checked(cfg, model_id, data, test)
        weight = weights[models.index(model_id)] if model_id in models else 0.0
        described[model_id] = describe(model_id, entry, weight, gap)
    meta = {"created": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command, "cell_types": list(data.cell_types),
            "train_slides": data.train, "train_sources": slide_sources(cfg.h5, data.train),
            "fingerprints": _fingerprints(cfg.store, specs, data.train),
            "combine": "single" if len(models) == 1 else "rank_mean",
            "models": [described[m] for m in models],
            "layers": [{"name": "per_type", **described[layer]}] if layer else [],
            "orders_from": layer if layer and cfg.orders else None,
            "features": [read_spec(cfg.store, FeatureSpec.parse(f), data.train)
                         for f in specs],
            "versions": {"hespot": hespot_version(),
                         **{p: version(p) for p in ("numpy", "scikit-learn", "lightgbm")}},
            "fit_config": config_dict(cfg),
            "abundance": _abundance(cfg, report, data, saved)}
    meta["card_summary"] = card_summary(meta)
    folder = write_bundle(folder, meta, saved, {"README.md": render_card(meta)})
    log.info("model folder %s: %s (weights %s), per-type layer %s", folder, models,
             np.round(weights, 3).tolist(), layer)
    return folder


def _fingerprints(store_path: str, specs: Sequence[str], slides: Sequence[str]) -> dict:
    store = open_store(store_path)
    backbone = FeatureSpec.parse(specs[0]).backbone
    return {s: store[f"{backbone}/{s}"].attrs["settings"]["input_fingerprint"] for s in slides}


def build_parser() -> argparse.ArgumentParser:
    p = config_parser("python -m regress.fit", __doc__, FitConfig,
                      common=("h5", "store", "out", "quiet"))
    p.add_argument("--model-dir", dest="model_dir", help="model folder (default OUT/model)")
    p.add_argument("--models", type=parse_list,
                   help="model ids of OUT/report.json (default: what submit would submit)")
    p.add_argument("--weights", type=lambda s: parse_list(s, float),
                   help="ensemble weights (default: by --weighting)")
    p.add_argument("--weighting", choices=WEIGHTINGS,
                   help="as submit's: learned (default) or score")
    p.add_argument("--orders", action=argparse.BooleanOptionalAction,
                   help="as submit --orders (default on): the per-type model orders the "
                   "spots within each cell type")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    command = shlex.join(["hespot", "fit", *(sys.argv[1:] if argv is None else argv)])
    return run_stage(resolve_config(FitConfig, build_parser().parse_args(argv)),
                     lambda cfg: run(cfg, command))


if __name__ == "__main__":
    raise SystemExit(main())
