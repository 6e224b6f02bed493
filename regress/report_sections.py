"""The sections of the HTML report (regress.report): each reads its inputs from
:class:`Inputs` and returns its HTML, or raises :class:`Absent` naming what is missing."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zarr
from scipy.stats import rankdata
from sklearn.decomposition import PCA
from tqdm import tqdm

from data.check import background_share
from data.errors import DataError, Problem
from data.h5 import CanonicalH5, SpotTable
from data.store import FeatureSpec, read_array
from regress import plots
from regress.metrics import spearman_per_type
from regress.results import read_predictions

if TYPE_CHECKING:
    from regress.report import ReportConfig

N_MAP_TYPES = 4


class Absent(Exception):
    """A section's input does not exist; the message says which and how to make it."""


class Inputs:
    """What the sections read, opened once: the HDF5 file, report.json, the store path,
    spot tables and thumbnails (cached), and the image folder the figures go to."""

    def __init__(self, cfg: ReportConfig, img_dir: Path):
        self.cfg, self.out, self.img_dir = cfg, Path(cfg.out), img_dir
        self.h5 = CanonicalH5(cfg.h5) if Path(cfg.h5).is_file() else None
        path = self.out / "report.json"
        self.report = json.loads(path.read_text()) if path.is_file() else None
        self.written: list[Path] = []
        self._tables: dict[str, SpotTable] = {}
        self._thumbs: dict[str, tuple[np.ndarray, plots.Extent]] = {}
        self.models = self._models()
        self.types = self._types()

    def close(self) -> None:
        if self.h5 is not None:
            self.h5.close()

    def need_h5(self) -> CanonicalH5:
        if self.h5 is None:
            raise Absent(f"no HDF5 file at {self.cfg.h5}: run `make import` (or pass --h5)")
        return self.h5

    def need_report(self) -> dict:
        if not self.report or not self.report.get("models"):
            raise Absent(f"no models in {self.out / 'report.json'}: run `make regress`")
        return self.report

    def need_models(self) -> list[str]:
        self.need_report()
        if not self.models:
            raise Absent(f"no model with predictions under {self.out / 'predictions'}: run "
                         "`make regress`")
        return self.models

    def table(self, slide: str) -> SpotTable:
        if slide not in self._tables:
            self._tables[slide] = self.need_h5().spots(slide)
        return self._tables[slide]

    def thumb(self, slide: str) -> tuple[np.ndarray, plots.Extent]:
        if slide not in self._thumbs:
            self._thumbs[slide] = plots.thumbnail(self.need_h5(), slide, self.cfg.thumb_px)
        return self._thumbs[slide]

    def figure(self, fig, name: str, alt: str, caption: str = "") -> str:
        """Save ``fig`` as img/<n>_<name>.png; the HTML that shows it."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        path = plots.save(fig, self.img_dir / f"{len(self.written):03d}_{slug}.png")
        self.written.append(path)
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        return (f'<figure><img src="img/{path.name}" alt="{escape(alt)}">{cap}</figure>')

    def _models(self) -> list[str]:
        models = (self.report or {}).get("models", {})
        if self.cfg.models is not None:
            unknown = [m for m in self.cfg.models if m not in models]
            if unknown:
                raise DataError(Problem(str(self.out / "report.json"), "", "models",
                                        f"models of the report: {sorted(models)}",
                                        f"{unknown}", "pass --models with known model ids"))
            return list(self.cfg.models)
        best = sorted((m for m, e in models.items() if e.get("kind") != "constant"
                       and (self.out / "predictions" / m / "oof.csv").is_file()),
                      key=lambda m: -models[m]["mean"]["spot"])
        return best[:1]

    def _types(self) -> list[str]:
        known: list[str] = list(self.h5.cell_types) if self.h5 is not None else \
            list((self.report or {}).get("cell_types", []))
        if self.cfg.cell_types is not None:
            unknown = [t for t in self.cfg.cell_types if t not in known]
            if unknown:
                raise DataError(Problem(self.cfg.h5, "", "cell types", f"one of {known}",
                                        f"{unknown}", "pass --cell-types with known names"))
            return list(self.cfg.cell_types)
        if self.h5 is not None and self.h5.train_slides:
            Y = np.concatenate([self.table(s).Y for s in self.h5.train_slides])
            order = np.argsort(-Y.mean(axis=0), kind="stable")
            return [known[j] for j in order[:N_MAP_TYPES]]
        return known[:N_MAP_TYPES]


# ---------------------------------------------------------------- data sections

def section_slides(ctx: Inputs) -> str:
    h5 = ctx.need_h5()
    figs = []
    for split in ("Train", "Test"):
        for slide in tqdm(h5.slides(split), desc=f"thumbnails {split}", disable=ctx.cfg.quiet):
            t = ctx.table(slide)
            thumb, extent = ctx.thumb(slide)
            H, W = h5.image_shape(slide)[:2]
            px = h5.pixel_size_um(slide)
            fig = plots.fig_overlay(thumb, extent, t.x, t.y, f"{slide} ({split}, {len(t)} spots)")
            figs.append(ctx.figure(fig, f"slide_{slide}", f"thumbnail of {slide}",
                                   f"{slide}: {W} x {H} px" + (f", {px:g} µm/px" if px else "")))
    return '<div class="grid">' + "".join(figs) + "</div>"


def section_background(ctx: Inputs) -> str:
    h5 = ctx.need_h5()
    rows = []
    for slide in h5.train_slides + h5.test_slides:
        share = background_share(h5, slide)
        rows.append([slide, h5.split_of(slide), str(len(ctx.table(slide))), f"{share:.1%}"])
    return ("<p>Spots whose centre box is bright, unstained glass (data.check).</p>"
            + html_table(["slide", "split", "spots", "on background"], rows))


def _train_Y(ctx: Inputs) -> dict[str, np.ndarray]:
    slides = ctx.need_h5().train_slides
    if not slides:
        raise Absent(f"{ctx.cfg.h5} has no train slides (no abundances)")
    return {s: ctx.table(s).Y for s in slides}


def section_abundance(ctx: Inputs) -> str:
    fig = plots.fig_abundance(_train_Y(ctx), ctx.h5.cell_types)
    return ctx.figure(fig, "abundance", "abundance distributions",
                      "Each cell type's abundance per train slide (box: quartiles; "
                      "whiskers: 1.5 IQR).")


def section_maps(ctx: Inputs) -> str:
    Ys, types = _train_Y(ctx), list(ctx.h5.cell_types)
    figs = []
    for slide, Y in tqdm(Ys.items(), desc="maps", disable=ctx.cfg.quiet):
        t = ctx.table(slide)
        thumb, extent = ctx.thumb(slide)
        panels = [(c, Y[:, types.index(c)]) for c in ctx.types]
        fig = plots.fig_maps(thumb, extent, t.x, t.y, panels, len(panels), slide)
        figs.append(ctx.figure(fig, f"map_{slide}", f"abundance maps of {slide}"))
    return (f"<p>Abundance of {escape(', '.join(ctx.types))} on the spot grid "
            "(colour scale per panel).</p>" + "".join(figs))


def section_correlation(ctx: Inputs) -> str:
    Y = np.concatenate(list(_train_Y(ctx).values()))
    R = rankdata(Y, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(R, rowvar=False))
    np.fill_diagonal(corr, 1.0)
    fig = plots.fig_correlation(corr, ctx.h5.cell_types)
    return ctx.figure(fig, "correlation", "cell-type correlation",
                      f"Spearman correlation between cell types over {len(Y)} train spots.")


def _embedding_spec(ctx: Inputs, store: zarr.Group) -> FeatureSpec:
    """The first feature part of the best model's recipe, else the store's first backbone."""
    models = (ctx.report or {}).get("models", {})
    for m in ctx.models + sorted(models, key=lambda m: -models[m]["mean"]["spot"]):
        features = models.get(m, {}).get("config", {}).get("recipe", {}).get("features")
        if features and FeatureSpec.parse(features[0]).backbone in store:
            return FeatureSpec.parse(features[0])
    backbones = sorted(store.group_keys())
    if not backbones:
        raise Absent(f"the store {ctx.cfg.store} holds no backbone: run `make embeddings`")
    return FeatureSpec(backbones[0])


def section_pca(ctx: Inputs) -> str:
    h5 = ctx.need_h5()
    if not Path(ctx.cfg.store).exists():
        raise Absent(f"no embeddings store at {ctx.cfg.store}: run `make embeddings`")
    store = zarr.open_group(ctx.cfg.store, mode="r")
    spec = _embedding_spec(ctx, store)
    slides = h5.train_slides + h5.test_slides
    X = {s: read_array(store, ctx.cfg.store, spec, s, len(ctx.table(s))) for s in slides}
    A = np.concatenate(list(X.values()))
    if len(A) < 3 or A.shape[1] < 2:
        raise Absent(f"too few spots or dimensions for a PCA: {A.shape}")
    pca = PCA(n_components=2, svd_solver="randomized", random_state=0).fit(A)
    pcs = {s: pca.transform(X[s]) for s in slides}
    fig = plots.fig_pca(pcs, set(h5.test_slides), pca.explained_variance_ratio_,
                        f"{spec} ({A.shape[1]} dims, {len(A)} spots)")
    return ctx.figure(fig, "pca", "PCA of the embeddings",
                      "Slides that separate here differ in staining or scanning (batch "
                      "effects) as much as in tissue.")


# ---------------------------------------------------------------- result sections

def section_loso(ctx: Inputs) -> str:
    models = ctx.need_report()["models"]
    slides = sorted({s for m in models.values() for s in m["per_slide"]})
    rows = []
    for name in sorted(models, key=lambda k: -models[k]["mean"]["spot"]):
        m = models[name]
        cells = [f"{m['per_slide'][s]['spot']:.3f} / {m['per_slide'][s]['type']:.3f}"
                 if s in m["per_slide"] else "" for s in slides]
        rows.append([name, *cells, f"<b>{m['mean']['spot']:.3f}</b>",
                     f"<b>{m['mean']['type']:.3f}</b>", f"{m.get('seconds', 0):.0f}"])
    return ("<p>Leave-one-slide-out Spearman; each cell: per spot (across cell types, the "
            "challenge's metric) / per cell type (across spots). The constant profile is "
            "the baseline.</p>"
            + html_table(["model", *slides, "mean spot", "mean type", "s"], rows, raw=True))


def section_per_type(ctx: Inputs) -> str:
    models = ctx.need_report()["models"]
    order = sorted(models, key=lambda k: -models[k]["mean"]["spot"])
    types = list(models[order[0]]["per_type"])
    fig = plots.fig_per_type({m: models[m]["per_type"] for m in order}, types)
    return ctx.figure(fig, "per_type", "per-type scores")


def _oof_figure(ctx: Inputs, model: str, slide: str, P: np.ndarray) -> str:
    t, types = ctx.table(slide), list(ctx.h5.cell_types)
    cols = [types.index(c) for c in ctx.types]
    rho = spearman_per_type(t.Y[:, cols], P)
    panels = [(f"{c}\ntrue", t.Y[:, j]) for c, j in zip(ctx.types, cols, strict=True)]
    panels += [(f"predicted (rho {r:.2f})", P[:, k]) for k, r in enumerate(rho)]
    score = ctx.report["models"][model]["per_slide"].get(slide, {})
    title = f"{model}, {slide} held out" + (
        f": per spot {score['spot']:.3f}, per type {score['type']:.3f}" if score else "")
    thumb, extent = ctx.thumb(slide)
    fig = plots.fig_maps(thumb, extent, t.x, t.y, panels, len(ctx.types), title)
    return ctx.figure(fig, f"oof_{model}_{slide}", f"true vs predicted on {slide}")


def _predicted(ctx: Inputs, model: str, which: str) -> dict[str, np.ndarray]:
    """slide -> float (n_spots, n_map_types) predictions in spot-table row order."""
    df = read_predictions(ctx.out, model, which)
    out = {}
    for slide, part in df.groupby("slide", sort=False):
        n = len(ctx.table(slide))
        if sorted(part["row"]) != list(range(n)):
            raise DataError(Problem(str(ctx.out / "predictions" / model / f"{which}.csv"),
                                    slide, "row", f"rows 0..{n - 1}", f"{len(part)} rows",
                                    "rerun `make regress`"))
        out[str(slide)] = part.sort_values("row")[ctx.types].to_numpy(float)
    return out


def section_oof(ctx: Inputs) -> str:
    ctx.need_h5()
    figs = []
    for model in ctx.need_models():
        for slide, P in _predicted(ctx, model, "oof").items():
            figs.append(_oof_figure(ctx, model, slide, P))
    return ("<p>Top row: true abundance; bottom row: out-of-fold prediction (on the "
            "model's target scale), each with its own colour scale.</p>" + "".join(figs))


def section_test(ctx: Inputs) -> str:
    ctx.need_h5()
    figs = []
    for model in ctx.need_models():
        for slide, P in _predicted(ctx, model, "test").items():
            t = ctx.table(slide)
            thumb, extent = ctx.thumb(slide)
            panels = [(c, P[:, k]) for k, c in enumerate(ctx.types)]
            fig = plots.fig_maps(thumb, extent, t.x, t.y, panels, len(panels),
                                 f"{model}, test slide {slide} (fit on all train slides)")
            figs.append(ctx.figure(fig, f"test_{model}_{slide}", f"predictions on {slide}"))
    if not figs:
        raise Absent("the predictions hold no test slide")
    return "".join(figs)


def section_ablation(ctx: Inputs) -> str:
    ablation = ctx.need_report().get("ablation")
    if not ablation:
        raise Absent(f"{ctx.out / 'report.json'} has no ablation: run `make tune`")
    lines = [ln.strip().strip("|").split("|") for ln in ablation["table"].splitlines()
             if ln.strip().startswith("|") and not set(ln.strip()) <= set("|-: ")]
    cells = [[c.strip() for c in ln] for ln in lines]
    return (f"<p>Ridge, LOSO; chosen recipe: <b>{escape(str(ablation.get('chosen')))}</b>. "
            "Cells: per spot / per type.</p>" + html_table(cells[0], cells[1:]))


SECTIONS: tuple[tuple[str, str, str, Callable[[Inputs], str]], ...] = (
    ("Data", "slides", "Slides and spots", section_slides),
    ("Data", "background", "Spots on background", section_background),
    ("Data", "abundance", "Abundance per cell type and slide", section_abundance),
    ("Data", "maps", "Spatial maps", section_maps),
    ("Data", "correlation", "Correlation between cell types", section_correlation),
    ("Data", "pca", "PCA of the embeddings", section_pca),
    ("Results", "loso", "LOSO table", section_loso),
    ("Results", "per-type", "Per-cell-type scores", section_per_type),
    ("Results", "oof", "True vs predicted, held-out slides", section_oof),
    ("Results", "test", "Predicted maps, test slides", section_test),
    ("Results", "ablation", "Ablation", section_ablation),
)


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw``."""
    def cell(c: str) -> str:
        return str(c) if raw else escape(str(c))
    head = "".join(f"<th>{escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
