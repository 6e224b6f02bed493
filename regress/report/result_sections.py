"""The result sections of the report page: the LOSO table, per-type scores, true vs
predicted maps of the held-out slides, predicted maps of the test slides and the ablation.
Tables come from :mod:`regress.tables` (as in report.md); model order from
:func:`regress.results.rank_models`."""

from __future__ import annotations

from collections.abc import Iterator
from html import escape

import numpy as np

from data.errors import DataError, Problem
from regress.metrics import pearson_per_type, spearman_per_type
from regress.report import plots
from regress.report.inputs import Absent, Inputs, section
from regress.results import rank_models, read_predictions
from regress.tables import ablation_table, loso_table, to_html


@section("Results", "loso", "LOSO table")
def section_loso(ctx: Inputs) -> str:
    """The LOSO table: every model, best first."""
    report = ctx.need_report()
    return ("<p>Leave-one-slide-out Spearman; each cell: per spot (across cell types, the "
            "challenge's metric) / per cell type (across spots). The constant profile is "
            "the baseline.</p>" + to_html(loso_table(report, rank_models(report))))


@section("Results", "per-type", "Per-cell-type scores")
def section_per_type(ctx: Inputs) -> str:
    """Per-type Spearman of every model (best first) as grouped bars."""
    report = ctx.need_report()
    models, order = report["models"], rank_models(report)
    types = list(models[order[0]]["per_type"])
    fig = plots.fig_per_type({m: models[m]["per_type"] for m in order}, types)
    return ctx.figure(fig, "per_type", "per-type scores")


def _oof_figure(ctx: Inputs, model: str, slide: str, P: np.ndarray,
                A: np.ndarray | None) -> str:
    """True abundances (top), predicted abundances ``A`` on the same colour scale (middle,
    where an abundance model ran) and rank scores ``P`` (bottom) of one held-out slide;
    P and A are float (n_spots, n_map_types)."""
    t, types = ctx.table(slide), list(ctx.h5.cell_types)
    cols = [types.index(c) for c in ctx.types]
    truth = t.Y[:, cols]
    scales = [plots.percentile_scale(truth[:, k]) for k in range(len(cols))]
    panels = [(f"{c}\ntrue abundance", truth[:, k], scales[k]) for k, c in enumerate(ctx.types)]
    if A is not None:
        r = pearson_per_type(truth, A)
        panels += [(f"predicted abundance (r {r[k]:.2f})", A[:, k], scales[k])
                   for k in range(len(cols))]
    rho = spearman_per_type(truth, P)
    panels += [(f"rank score (rho {r:.2f})", P[:, k]) for k, r in enumerate(rho)]
    score = ctx.report["models"][model]["per_slide"].get(slide, {})
    title = f"{model}, {slide} held out" + (
        f": per spot {score['spot']:.3f}, per type {score['type']:.3f}" if score else "")
    thumb, extent = ctx.thumb(slide)
    fig = plots.fig_maps(thumb, extent, t.x, t.y, panels, len(ctx.types), title)
    return ctx.figure(fig, f"oof_{model}_{slide}", f"true vs predicted on {slide}")


def abundance_predictions(ctx: Inputs, which: str) -> dict[str, np.ndarray]:
    """slide -> float (n_spots, n_map_types) of the chosen abundance model ({} if none)."""
    section = (ctx.report or {}).get("abundance")
    if not section:
        return {}
    return _predicted(ctx, f"abundance-{section['chosen']}", which)


def _predicted(ctx: Inputs, model: str, which: str) -> dict[str, np.ndarray]:
    """slide -> float (n_spots, n_map_types) predictions in spot-table row order."""
    df = read_predictions(ctx.out, model, which)
    out = {}
    for slide, part in df.groupby("slide", sort=False):
        n = len(ctx.table(slide))
        rows = part["row"].to_numpy()
        if len(rows) != n or not np.array_equal(np.sort(rows), np.arange(n)):
            raise DataError(Problem(str(ctx.out / "predictions" / model / f"{which}.csv"),
                                    slide, "row", f"rows 0..{n - 1}", f"{len(part)} rows",
                                    "rerun `make regress`"))
        out[str(slide)] = part.sort_values("row")[ctx.types].to_numpy(float)
    return out


def _mapped(ctx: Inputs, kind: str) -> Iterator[tuple[str, str, np.ndarray, np.ndarray | None]]:
    """(model, slide, rank scores (n_spots, n_types), abundances or None) of every mapped
    model's ``kind`` ("oof" or "test") predictions, slide by slide."""
    ctx.need_h5()
    abundance = abundance_predictions(ctx, kind)
    for model in ctx.need_models():
        for slide, P in _predicted(ctx, model, kind).items():
            yield model, slide, P, abundance.get(slide)


@section("Results", "oof", "True vs predicted, held-out slides")
def section_oof(ctx: Inputs) -> str:
    """True vs out-of-fold predicted maps of every held-out slide of the mapped models."""
    figs = [_oof_figure(ctx, model, slide, P, A) for model, slide, P, A in _mapped(ctx, "oof")]
    return ("<p>Top row: true abundance. Middle row (where an abundance model ran): the "
            "out-of-fold predicted abundance, on the true row's colour scale. Bottom row: "
            "the rank model's out-of-fold rank scores, for ranking (Spearman), not amounts, "
            "each on its own colour scale.</p>" + "".join(figs))


@section("Results", "test", "Predicted maps, test slides")
def section_test(ctx: Inputs) -> str:
    """Predicted maps of every test slide of the mapped models."""
    figs = []
    for model, slide, P, A in _mapped(ctx, "test"):
        t = ctx.table(slide)
        thumb, extent = ctx.thumb(slide)
        panels = [(f"{c}\npredicted abundance", A[:, k]) for k, c in enumerate(ctx.types)
                  ] if A is not None else []
        panels += [(f"{c}\nrank score", P[:, k]) for k, c in enumerate(ctx.types)]
        fig = plots.fig_maps(thumb, extent, t.x, t.y, panels, len(panels),
                             f"{model}, test slide {slide} (fit on all train slides)")
        figs.append(ctx.figure(fig, f"test_{model}_{slide}", f"predictions on {slide}"))
    if not figs:
        raise Absent("the predictions hold no test slide")
    return "".join(figs)


@section("Results", "ablation", "Ablation")
def section_ablation(ctx: Inputs) -> str:
    """The ablation table of ``make tune``, built from report.json's ablation rows."""
    ablation = ctx.need_report().get("ablation")
    if not ablation:
        raise Absent(f"{ctx.out / 'report.json'} has no ablation: run `make tune`")
    return (f"<p>Ridge, LOSO; chosen recipe: <b>{escape(str(ablation.get('chosen')))}</b>. "
            "Cells: per spot / per type.</p>" + to_html(ablation_table(ablation)))
