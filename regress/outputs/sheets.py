"""The pictures of one slide's maps that ``hespot map`` writes into ``OUT/<slide>/``:

- ``maps.png``: the contact sheet, every cell type's abundance over the slide's faded
  thumbnail (the tissue outline in orange), a colour bar each;
- ``type_<name>.png``: each cell type's map alone, larger (:func:`type_file_names`);
- ``uncertainty.png``: per spot, the 90 % interval width averaged over the cell types
  (how unsure the whole composition is) beside the width of the spot's most abundant
  type (how sure its QuPath class is); written only when the model gives intervals;
- ``ood.png``: each spot's OOD score, the slide's score against its threshold in the
  title; written only when the model gives OOD scores.

Pictures of an earlier run in the folder that this run does not write (another model's
cell types, an OOD map this model cannot draw) are removed.

Colour scales and what each map shows: :mod:`regress.outputs.map_panels`. Without
abundances (an old model) the rank scores are drawn, and the titles say so.

Speed: the spots are rasterised once per slide (:mod:`regress.outputs.map_canvas`), so
a map costs one ``imshow`` whatever the number of spots, and the single-type pictures
reuse one figure.
"""

from __future__ import annotations

import logging
import re
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from data.atomic import atomic_path
from data.check import slide_tissue
from data.h5 import CanonicalH5
from regress.outputs.anndata import spot_spacing, thumbnail
from regress.outputs.map_canvas import (
    Extent,
    MapCanvas,
    draw_map,
    map_canvas,
    spots_box,
    tissue_outline,
)
from regress.outputs.map_panels import Panel, ood_title, type_panels, uncertainty_panels
from regress.outputs.maps import Maps
from regress.report.plots import new_figure

log = logging.getLogger("hespot")

#: longest side of the thumbnail read once per slide (level-0 pixels are never read)
THUMB_PX = 1024
#: raster size (longest side, pixels) of a single picture (drawn pixel for pixel; a
#: contact sheet's panels are as well, at :func:`sheet_px`)
SINGLE_PX = 800
#: most columns of a contact sheet; panel width (inches); dots per inch
SHEET_COLS = 6
PANEL_IN = 2.4
#: panel width (inches) of the uncertainty and OOD pictures
BIG_PANEL_IN = 5.0
DPI = 100
#: zlib level of the PNGs (1-9)
PNG_LEVEL = 3
#: a title's line width (characters) before it wraps
TITLE_CHARS = 34
#: longest stem of a per-type file name
MAX_STEM = 60
#: the pictures a slide's folder may hold (others are an earlier run's: removed)
PICTURES = ("maps.png", "uncertainty.png", "ood.png", "type_*.png")


@dataclass(frozen=True)
class SlidePictures:
    """What :func:`write_slide_pictures` wrote for a slide.

    Attributes:
        sheet: ``maps.png``, the contact sheet.
        types: cell type -> its own picture, in the model's order.
        uncertainty: ``uncertainty.png``, or None (the model gives no intervals).
        ood: ``ood.png``, or None (the model gives no OOD scores).
        quantity: "abundance" or "rank score": what the maps show.
    """

    sheet: Path
    types: dict[str, Path] = field(default_factory=dict)
    uncertainty: Path | None = None
    ood: Path | None = None
    quantity: str = "abundance"

    def files(self) -> dict[str, Path]:
        """Every picture, by a label for a link (the types by name)."""
        out = {"contact sheet": self.sheet}
        if self.uncertainty is not None:
            out["uncertainty map"] = self.uncertainty
        if self.ood is not None:
            out["OOD map"] = self.ood
        return out


def type_file_names(cell_types: Sequence[str]) -> list[str]:
    """One file name per cell type, ``type_<name>.png``: runs of characters other than
    ASCII letters, digits, ``.``, ``-`` and ``_`` become ``_`` (no ``/``, no spaces, nothing
    a URL must escape), cut to :data:`MAX_STEM`; names that would clash (also when case is
    ignored, as on macOS and Windows) get ``_2``, ``_3``, ..."""
    out, taken = [], set()
    for name in cell_types:
        stem = re.sub(r"[^A-Za-z0-9.-]+", "_", name).strip("._")[:MAX_STEM] or "type"
        candidate, k = stem, 1
        while candidate.lower() in taken:
            k += 1
            candidate = f"{stem}_{k}"
        taken.add(candidate.lower())
        out.append(f"type_{candidate}.png")
    return out


def _title(text: str, width: int = TITLE_CHARS, lines: int = 2) -> str:
    """``text`` wrapped at ``width`` characters, cut to ``lines`` lines (ending in …)."""
    return "\n".join(textwrap.wrap(text, width, max_lines=lines, placeholder=" …")) or text


def save_png(fig: Figure, path: Path) -> Path:
    """Write ``fig`` at :data:`DPI` as a PNG atomically (its folder is made), with light
    compression (zlib level :data:`PNG_LEVEL`: encoding at the default level costs more
    than drawing); returns the path."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", pil_kwargs={"compress_level": PNG_LEVEL})
    return path


def _aspect(canvas: MapCanvas) -> float:
    h, w = canvas.raster.index.shape
    return max(0.3, min(2.5, h / w))


def sheet_px(box: Extent) -> int:
    """Longest side (pixels) of a contact-sheet panel showing ``box`` at :data:`DPI`."""
    x0, x1, y1, y0 = box
    return round(PANEL_IN * DPI * max(1.0, min(2.5, (y1 - y0) / max(x1 - x0, 1.0))))


def fig_sheet(canvas: MapCanvas, panels: Sequence[Panel], title: str,
              panel_in: float = PANEL_IN) -> Figure:
    """A contact sheet: one map per panel (``panel_in`` inches wide), at most
    :data:`SHEET_COLS` a row, each with its colour bar, under ``title`` (wrapped). Laid out
    by hand (fixed inches per panel): constrained layout costs more than drawing. A canvas
    of as many pixels as a panel (:func:`sheet_px`) is drawn pixel for pixel."""
    ncols = min(SHEET_COLS, max(1, len(panels)))
    nrows = -(-len(panels) // ncols)
    pw = panel_in
    ph = pw * _aspect(canvas)
    exact = max(canvas.raster.index.shape) == round(max(pw, ph) * DPI)
    interpolation = "nearest" if exact else "antialiased"
    cell_w, cell_h = pw + 0.8, ph + 0.55                  # colour bar, titles of 2 lines
    W = 0.15 + ncols * cell_w
    lines = textwrap.wrap(title, max(20, int(W * 12))) or [title]
    top = 0.25 + 0.2 * len(lines)
    H = top + nrows * cell_h
    fig = new_figure(W, H, layout=None)
    for k, (label, values, norm, cmap) in enumerate(panels):
        left = 0.15 + (k % ncols) * cell_w
        bottom = H - top - (k // ncols + 1) * cell_h + 0.05
        ax = fig.add_axes((left / W, bottom / H, pw / W, ph / H))
        cax = fig.add_axes(((left + pw + 0.06) / W, bottom / H, 0.12 / W, ph / H))
        fig.colorbar(draw_map(ax, canvas, values, norm, cmap, 0.8, interpolation)[1], cax=cax)
        cax.tick_params(labelsize=7)
        ax.set_title(_title(label, int(pw * 14)), fontsize=8)
    fig.suptitle("\n".join(lines), fontsize=11, y=1 - 0.1 / H, va="top")
    return fig


def write_singles(folder: Path, canvas: MapCanvas, panels: Sequence[Panel],
                  names: Sequence[str], title: str) -> list[Path]:
    """One picture per panel, ``folder/<name>``, its map one screen pixel per raster
    pixel, all drawn on one reused figure (only the image, the colour bar's scale and the
    title change)."""
    h, w = canvas.raster.index.shape
    aw, ah = w / DPI, h / DPI                              # axes (inches)
    W, H = aw + 1.3, ah + 0.8
    fig = new_figure(W, H, layout=None)
    ax = fig.add_axes((0.1 / W, 0.1 / H, aw / W, ah / H))
    cax = fig.add_axes(((aw + 0.25) / W, 0.1 / H, 0.18 / W, ah / H))
    image = bar = None
    written = []
    for (label, values, norm, cmap), name in zip(panels, names, strict=True):
        if image is None or bar is None:
            image, mappable = draw_map(ax, canvas, values, norm, cmap, 1.2, "nearest")
            bar = fig.colorbar(mappable, cax=cax)
        else:
            image.set_data(canvas.rgb(values, norm, cmap))
            bar.update_normal(ScalarMappable(norm, cmap))
        ax.set_title(_title(f"{title}: {label}", int(W * 11)), fontsize=10)
        written.append(save_png(fig, folder / name))
    return written


def _slide_rows(maps: Maps, slide: str) -> np.ndarray:
    if "/" in slide or "\\" in slide or slide in ("", ".", ".."):
        raise ValueError(f"slide name {slide!r} cannot name a folder (data.validate "
                         "refuses such names at import)")
    rows = np.flatnonzero(maps.frame["slide"].astype(str).to_numpy() == slide)
    if not len(rows):
        raise ValueError(f"no spots of slide {slide!r} in the maps (slides: "
                         f"{sorted(set(maps.frame['slide'].astype(str)))})")
    return rows


def remove_stale(folder: Path, written: Sequence[Path]) -> None:
    """Remove the pictures of an earlier run (:data:`PICTURES`) that this run did not
    write: another model's cell types, or an uncertainty or OOD map that this model cannot
    draw (they would pass for this run's)."""
    keep = {p.name for p in written}
    for pattern in PICTURES:
        for path in folder.glob(pattern):
            if path.name not in keep and path.is_file():
                path.unlink()
                log.info("removed %s of an earlier run", path)


def slide_thumbnail(h5: CanonicalH5 | None, slide: str, thumb_px: int = THUMB_PX
                    ) -> tuple[np.ndarray | None, Extent | None, list[np.ndarray]]:
    """The slide's thumbnail (uint8 (h, w, 3)), its level-0 extent and the outline of its
    tissue (:func:`data.check.slide_tissue`, as the report draws it); nothing without
    ``h5``."""
    if h5 is None:
        return None, None, []
    thumb, extent = thumbnail(h5, slide, thumb_px)
    return thumb, extent, tissue_outline(slide_tissue(h5, slide))


def write_ood(out: Path, slide: str, maps: Maps, rows: np.ndarray, canvas: MapCanvas
              ) -> Path | None:
    """``out/ood.png``: the spots' OOD scores, on 0 to their 98th percentile; None when
    the model gives no OOD scores."""
    if maps.ood_score is None:
        return None
    v = np.asarray(maps.ood_score, float)[rows]
    hi = float(np.nanpercentile(v, 98)) if np.isfinite(v).any() else 1.0
    panel = ("OOD score per spot (about 1 for a typical training spot)", v,
             Normalize(0.0, max(hi, 1e-6)), "inferno")
    return save_png(fig_sheet(canvas, [panel], ood_title(slide, maps.slides.get(slide)),
                              panel_in=BIG_PANEL_IN), out / "ood.png")


def write_slide_pictures(folder: str | Path, slide: str, maps: Maps, h5: CanonicalH5 | None,
                         thumb_px: int = THUMB_PX) -> SlidePictures:
    """Write the pictures of ``slide``'s maps into ``folder/<slide>/`` (module docstring),
    each atomically (:mod:`data.atomic`).

    Args:
        folder: the run's output folder (OUT).
        slide: a slide of ``maps.frame`` (a plain name: no ``/``, not ``.``/``..``).
        maps: the predictions; ``frame`` x, y in level-0 pixels; abundance, lower, upper
            float (n_spots, n_types) or None; ood_score float (n_spots,) or None.
        h5: the canonical file holding the slide's image (thumbnail, tissue mask), or
            None to draw the spots on white.
        thumb_px: longest side of the thumbnail read.

    Returns:
        :class:`SlidePictures`: the paths written.

    Raises:
        ValueError: the slide has no spots in ``maps`` or its name cannot name a folder.
    """
    start = time.perf_counter()
    rows = _slide_rows(maps, slide)
    out = Path(folder) / slide
    x = maps.frame["x"].to_numpy(float)[rows]
    y = maps.frame["y"].to_numpy(float)[rows]
    spacing = spot_spacing(x, y)
    box = spots_box(x, y, 1.5 * spacing)
    thumb, extent, outline = slide_thumbnail(h5, slide, thumb_px)
    small = map_canvas(x, y, box, sheet_px(box), spacing, thumb, extent, outline)
    large = map_canvas(x, y, box, SINGLE_PX, spacing, thumb, extent, outline)
    panels, quantity = type_panels(maps, rows)
    what = "abundance" if quantity == "abundance" else (
        "rank scores (not amounts: this model has no abundance model)")
    title = f"{slide}: {what}, {len(rows):,} spots"
    sheet = save_png(fig_sheet(small, panels, title), out / "maps.png")
    singles = write_singles(out, large, panels, type_file_names(maps.cell_types), title)
    unc = uncertainty_panels(maps, rows)
    unc_path = save_png(fig_sheet(large, unc, f"{slide}: uncertainty of the abundances",
                                  panel_in=BIG_PANEL_IN),
                        out / "uncertainty.png") if unc else None
    ood_path = write_ood(out, slide, maps, rows, large)
    remove_stale(out, [sheet, *singles, *(p for p in (unc_path, ood_path) if p)])
    log.info("pictures of %s: %d maps of %d spots in %.1f s", slide,
             len(panels) + len(unc) + (ood_path is not None), len(rows),
             time.perf_counter() - start)
    return SlidePictures(sheet, dict(zip(maps.cell_types, singles, strict=True)), unc_path,
                         ood_path, quantity)
