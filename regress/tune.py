"""Choose a recipe by LOSO on the training slides alone: ``make tune``.

Every recipe of the grid (default ``TUNE_GRID``) runs one ridge LOSO on the same cached
feature parts; the ablation table (both metrics, per slide and mean, each lever on/off)
goes into ``report.json``/``report.md`` under "ablation", and the recipe with the best mean
per-spot Spearman (ties: per-type) is recorded in ``OUT/tuned.json``, which
``regress.run --recipe auto`` (make regress, make demo, make pipeline) then uses. Test
slides' targets are never read: the HDF5 reader gives test slides no targets.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from data.config import config_dict, parse_list, resolve_config
from data.errors import run_cli, setup_logging
from regress.features import FeatureSpec, SlideSet, load_slides
from regress.loso import run_loso
from regress.models import DEFAULT_ALPHAS, RidgeLOSO
from regress.recipes import TUNE_GRID, Recipe, get_recipe, prepare
from regress.results import atomic_write_text, update_report

log = logging.getLogger("hespot")

LEVERS = ("context_k", "smooth_k", "per_type_alpha", "center")


@dataclass(frozen=True)
class TuneConfig:
    h5: str = "out/her2st.h5"
    store: str = "out/embeddings.zarr"
    out: str = "out"
    recipes: tuple[str, ...] = TUNE_GRID
    target: str = "spot_rank"
    alpha_max: float = 1e7
    quiet: bool = False


def evaluate(data: SlideSet, recipe: Recipe, target: str, alpha_max: float) -> dict:
    """One ridge LOSO of a recipe: per-slide and mean scores, time."""
    prepared, post = prepare(data, recipe)
    alphas = tuple(a for a in DEFAULT_ALPHAS if a <= alpha_max)
    res = run_loso(lambda: RidgeLOSO(alphas=alphas, per_type_alpha=recipe.per_type_alpha),
                   prepared, target, postprocess=post)
    return {"recipe": recipe.as_dict(), "per_slide": res.per_slide, "mean": res.mean,
            "seconds": round(res.seconds, 2)}


def choose(rows: dict[str, dict]) -> str:
    """Best mean per-spot Spearman, ties broken by per-type."""
    return max(rows, key=lambda n: (round(rows[n]["mean"]["spot"], 4), rows[n]["mean"]["type"]))


def ablation_markdown(rows: dict[str, dict], chosen: str, reference: str = "plain") -> str:
    slides = sorted({s for r in rows.values() for s in r["per_slide"]})
    ref = rows.get(reference)
    head = ["| recipe | features | " + " | ".join(LEVERS) + " | " + " | ".join(slides) +
            " | spot | type | better than plain |",
            "|" + "---|" * (len(LEVERS) + len(slides) + 5)]
    for name, r in rows.items():
        rc = r["recipe"]
        levers = [str(rc[k]) if k != "smooth_k" else
                  (f"k{rc['smooth_k']} w{rc['smooth_w']}" if rc["smooth_k"] else "0")
                  for k in LEVERS]
        cells = [f"{r['per_slide'][s]['spot']:.3f} / {r['per_slide'][s]['type']:.3f}"
                 for s in slides]
        better = ""
        if ref and name != reference:
            better = f"{sum(r['per_slide'][s]['spot'] > ref['per_slide'][s]['spot'] for s in slides)}/{len(slides)}"  # noqa: E501
        mark = " (chosen)" if name == chosen else ""
        head.append(f"| {name}{mark} | {' + '.join(rc['features'])} | " + " | ".join(levers) +
                    " | " + " | ".join(cells) +
                    f" | {r['mean']['spot']:.3f} | {r['mean']['type']:.3f} | {better} |")
    return "\n".join(head) + "\n"


def run(cfg: TuneConfig) -> dict:
    recipes = [get_recipe(n) for n in cfg.recipes]
    specs = sorted({f for r in recipes for f in r.features})
    t0 = time.perf_counter()
    data = load_slides(cfg.h5, cfg.store, [FeatureSpec.parse(f) for f in specs])
    log.info("loaded %d feature parts in %.1f s", len(specs), time.perf_counter() - t0)
    rows = {}
    for recipe in recipes:
        rows[recipe.name] = evaluate(data, recipe, cfg.target, cfg.alpha_max)
        m = rows[recipe.name]["mean"]
        log.info("%-18s per-spot %.3f per-type %.3f (%.0f s)", recipe.name, m["spot"],
                 m["type"], rows[recipe.name]["seconds"])
    chosen = choose(rows)
    out = Path(cfg.out)
    atomic_write_text(out / "tuned.json", json.dumps(
        {"recipe": chosen, "scores": rows[chosen]["mean"], "target": cfg.target,
         "train_slides": data.train}, indent=1))
    table = ablation_markdown(rows, chosen)
    update_report(out, {}, ablation={"rows": rows, "chosen": chosen, "table": table,
                                     "config": config_dict(cfg)})
    log.info("chosen recipe: %s\n%s", chosen, table)
    return {"rows": rows, "chosen": chosen}


def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m regress.tune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--config")
    p.add_argument("--h5")
    p.add_argument("--store")
    p.add_argument("--out")
    p.add_argument("--recipes", type=parse_list, help="comma-separated recipe names")
    p.add_argument("--target")
    p.add_argument("--alpha-max", dest="alpha_max", type=float)
    p.add_argument("--quiet", action=argparse.BooleanOptionalAction)
    cfg = resolve_config(TuneConfig, p.parse_args(argv))
    setup_logging(cfg.quiet)
    run(cfg)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())


