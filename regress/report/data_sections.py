"""The data sections of the report page: slides, background, abundance, spatial maps,
cell-type correlations and a PCA of the embeddings. Each reads its inputs from
:class:`Inputs` and returns its HTML, or raises :class:`Absent` naming what is missing."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from pathlib import Path

import numpy as np
from scipy.stats import rankdata
from sklearn.decomposition import PCA
from tqdm import tqdm

from data.check import off_tissue_share
from data.store import FeatureSpec, backbones, open_store, read_array
from regress.report import plots
from regress.report.inputs import Absent, Inputs, section
from regress.results import rank_models
from regress.tables import Table, to_html


@section("Data", "slides", "Slides and spots")
def section_slides(ctx: Inputs) -> str:
    """A thumbnail of every slide with its spots and the outline of its tissue."""
    h5 = ctx.need_h5()
    figs = []
    for split in ("Train", "Test"):
        for slide in tqdm(h5.slides(split), desc=f"thumbnails {split}", disable=ctx.cfg.quiet):
            t = ctx.table(slide)
            thumb, extent = ctx.thumb(slide)
            H, W = h5.image_shape(slide)[:2]
            px = h5.pixel_size_um(slide)
            caption = f"{slide}: {W} x {H} px" + (f", {px:g} µm/px" if px else "")
            mask = ctx.tissue(slide)
            tissue = None
            if mask is not None:
                tissue = (mask.mask, mask.extent)
                caption += (f"; orange outline: the tissue, {mask.share:.0%} of the slide "
                            f"({mask.rule})")
            if h5.tissue(slide) is not None:
                caption += "; grid spots laid over the tissue"
            if h5.image_ref(slide) is not None:
                caption += "; image read in place"
            fig = plots.fig_overlay(thumb, extent, t.x, t.y, f"{slide} ({split}, {len(t)} spots)",
                                    tissue)
            figs.append(ctx.figure(fig, f"slide_{slide}", f"thumbnail of {slide}", caption))
    return '<div class="grid">' + "".join(figs) + "</div>"


@section("Data", "background", "Spots on background")
def section_background(ctx: Inputs) -> str:
    """A table: the share of each slide's spots off the tissue (as data.check reports it)."""
    h5 = ctx.need_h5()
    rows = []
    for slide in h5.train_slides + h5.test_slides:
        t = ctx.table(slide)
        share = off_tissue_share(ctx.tissue(slide), t.x, t.y)
        rows.append([slide, h5.split_of(slide), str(len(t)), f"{share:.1%}"])
    table = Table.of(["slide", "split", "spots", "on background"], rows)
    return ("<p>Spots whose centre is off the tissue (the orange outline of the slides' "
            "thumbnails: data.wsi.tissue's mask, as data.check reports it).</p>"
            + to_html(table))


def _train_Y(ctx: Inputs) -> dict[str, np.ndarray]:
    """train slide -> float (n_spots, n_types) abundances, or Absent."""
    slides = ctx.need_h5().train_slides
    if not slides:
        raise Absent(f"{ctx.cfg.h5} has no train slides (no abundances)")
    return {s: ctx.table(s).Y for s in slides}


@section("Data", "abundance", "Abundance per cell type and slide")
def section_abundance(ctx: Inputs) -> str:
    """Box plots of each cell type's abundance per train slide."""
    fig = plots.fig_abundance(_train_Y(ctx), ctx.h5.cell_types)
    return ctx.figure(fig, "abundance", "abundance distributions",
                      "Each cell type's abundance per train slide (box: quartiles; "
                      "whiskers: 1.5 IQR).")


@section("Data", "maps", "Spatial maps")
def section_maps(ctx: Inputs) -> str:
    """Spatial maps of the mapped cell types on every train slide."""
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


@section("Data", "correlation", "Correlation between cell types")
def section_correlation(ctx: Inputs) -> str:
    """A heatmap of the Spearman correlation between cell types over the train spots."""
    Y = np.concatenate(list(_train_Y(ctx).values()))
    R = rankdata(Y, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = np.nan_to_num(np.corrcoef(R, rowvar=False))
    np.fill_diagonal(corr, 1.0)
    fig = plots.fig_correlation(corr, ctx.h5.cell_types)
    return ctx.figure(fig, "correlation", "cell-type correlation",
                      f"Spearman correlation between cell types over {len(Y)} train spots.")


def _embedding_spec(ctx: Inputs, held: Sequence[str]) -> FeatureSpec:
    """The first feature part of the best model's recipe whose backbone is among ``held``
    (the store's backbones), else the store's first backbone."""
    report = ctx.report or {}
    models = report.get("models", {})
    for m in ctx.models + rank_models(report):
        features = models.get(m, {}).get("config", {}).get("recipe", {}).get("features")
        if features and FeatureSpec.parse(features[0]).backbone in held:
            return FeatureSpec.parse(features[0])
    if not held:
        raise Absent(f"the store {ctx.cfg.store} holds no backbone: run `make embeddings`")
    return FeatureSpec(held[0])


@section("Data", "pca", "PCA of the embeddings")
def section_pca(ctx: Inputs) -> str:
    """PC1 vs PC2 of one backbone's embeddings, coloured by slide."""
    h5 = ctx.need_h5()
    if not Path(ctx.cfg.store).exists():
        raise Absent(f"no embeddings store at {ctx.cfg.store}: run `make embeddings`")
    store = open_store(ctx.cfg.store)
    spec = _embedding_spec(ctx, backbones(store))
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
