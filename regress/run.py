"""Stage 2: LOSO over the train slides for every model, then fit all and predict the test.

``python -m regress.run --h5 out/her2st.h5 --store out/embeddings.zarr --out out``
(``make regress``). Writes ``OUT/predictions/<model>-<target>/{oof,test}.csv``,
``OUT/report.json`` and ``OUT/report.md``. The constant baseline is always included.
Beside the rank models, the abundance candidates, their intervals and the OOD scores
(:mod:`regress.abundance_run`; ``--abundance ''`` leaves them out).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from data.check import preflight
from data.cli import (
    check_name,
    config_dict,
    config_parser,
    entry_point,
    parse_list,
    resolve_config,
    run_stage,
)
from data.cluster import CLUSTER_FLAGS, TaskMap, check_cluster, task_map
from data.errors import ConfigError, DataError, Problem
from data.store import FeatureSpec
from regress.abundance import ABUNDANCE_MODELS
from regress.abundance_run import run_abundance
from regress.config import RegressConfig
from regress.features import load_slides
from regress.levers import POSITIONS
from regress.loso import run_loso
from regress.models import DEFAULT_ALPHAS, MODELS, make_model
from regress.outputs import loso_markdown
from regress.recipes import DEFAULT_RECIPE, RECIPES, Recipe, get_recipe, prepare
from regress.results import (
    model_entry,
    predictions_frame,
    rank_models,
    update_report,
    write_predictions,
)
from regress.targets import TARGETS

log = logging.getLogger("hespot")


def resolve_recipe(cfg: RegressConfig) -> Recipe:
    """The recipe named by ``cfg.recipe`` with the config's overrides applied."""
    name = cfg.recipe
    if name == "auto":
        tuned = Path(cfg.out) / "tuned.json"
        name = json.loads(tuned.read_text())["recipe"] if tuned.is_file() else DEFAULT_RECIPE
    recipe = get_recipe(name)
    overrides = {k: getattr(cfg, k) for k in
                 ("features", "context_k", "smooth_k", "smooth_w", "per_type_alpha", "center",
                  "position", "smooth_um", "shrink", "slide_gain")
                 if getattr(cfg, k) is not None}
    return replace(recipe, **overrides) if overrides else recipe


def model_params(name: str, cfg: RegressConfig, per_type_alpha: bool = False,
                 target: str = "spot_rank", slide_gain: float = 1.0) -> dict:
    """Estimator parameters; ridge's inner CV scores by the metric the target serves."""
    if name == "ridge":
        alphas = tuple(a for a in DEFAULT_ALPHAS if a <= cfg.ridge_alpha_max)
        params = {"alphas": alphas, "n_components": cfg.ridge_pca,
                  "per_type_alpha": per_type_alpha,
                  "scoring": "spot" if target == "spot_rank" else "type"}
        return {**params, "slide_gain": slide_gain} if slide_gain != 1.0 else params
    if name == "lgbm":
        return {"n_components": cfg.lgbm_pca, "n_estimators": cfg.lgbm_trees}
    return {}


def describe(model) -> dict:
    """Fitted values worth reporting (ridge alpha, LightGBM trees)."""
    out = {}
    if hasattr(model, "alpha_"):
        a = np.atleast_1d(model.alpha_)
        out["alpha"] = float(a[0]) if len(a) == 1 else {"min": float(a.min()),
                                                        "median": float(np.median(a)),
                                                        "max": float(a.max())}
    if hasattr(model, "best_iterations_"):
        out["trees_median"] = float(np.median(model.best_iterations_))
    return out


def check_config(cfg: RegressConfig) -> None:
    """Every name and range of ``cfg``, checked before anything is read.

    Raises:
        ConfigError: naming the setting, what it may be and what it was.
    """
    for t in cfg.targets:
        check_name("target", t, TARGETS)
    for m in cfg.models:
        check_name("model", m, list(MODELS))
    for m in cfg.abundance:
        check_name("abundance model", m, list(ABUNDANCE_MODELS))
    low = min(DEFAULT_ALPHAS)
    ranges = [("--context-k", cfg.context_k, 0), ("--smooth-k", cfg.smooth_k, 0),
              ("--ridge-pca", cfg.ridge_pca, 1), ("--lgbm-pca", cfg.lgbm_pca, 1),
              ("--lgbm-trees", cfg.lgbm_trees, 1), ("--ridge-alpha-max", cfg.ridge_alpha_max, low)]
    for flag, value, least in ranges:
        if value is not None and value < least:
            raise ConfigError(f"{flag} must be at least {least:g}, got {value:g}")
    for flag, value in (("--smooth-w", cfg.smooth_w), ("--shrink", cfg.shrink)):
        if value is not None and not 0 <= value <= 1:
            raise ConfigError(f"{flag} must lie in [0, 1], got {value:g}")
    if cfg.smooth_um is not None and cfg.smooth_um < 0:
        raise ConfigError(f"--smooth-um must be at least 0, got {cfg.smooth_um:g}")
    if cfg.slide_gain is not None and cfg.slide_gain <= 0:
        raise ConfigError(f"--slide-gain must be positive, got {cfg.slide_gain:g}")
    if cfg.position is not None and cfg.position not in POSITIONS:
        raise ConfigError(f"--position must be one of fourier, radial or '', got "
                          f"{cfg.position!r}")
    check_cluster(cfg.workers, cfg.scheduler, cfg.threads_per_worker)


def run(cfg: RegressConfig) -> dict:
    """LOSO for every model x target; returns the report dict."""
    check_config(cfg)
    recipe = resolve_recipe(cfg)
    preflight(cfg.h5)
    t0 = time.perf_counter()
    data = load_slides(cfg.h5, cfg.store, [FeatureSpec.parse(f) for f in recipe.features])
    data, post = prepare(data, recipe)
    log.info("recipe %s: %d train slides, %d test slides, %d dims, %d cell types (%.1f s)",
             json.dumps(recipe.as_dict()), len(data.train), len(data.test),
             next(iter(data.X.values())).shape[1], len(data.cell_types),
             time.perf_counter() - t0)
    if len(data.train) < 2:
        raise DataError(Problem(cfg.h5, "", "spots/Train", "at least 2 train slides (LOSO)",
                                f"{len(data.train)}", "import more training slides"))
    with task_map(cfg.workers, cfg.scheduler, cfg.threads_per_worker) as tasks:
        if tasks.client is not None:
            log.info("LOSO folds on %s", tasks.describe())
        entries = _loso_all(cfg, recipe, data, post, tasks)
        abundance = run_abundance(data, recipe, tasks, Path(cfg.out), cfg.abundance) \
            if cfg.abundance else None
    return update_report(Path(cfg.out), entries, config=config_dict(cfg),
                         recipe=recipe.as_dict(), cell_types=list(data.cell_types),
                         train_slides=data.train, test_slides=data.test, abundance=abundance)


def _loso_all(cfg: RegressConfig, recipe: Recipe, data, post, tasks: TaskMap) -> dict:
    """LOSO of every model x target (folds through ``tasks``); writes each one's
    predictions and returns their report entries."""
    entries = {}
    out = Path(cfg.out)
    models = ["constant"] + [m for m in cfg.models if m != "constant"]
    for target in cfg.targets:
        for name in models:
            params = model_params(name, cfg, recipe.per_type_alpha, target,
                                  recipe.slide_gain)
            model_id = f"{name}-{target}"
            res = run_loso(lambda n=name, p=params: make_model(n, **p), data, target,
                           postprocess=None if name == "constant" else post,
                           describe=describe, tasks=tasks)
            write_predictions(out, model_id,
                              predictions_frame(res.oof, data.cell_types, data.xy,
                                                data.spot_ids),
                              predictions_frame(res.test, data.cell_types, data.xy,
                                                data.spot_ids))
            entries[model_id] = model_entry(res, data.cell_types, name, target,
                                            {"model": name, "params": {
                                                k: list(v) if isinstance(v, tuple) else v
                                                for k, v in params.items()},
                                             "recipe": recipe.as_dict()})
            log.info("%s: per-spot %.3f, per-type %.3f (%.1f s) %s", model_id,
                     res.mean["spot"], res.mean["type"], res.seconds,
                     json.dumps(res.fitted))
    return entries


def build_parser() -> argparse.ArgumentParser:
    p = config_parser("python -m regress.run", __doc__, RegressConfig,
                      common=("h5", "store", "out", *CLUSTER_FLAGS, "quiet"))
    p.add_argument("--recipe", help=f"auto (tuned, else {DEFAULT_RECIPE}) or one of "
                   f"{', '.join(RECIPES)}")
    p.add_argument("--features", type=parse_list,
                   help="override: comma-separated backbone[:array] specs, concatenated")
    p.add_argument("--context-k", dest="context_k", type=int,
                   help="override: spatial context neighbours (0 = off)")
    p.add_argument("--smooth-k", dest="smooth_k", type=int, help="override: smoothing k")
    p.add_argument("--smooth-w", dest="smooth_w", type=float, help="override: smoothing w")
    p.add_argument("--per-type-alpha", dest="per_type_alpha",
                   action=argparse.BooleanOptionalAction, help="override: alpha per type")
    p.add_argument("--center", action=argparse.BooleanOptionalAction,
                   help="override: per-slide feature centring")
    p.add_argument("--position", help="override: position features: fourier, radial or "
                   "'' (off)")
    p.add_argument("--smooth-um", dest="smooth_um", type=float,
                   help="override: Gaussian smoothing sigma in µm (0 = off)")
    p.add_argument("--shrink", type=float,
                   help="override: share towards the slide's predicted composition")
    p.add_argument("--slide-gain", dest="slide_gain", type=float,
                   help="override: gain on a slide's predicted mean composition (ridge)")
    p.add_argument("--models", type=parse_list, help="comma-separated: ridge, lgbm")
    p.add_argument("--targets", type=parse_list,
                   help=f"comma-separated of {', '.join(TARGETS)}")
    p.add_argument("--ridge-pca", dest="ridge_pca", type=int)
    p.add_argument("--ridge-alpha-max", dest="ridge_alpha_max", type=float)
    p.add_argument("--lgbm-pca", dest="lgbm_pca", type=int)
    p.add_argument("--lgbm-trees", dest="lgbm_trees", type=int)
    p.add_argument("--abundance", type=parse_list, help="comma-separated abundance "
                   f"candidates of {', '.join(ABUNDANCE_MODELS)} (default all; '' = none)")
    return p


def run_and_show(cfg: RegressConfig) -> dict:
    """:func:`run`, then the LOSO table in the log."""
    report = run(cfg)
    log.info("LOSO table (per-spot / per-type):\n%s", loso_markdown(report, rank_models(report)))
    return report


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(resolve_config(RegressConfig, build_parser().parse_args(argv)),
                     run_and_show)


if __name__ == "__main__":
    raise SystemExit(main())


