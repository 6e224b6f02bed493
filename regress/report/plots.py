"""Figures of the HTML report (matplotlib, Agg canvas, no pyplot state); slide thumbnails
come from :func:`regress.outputs.thumbnail` (shared with predictions.h5ad).

Coordinates are full-resolution pixels throughout: ``x`` = column, ``y`` = row, and a
thumbnail is drawn with the extent of the full image, so spots sit where they belong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import EllipseCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from data.atomic import atomic_path
from regress.outputs import spot_spacing
from regress.outputs import thumbnail as thumbnail  # re-exported: report.inputs uses it

Extent = tuple[float, float, float, float]
SPOT_FILL = 0.7   # drawn spot diameter as a share of the spot spacing


def new_figure(width: float, height: float, layout: str | None = "constrained") -> Figure:
    """A Figure on the Agg canvas (no pyplot, no global state)."""
    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path, dpi: int = 90) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (its folder is made); returns the path."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def _spots(ax, x, y, diameter: float, values=None, norm=None, cmap="viridis",
           edge="#00c853") -> EllipseCollection:
    """Spots as circles of ``diameter`` data units: filled by ``values`` or outlined."""
    coll = EllipseCollection(widths=diameter, heights=diameter, angles=0, units="xy",
                             offsets=np.stack([x, y], axis=1), offset_transform=ax.transData)
    if values is None:
        coll.set_facecolor("none")
        coll.set_edgecolor(edge)
        coll.set_linewidth(0.8)
    else:
        coll.set_array(np.asarray(values, float))
        coll.set_cmap(cmap)
        coll.set_norm(norm)
        coll.set_edgecolor("none")
    ax.add_collection(coll)
    return coll


def crop_thumb(thumb: np.ndarray, extent: Extent, box: Extent) -> tuple[np.ndarray, Extent]:
    """The part of ``thumb`` covering ``box`` = (x0, x1, y1, y0) in full-resolution pixels,
    and its extent."""
    h, w = thumb.shape[:2]
    sx, sy = (extent[1] - extent[0]) / w, (extent[2] - extent[3]) / h
    c0, c1 = max(0, int(box[0] // sx)), min(w, int(np.ceil(box[1] / sx)))
    r0, r1 = max(0, int(box[3] // sy)), min(h, int(np.ceil(box[2] / sy)))
    if c1 <= c0 or r1 <= r0:
        return thumb[:0, :0], box
    return thumb[r0:r1, c0:c1], (c0 * sx, c1 * sx, r1 * sy, r0 * sy)


def _frame(ax, thumb: np.ndarray | None, extent: Extent | None, x, y, margin: float,
           whole: bool, fade: float = 1.0) -> None:
    """Axes limits (the whole image, or the spots plus ``margin``) and the thumbnail under
    them, blended towards white by ``fade`` < 1."""
    if whole and extent is not None:
        box = extent
    else:
        box = (x.min() - margin, x.max() + margin, y.max() + margin, y.min() - margin)
    if thumb is not None and extent is not None:
        part, part_extent = crop_thumb(thumb, extent, box)
        if part.size:
            if fade < 1.0:
                part = (part * fade + 255 * (1 - fade)).astype(np.uint8)
            ax.imshow(part, extent=part_extent, interpolation="antialiased")
    ax.set_xlim(box[0], box[1])
    ax.set_ylim(box[2], box[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def fig_overlay(thumb: np.ndarray, extent: Extent, x: np.ndarray, y: np.ndarray,
                title: str, tissue: tuple[np.ndarray, Extent] | None = None) -> Figure:
    """The whole thumbnail with every spot outlined, and the outline of a tissue mask
    (bool (h, w) and its extent in full-resolution pixels) when given."""
    aspect = (extent[2] - extent[3]) / max(1.0, extent[1] - extent[0])
    fig = new_figure(5.0, 5.0 * aspect + 0.4)
    ax = fig.add_subplot()
    _frame(ax, thumb, extent, x, y, 0, whole=True)
    if tissue is not None and tissue[0].any() and not tissue[0].all():
        ax.contour(tissue[0].astype(float), levels=[0.5], extent=tissue[1], origin="upper",
                   colors="#ff8f00", linewidths=1.2)
    _spots(ax, x, y, SPOT_FILL * spot_spacing(x, y))
    ax.set_title(title, fontsize=9)
    return fig


def fig_maps(thumb: np.ndarray | None, extent: Extent | None, x: np.ndarray, y: np.ndarray,
             panels: Sequence[tuple], ncols: int, title: str) -> Figure:
    """Spatial maps: one panel per (label, (n_spots,) values[, (lo, hi)]), colour on the
    spot grid over a faded thumbnail, each panel on the colour scale it gives, else its own
    (2nd-98th percentile).

    Laid out by hand (fixed inches per panel): constrained layout costs more than drawing.
    """
    nrows = math.ceil(len(panels) / ncols)
    spacing = spot_spacing(x, y)
    span_x = x.max() - x.min() + 2 * spacing
    span_y = y.max() - y.min() + 2 * spacing
    pw = 2.6                                                  # panel width, inches
    ph = pw * max(0.3, min(2.5, span_y / max(span_x, 1.0)))
    cell_w, cell_h, top = pw + 0.75, ph + 0.45, 0.4           # + colorbar/ticks, titles
    W, H = 0.15 + ncols * cell_w, top + nrows * cell_h
    fig = new_figure(W, H, layout=None)
    for k, (label, values, *scale) in enumerate(panels):
        left = 0.15 + (k % ncols) * cell_w
        bottom = H - top - (k // ncols + 1) * cell_h + 0.05
        ax = fig.add_axes((left / W, bottom / H, pw / W, ph / H))
        cax = fig.add_axes(((left + pw + 0.06) / W, bottom / H, 0.12 / W, ph / H))
        _frame(ax, thumb, extent, x, y, spacing, whole=False, fade=0.45)
        values = np.asarray(values, float)
        lo, hi = scale[0] if scale else percentile_scale(values)
        coll = _spots(ax, x, y, SPOT_FILL * spacing, values,
                      Normalize(lo, hi if hi > lo else lo + 1e-9))
        fig.colorbar(coll, cax=cax)
        cax.tick_params(labelsize=7)
        ax.set_title(label, fontsize=8)
    fig.suptitle(title, fontsize=10, y=1 - 0.12 / H, va="top")
    return fig


def percentile_scale(values: np.ndarray) -> tuple[float, float]:
    """The 2nd and 98th percentiles of ``values`` ((0, 1) when empty): a colour scale."""
    values = np.asarray(values, float)
    return tuple(np.nanpercentile(values, [2, 98])) if len(values) else (0.0, 1.0)


def fig_abundance(Y_by_slide: Mapping[str, np.ndarray], cell_types: Sequence[str]) -> Figure:
    """Box plot per cell type (rows) and slide (colours) of the abundances (no outliers)."""
    slides = list(Y_by_slide)
    n_types = len(cell_types)
    fig, ax, colours, width = _grouped_rows(cell_types, len(slides), 0.055)
    for k, slide in enumerate(slides):
        pos = np.arange(n_types) - 0.4 + width * (k + 0.5)
        bp = ax.boxplot([Y_by_slide[slide][:, j] for j in range(n_types)], positions=pos,
                        widths=width * 0.9, orientation="horizontal", showfliers=False,
                        patch_artist=True, manage_ticks=False)
        for box in bp["boxes"]:
            box.set(facecolor=colours[k], edgecolor="#333", linewidth=0.4)
        for part in ("whiskers", "caps", "medians"):
            for line in bp[part]:
                line.set(color="#333", linewidth=0.4)
    ax.set_xlabel("abundance")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles=[Patch(color=colours[k], label=s) for k, s in enumerate(slides)],
              fontsize=7, loc="lower right")
    return fig


def fig_correlation(corr: np.ndarray, cell_types: Sequence[str]) -> Figure:
    """Heatmap of a (n_types, n_types) correlation matrix."""
    n = len(cell_types)
    side = min(12.0, 3.0 + 0.22 * n)
    fig = new_figure(side + 1.0, side)
    ax = fig.add_subplot()
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(np.arange(n), labels=list(cell_types), rotation=90, fontsize=6)
    ax.set_yticks(np.arange(n), labels=list(cell_types), fontsize=6)
    fig.colorbar(im, ax=ax, shrink=0.6, label="Spearman")
    return fig


def fig_pca(pcs: Mapping[str, np.ndarray], test: set[str], explained: Sequence[float],
            title: str) -> Figure:
    """PC1 vs PC2 of the embeddings, one colour per slide (test slides as crosses)."""
    fig = new_figure(6.5, 5.0)
    ax = fig.add_subplot()
    colours = _colours(len(pcs))
    for k, (slide, P) in enumerate(pcs.items()):
        ax.scatter(P[:, 0], P[:, 1], s=8, color=colours[k], alpha=0.7,
                   marker="x" if slide in test else "o",
                   label=f"{slide} (test)" if slide in test else slide)
    ax.set_xlabel(f"PC1 ({explained[0]:.0%})")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
    ax.legend(fontsize=7, markerscale=2)
    ax.set_title(title, fontsize=9)
    return fig


def fig_per_type(scores: Mapping[str, Mapping[str, float]], cell_types: Sequence[str]) -> Figure:
    """Grouped horizontal bars: per-type Spearman (mean over held-out slides) per model;
    types ordered by the first model's score."""
    models = list(scores)
    first = scores[models[0]]
    order = sorted(cell_types, key=lambda t: -first.get(t, 0.0))
    fig, ax, colours, height = _grouped_rows(order, len(models), 0.07)
    for k, model in enumerate(models):
        pos = np.arange(len(order)) - 0.4 + height * (k + 0.5)
        ax.barh(pos, [scores[model].get(t, 0.0) for t in order], height=height,
                color=colours[k], label=model)
    ax.axvline(0, color="#333", linewidth=0.6)
    ax.set_xlabel("Spearman across spots (mean over held-out slides)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    return fig


def _grouped_rows(labels: Sequence[str], n_groups: int, row_inch: float
                  ) -> tuple[Figure, object, list, float]:
    """A figure of one labelled row per ``labels`` (top to bottom), each to hold
    ``n_groups`` marks side by side (``row_inch`` inches of height per mark). Returns the
    figure, its axes, one colour per group and a mark's thickness; group ``k``'s marks
    stand at ``arange(len(labels)) - 0.4 + thickness * (k + 0.5)``."""
    n, m = len(labels), max(1, n_groups)
    fig = new_figure(8.0, max(3.0, 1.0 + row_inch * n * m))
    ax = fig.add_subplot()
    ax.set_yticks(np.arange(n), labels=list(labels), fontsize=7)
    ax.set_ylim(n - 0.5, -0.5)
    return fig, ax, _colours(m), 0.8 / m


def _colours(n: int) -> list:
    """``n`` distinct RGBA colours (tab10, or tab20 beyond 10; cycled beyond 20)."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
