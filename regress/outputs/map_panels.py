"""What each map of a slide shows: the values per spot, their colour scale and a title
that says what they are (abundance, rank score, interval width, OOD score).

Colour scales: one per cell type, from 0 to the type's 98th percentile on the slide. The
35 types of the challenge differ a hundredfold in abundance, so on a shared scale the
rare ones would be one flat colour; the colour bar beside each map gives its amounts
(starting at 0, so a pale map is a scarce type, not a noisy one). Without abundances (a
model fitted before abundance models) the rank scores are drawn on their 2nd-98th
percentiles, and every title says they are rank scores, not amounts.

Uncertainty: per spot, the 90 % interval width (upper - lower, abundance units) averaged
over the cell types (how unsure the whole composition is), beside the width of the spot's
most abundant type (how sure its QuPath class is).
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import Normalize

from regress.outputs.maps import Maps
from regress.report.plots import percentile_scale

Panel = tuple[str, np.ndarray, Normalize, str]   # title, (n_spots,) values, scale, cmap


def type_panels(maps: Maps, rows: np.ndarray) -> tuple[list[Panel], str]:
    """(title, values, scale, colour map) per cell type for the slide's ``rows``, and what
    they show ("abundance" or "rank score")."""
    if maps.abundance is not None:
        values, cmap, quantity = maps.abundance[rows], "viridis", "abundance"
    else:
        values, cmap, quantity = maps.rank_score[rows], "cividis", "rank score"
    panels = []
    for j, name in enumerate(maps.cell_types):
        v = np.asarray(values[:, j], float)
        if quantity == "abundance":
            hi = float(np.nanpercentile(v, 98)) if np.isfinite(v).any() else 0.0
            hi = hi if hi > 0 else float(np.nanmax(v, initial=0.0)) or 1e-6
            norm, label = Normalize(0.0, hi), f"{name} (mean {np.nanmean(v):.3g})"
        else:
            lo, hi = percentile_scale(v[np.isfinite(v)])
            norm, label = Normalize(lo, hi if hi > lo else lo + 1e-9), f"{name}: rank score"
        panels.append((label, v, norm, cmap))
    return panels, quantity


def uncertainty_panels(maps: Maps, rows: np.ndarray) -> list[Panel]:
    """The interval width (upper - lower, abundance units) per spot: averaged over the
    cell types, and of the spot's most abundant type; none without intervals."""
    if maps.lower is None or maps.upper is None or maps.abundance is None:
        return []
    width = maps.upper[rows] - maps.lower[rows]
    top = np.nanargmax(np.nan_to_num(maps.abundance[rows], nan=-np.inf), axis=1)
    mean, of_top = np.nanmean(width, axis=1), width[np.arange(len(rows)), top]
    out = []
    for label, v in (("90 % interval width, mean over the cell types", mean),
                     ("90 % interval width of the spot's most abundant type", of_top)):
        hi = float(np.nanpercentile(v, 98)) if np.isfinite(v).any() else 1.0
        out.append((label, v, Normalize(0.0, hi if hi > 0 else 1e-6), "magma"))
    return out


def ood_title(slide: str, verdict: dict | None) -> str:
    """The OOD picture's title: the slide's score against its threshold, and the verdict."""
    if not verdict:
        return f"{slide}: OOD score per spot"
    flagged = ("FLAGGED: unlike the training slides, abundances may be wrong"
               if verdict.get("ood_flagged") else "within the training slides' range")
    return (f"{slide}: OOD score per spot; slide score {verdict['ood_score']:.2f} vs "
            f"threshold {verdict['ood_threshold']:.2f}: {flagged}; "
            f"{verdict.get('flagged_spots', 0)} spots above the spot threshold")
