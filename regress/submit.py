"""Turn chosen predictions into ``submission.csv``, and the maps of the test slides into
``predictions.h5ad`` (scanpy's Visium layout: X the abundance model's abundances, layers
``rank_score`` = the submitted values, ``per_type``, ``lower``, ``upper``; the slides' OOD
verdicts in ``uns['hespot']``), ``predictions.csv`` (abundances) and ``rank_scores.csv``
(:mod:`regress.outputs.maps`), and with ``--spatialdata`` a SpatialData store
``predictions.zarr`` (:mod:`regress.outputs.spatialdata`; the ``spatial`` extra).

``python regress/submit.py [--models ridge-spot_rank,lgbm-spot_rank] [--weights 0.7,0.3 |
--weighting learned]``

One model, or an ensemble of per-spot ranks whose weights are given (``--weights``) or come
from the out-of-fold predictions (``--weighting``, :mod:`regress.ensemble`): ``learned``
(default), the weights that maximise the blend's out-of-fold per-spot Spearman, scored by
nested LOSO (each slide with weights learned on the others); ``score``, each model's
per-spot Spearman above the constant baseline. Where ``make regress`` fitted a
``type_rank`` model, the submitted values keep the submitted model's order of cell types
within every spot and follow the per-type model's order of spots within every cell type
as closely as that allows (``--orders``, default on; :mod:`regress.orders`);
``submission.json`` records the models, weights and weighting, the per-type model, the
out-of-fold scores of what is submitted and the nested scores of learned weights.

``submission.csv`` has ``ID`` (``<slide>_<row>``
for every row of ``spots/Test/<slide>``) then the cell types in the training table's order,
values in [0, 1]. IDs, columns and values are checked before anything is written, and the
file is written atomically: an existing submission is never left half-overwritten.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.atomic import atomic_write_json
from data.check import preflight
from data.cli import config_parser, entry_point, parse_list, resolve_config, run_stage
from data.errors import ConfigError, DataError, Problem
from data.h5 import CanonicalH5
from regress.abundance_maps import run_maps
from regress.config import SubmitConfig
from regress.ensemble import WEIGHTINGS, combine, ensemble_weights, learned_weights, read_oof
from regress.orders import combine_by_slide, score_oof
from regress.outputs import require_spatialdata, write_safe_csv, write_spatialdata
from regress.outputs.maps import write_maps
from regress.results import load_report, rank_models, read_predictions

log = logging.getLogger("hespot")


def expected_ids(h5: CanonicalH5) -> list[str]:
    """``<slide>_<row>`` for every row of every test slide, in file order (row counts from
    the metadata: no table is read; 0.15 s for 10^6 rows)."""
    return [f"{s}_{i}" for s in h5.test_slides for i in range(h5.n_spots(s))]


def check_submission(df: pd.DataFrame, ids: Sequence[str], cell_types: Sequence[str],
                     label: str) -> list[Problem]:
    """Every problem of a submission frame: columns, IDs complete and unique, NaN, range."""
    problems = []
    want = ["ID", *cell_types]
    if list(df.columns) != want:
        missing = [c for c in want if c not in df.columns]
        extra = [c for c in df.columns if c not in want]
        problems.append(Problem(label, "", "columns", f"ID then the {len(cell_types)} "
                                "cell types in the training table's order",
                                f"missing {missing[:5]}, extra {extra[:5]}" if missing or extra
                                else "another order", "use the training table's cell types"))
    if "ID" in df:
        dup = df["ID"][df["ID"].duplicated()]
        if len(dup):
            problems.append(Problem(label, "", "ID", "unique IDs", f"{len(dup)} duplicated, "
                                    f"e.g. {dup.iloc[0]!r}", "predict each test spot once"))
        same = len(df) == len(ids) and df["ID"].tolist() == list(ids)  # the usual case
        missing = [] if same else sorted(set(ids) - set(df["ID"]))
        extra = [] if same else sorted(set(df["ID"]) - set(ids))
        if missing or extra:
            problems.append(Problem(label, "", "ID", f"the {len(ids)} IDs of the test slides",
                                    f"{len(missing)} missing (e.g. {missing[:3]}), "
                                    f"{len(extra)} unexpected (e.g. {extra[:3]})",
                                    "predict every row of spots/Test/<slide>"))
    values = df[[c for c in cell_types if c in df]].to_numpy(dtype=float)
    if np.isnan(values).any():
        problems.append(Problem(label, "", "values", "no NaN",
                                f"{int(np.isnan(values).sum())} NaN", "check the model"))
    elif values.size and (values.min() < 0 or values.max() > 1):
        problems.append(Problem(label, "", "values", "values in [0, 1]",
                                f"range {values.min():.3g}..{values.max():.3g}",
                                "clip or rank-scale the predictions"))
    return problems


def best_model(report: dict) -> str:
    """The non-constant model ranked first by :func:`regress.results.rank_models` (highest
    mean per-spot OOF Spearman).

    Raises:
        DataError: report.json holds no model other than the constant baselines.
    """
    ranked = rank_models(report, include_constant=False)
    if not ranked:
        raise DataError(Problem("report.json", "", "models", "at least one fitted model",
                                "none", "run make regress first"))
    return ranked[0]


def build_parser():
    p = config_parser("python regress/submit.py", __doc__, SubmitConfig,
                      common=("h5", "out", "spatialdata", "quiet"))
    p.add_argument("--models", type=parse_list, help="model ids (default: best OOF)")
    p.add_argument("--weights", type=lambda s: parse_list(s, float),
                   help="ensemble weights (default: by --weighting)")
    p.add_argument("--weighting", choices=WEIGHTINGS,
                   help="an ensemble's weights without --weights: learned (default: "
                   "maximise the blend's OOF per-spot Spearman; scored by nested LOSO) or "
                   "score (each model's OOF per-spot gain over the constant baseline)")
    p.add_argument("--submission", help="default OUT/submission.csv")
    p.add_argument("--h5ad", help="default OUT/predictions.h5ad")
    p.add_argument("--orders", action=argparse.BooleanOptionalAction,
                   help="one prediction for both metrics (default on): each spot keeps the "
                   "submitted order of cell types, each cell type follows the best "
                   "type_rank model's order of spots as closely as that allows")
    return p


def choose_models(report: dict, models: Sequence[str] | None,
                  weights: Sequence[float] | None) -> tuple[list[str], np.ndarray]:
    """The submitted model ids and their weights (summing to 1): ``models`` or the best
    OOF model; ``weights`` or, for an ensemble, from the OOF scores.

    Raises:
        ConfigError: weights that do not fit the models.
    """
    chosen = list(models or [best_model(report)])
    w = np.asarray(weights, float) if weights else ensemble_weights(
        report, chosen) if len(chosen) > 1 else np.ones(1)
    if len(w) != len(chosen) or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"--weights: expected {len(chosen)} weights >= 0 with a positive "
                          f"sum, got {w.tolist()}; give one weight per model")
    return chosen, w / w.sum()


def per_type_model(report: dict) -> str | None:
    """The fitted model of the ``type_rank`` target with the best mean per-type score (its
    predictions order the spots within each cell type), or None."""
    candidates = [m for m, e in report.get("models", {}).items()
                  if e.get("target") == "type_rank" and e.get("kind") != "constant"]
    return max(candidates, key=lambda m: report["models"][m]["mean"]["type"], default=None)


def read_test_frames(out: Path, models: Sequence[str], ids: Sequence[str],
                     cell_types: Sequence[str]) -> list[pd.DataFrame]:
    """Each model's test.csv with an ID column, in the order of ``ids``.

    Raises:
        DataError: a missing file, or IDs or columns that are not the test slides'.
    """
    frames = []
    for m in models:
        f = read_predictions(out, m, "test")
        f.insert(0, "ID", f["slide"].astype(str) + "_" + f["row"].astype(str))
        label = str(out / "predictions" / m / "test.csv")
        have = ["ID"] + [c for c in cell_types if c in f]
        problems = [q for q in check_submission(f[have], ids, cell_types, label)
                    if q.field in ("ID", "columns")]
        if problems:
            raise DataError(problems)
        in_order = len(f) == len(ids) and f["ID"].tolist() == list(ids)
        frames.append(f if in_order else f.set_index("ID").loc[list(ids)].reset_index())
    return frames


def submit(args: SubmitConfig) -> int:
    """Write the submission, its record and the AnnData of ``args``' chosen models."""
    if args.spatialdata:
        require_spatialdata()
    out = Path(args.out)
    report = load_report(out)
    models, weights = choose_models(report, args.models, args.weights)
    preflight(args.h5)
    with CanonicalH5(args.h5) as h5:
        ids, cell_types = expected_ids(h5), list(h5.cell_types)
    frames = read_test_frames(out, models, ids, cell_types)
    layer = per_type_model(report)
    per_type = read_test_frames(out, [layer], ids, cell_types)[0] if layer else None
    order_by = layer if layer and args.orders else None
    oof = read_oof(out, args.h5, models, order_by)
    learned = learned_weights(args.weighting, bool(args.weights), oof, cell_types)
    if learned:
        weights = np.asarray(learned["weights"])
    values = combine(frames, weights, cell_types)
    if order_by:
        values = combine_by_slide(values, per_type[cell_types].to_numpy(float),
                                  frames[0]["slide"].astype(str).to_numpy())
    sub = pd.concat([frames[0][["ID"]].reset_index(drop=True),
                     pd.DataFrame(values, columns=cell_types)], axis=1)
    path = Path(args.submission or out / "submission.csv")
    problems = check_submission(sub, ids, cell_types, str(path))
    if problems:
        raise DataError(problems)
    weighting = "given" if args.weights else "learned" if learned else "score"
    record = {"models": models, "weights": weights.tolist(),
              "weighting": weighting if len(models) > 1 else None,
              "per_type_model": layer, "orders_from": order_by,
              # with learned weights optimistic: the nested scores are the honest ones
              "oof": score_oof(*oof, cell_types, lambda rows: combine(rows, weights, cell_types)),
              "nested": learned["nested"] if learned else None}
    log.info("LOSO of the submitted values (out-of-fold): per-spot %.3f, per-type %.3f",
             record["oof"]["mean"]["spot"], record["oof"]["mean"]["type"])
    maps = run_maps(out, report, frames[0], values, cell_types,  # read before any write
                    per_type[cell_types].to_numpy(float) if layer else None)
    write_safe_csv(path, sub)
    atomic_write_json(path.with_suffix(".json"), record)
    h5ad = Path(args.h5ad or out / "predictions.h5ad")
    write_maps(h5ad.parent, maps, args.h5, h5ad)
    if args.spatialdata:
        X = values if maps.abundance is None else maps.abundance
        write_spatialdata(out / "predictions.zarr", frames[0], X, cell_types, args.h5)
    log.info("models %s (weights %s), order of the spots within each type from %s -> %s "
             "(%d spots x %d types), %s and %s", models, np.round(weights, 3).tolist(),
             order_by, path, len(sub), len(cell_types), path.with_suffix(".json"), h5ad)
    return 0


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(resolve_config(SubmitConfig, build_parser().parse_args(argv)), submit)


if __name__ == "__main__":
    raise SystemExit(main())
