"""The abundance sections of the report page: the LOSO tables of the abundance models
(total-variation distance beside the training mean's, per-type Pearson, interval coverage
and width per held-out slide) and the out-of-distribution scores per slide with a map of
the spot scores. Tables from :mod:`regress.tables`, as in report.md."""

from __future__ import annotations

from html import escape

import numpy as np

from regress.report import plots
from regress.report.inputs import Absent, Inputs, section
from regress.results import read_predictions
from regress.tables import abundance_tables, ood_table, to_html


def _section(ctx: Inputs) -> dict:
    section = ctx.need_report().get("abundance")
    if not section:
        raise Absent(f"{ctx.out / 'report.json'} has no abundance models: run `make regress`")
    return section


@section("Results", "abundance-loso", "Abundances: LOSO")
def section_abundance(ctx: Inputs) -> str:
    """One table per abundance metric, every candidate and the training mean."""
    section = _section(ctx)
    parts = [f"<p>Abundance models by leave-one-slide-out, chosen by mean per-spot "
             f"total-variation distance (half the L1 distance between predicted and true "
             f"proportions): <b>{escape(section['chosen'])}</b>. The training mean "
             "composition is the baseline; ratio = TV / the training mean's (of the means "
             "/ averaged over slides). Coverage: each held-out slide's 90 % intervals "
             "calibrated on the other slides only.</p>"]
    for title, table in abundance_tables(section):
        parts.append(f"<h3>{escape(title[0].upper() + title[1:])}</h3>{to_html(table)}")
    return "".join(parts)


def _scores(ctx: Inputs, which: str) -> dict[str, np.ndarray]:
    """slide -> float (n_spots,) OOD scores in spot-table row order."""
    frame = read_predictions(ctx.out, "ood", which)
    return {str(s): part.sort_values("row")["ood_score"].to_numpy(float)
            for s, part in frame.groupby("slide", sort=False)}


@section("Results", "ood", "Out-of-distribution scores")
def section_ood(ctx: Inputs) -> str:
    """OOD score per slide (held out and test) and a map of each slide's spot scores, all
    on one colour scale (0 to twice the slide threshold)."""
    ood = _section(ctx)["ood"]
    ctx.need_h5()
    th = ood["threshold"]
    scale = (0.0, 2.0 * th["slide"])
    figs = []
    for which, label in (("oof", "held out"), ("test", "test slide")):
        for slide, values in _scores(ctx, which).items():
            t = ctx.table(slide)
            thumb, extent = ctx.thumb(slide)
            verdict = (ood["per_slide"] if which == "oof" else ood["test"]).get(slide, {})
            flag = " FLAGGED" if verdict.get("ood_flagged") else ""
            fig = plots.fig_maps(thumb, extent, t.x, t.y,
                                 [("OOD score per spot", values, scale)], 1,
                                 f"{slide} ({label}): {np.median(values):.2f}{flag}")
            figs.append(ctx.figure(fig, f"ood_{slide}", f"OOD scores on {slide}"))
    return (f"<p>How far each spot's features lie from the training slides' (about 1 for a "
            f"training spot). A slide is flagged when its median exceeds "
            f"{th['slide']:.2f} (1.25 x the largest score of a training slide held out); a "
            f"held-out slide is judged against the threshold of the other folds; spots "
            f"above {th['spot']:.2f} are counted.</p>" + to_html(ood_table(ood))
            + '<div class="grid">' + "".join(figs) + "</div>")
