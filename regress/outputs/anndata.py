"""Predictions as files the scverse tools open: ``predictions.h5ad`` in scanpy's Visium
layout (:func:`write_anndata`), and the pieces the SpatialData store shares with it
(:mod:`regress.outputs.spatialdata`). Torch-free; anndata is imported when a file is written.

The AnnData layout is the one ``scanpy.read_visium`` returns, so ``sc.pl.spatial`` and
``squidpy.pl.spatial_scatter`` draw it::

    X                    float32 (n_spots, n_types) the values (what they are: uns['hespot'])
    var_names            cell types
    obs_names            <slide>_<row>
    obs                  slide, library_id (categorical, = slide), spot_id, x, y [, more]
    obsm['spatial']      float (n_spots, 2): full-resolution pixel (x = column, y = row)
    layers[name]         optional (n_spots, n_types) maps, e.g. 'per_type'
    uns['hespot']        optional: what X and the layers hold (regress.outputs.maps)
    uns['spatial'][slide] = {'images': {'hires': uint8 (h, w, 3)},
                             'scalefactors': {'tissue_hires_scalef', 'spot_diameter_fullres'},
                             'metadata': {'source_file', 'image_shape', ['pixel_size_um']}}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from data.atomic import atomic_path
from data.h5 import CanonicalH5

if TYPE_CHECKING:
    import anndata

VISIUM_SPOT_UM = 55.0     # diameter of a Visium spot
VISIUM_PITCH_UM = 100.0   # centre-to-centre distance of neighbouring Visium spots
HIRES_PX = 2000           # longest side of the 'hires' image, as Space Ranger writes it
CHUNK_CACHE_MB = 16       # decoded HDF5 chunks kept: one band of chunks across a 10k-px slide
FRAME_COLUMNS = ("slide", "row", "spot_id", "x", "y")  # regress.results.META_COLUMNS


def thumbnail(h5: CanonicalH5, slide: str, max_px: int
              ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """Box-averaged thumbnail of a slide's image (:meth:`CanonicalH5.thumbnail`: read band
    by band from a coarse pyramid level where the slide has one, never whole).

    Returns:
        uint8 (h, w, 3) thumbnail, longest side at most ``max_px``, and its extent
        ``(0, w*fx, h*fy, 0)`` in full-resolution pixels, for ``imshow(extent=...)``.
    """
    thumb, (fy, fx) = h5.thumbnail(slide, max_px)
    h, w = thumb.shape[:2]
    return thumb, (0.0, float(w * fx), float(h * fy), 0.0)


def spot_spacing(x: np.ndarray, y: np.ndarray) -> float:
    """Median distance (pixels) from each spot to its nearest neighbour (1.0 if < 2)."""
    if len(x) < 2:
        return 1.0
    d, _ = cKDTree(np.stack([x, y], axis=1)).query(np.stack([x, y], axis=1), k=2)
    return float(np.median(d[:, 1])) or 1.0


def spot_diameter_px(x: np.ndarray, y: np.ndarray, pixel_size_um: float | None) -> float:
    """Spot diameter in full-resolution pixels: 55/100 of the median nearest-neighbour
    spacing of the spots ``x``, ``y`` (float (n_spots,) each). That is Visium's 55 µm spots
    100 µm apart, and the older ST arrays' ~100 µm spots ~200 µm apart (the her2st
    sample); a lone spot is 55 µm at the slide's pixel size when known."""
    if len(x) < 2 and pixel_size_um is not None and pixel_size_um > 0:
        return VISIUM_SPOT_UM / pixel_size_um
    return spot_spacing(x, y) * VISIUM_SPOT_UM / VISIUM_PITCH_UM


def check_frame(frame: pd.DataFrame, values: np.ndarray, cell_types: Sequence[str]) -> None:
    """ValueError unless ``frame`` has the meta columns and ``values`` is
    (len(frame), len(cell_types))."""
    missing = [c for c in FRAME_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"prediction frame lacks columns {missing}; expected "
                         f"{list(FRAME_COLUMNS)} (regress.results.META_COLUMNS)")
    if np.shape(values) != (len(frame), len(cell_types)):
        raise ValueError(f"values of shape {np.shape(values)}; expected (n_spots, n_types) = "
                         f"({len(frame)}, {len(cell_types)})")


def spots_obs(frame: pd.DataFrame) -> pd.DataFrame:
    """obs of the spots: slide, library_id (categorical), spot_id, x, y; index
    ``<slide>_<row>`` (the ``ID`` column when the frame has one)."""
    obs = frame[["slide", "x", "y", "spot_id"]].copy()
    obs["slide"] = obs["slide"].astype(str).astype("category")
    obs["library_id"] = obs["slide"].copy()
    obs["spot_id"] = obs["spot_id"].astype(str)
    ids = frame["ID"] if "ID" in frame else \
        frame["slide"].astype(str) + "_" + frame["row"].astype(str)
    obs.index = pd.Index(ids.astype(str).to_numpy())
    return obs


def slide_spatial(h5: CanonicalH5, slide: str, x: np.ndarray, y: np.ndarray,
                  hires_px: int = HIRES_PX) -> dict[str, Any]:
    """``uns['spatial'][slide]``: the hires thumbnail (read window by window), its scale
    factor (thumbnail px per full-resolution px), the spot diameter and the metadata."""
    thumb, extent = thumbnail(h5, slide, hires_px)
    pixel = h5.pixel_size_um(slide)
    metadata: dict[str, Any] = {"source_file": str(h5.path),
                                "image_shape": np.asarray(h5.image_shape(slide)[:2], np.int64),
                                "coordinates": "full-resolution pixels, x = column, y = row"}
    if pixel is not None:
        metadata["pixel_size_um"] = pixel
    return {"images": {"hires": thumb},
            "scalefactors": {"tissue_hires_scalef": thumb.shape[1] / extent[1],
                             "spot_diameter_fullres": spot_diameter_px(x, y, pixel)},
            "metadata": metadata}


def build_anndata(frame: pd.DataFrame, values: np.ndarray, cell_types: Sequence[str],
                  h5_path: str | Path | None = None,
                  layers: Mapping[str, np.ndarray] | None = None,
                  hires_px: int = HIRES_PX, *, obs: Mapping[str, np.ndarray] | None = None,
                  uns: Mapping[str, Any] | None = None) -> anndata.AnnData:
    """The predictions as an AnnData in scanpy's Visium layout (the module docstring).

    Args:
        frame: one row per spot with columns slide, row, spot_id, x, y (and maybe ID).
        values: float (n_spots, n_types) predictions in frame order.
        cell_types: the n_types column names.
        h5_path: the canonical HDF5 file holding the slides' images; None: no
            ``uns['spatial']`` (scanpy then needs ``img_key=None``).
        layers: name -> float (n_spots, n_types) extra maps (e.g. 'per_type').
        hires_px: longest side of each slide's hires thumbnail.
        obs: name -> (n_spots,) more columns of obs (e.g. 'ood_score').
        uns: stored as ``uns['hespot']`` (what the values are).

    Raises:
        ValueError: missing frame columns or arrays of the wrong shape.
        DataError: a slide of the frame is not in ``h5_path``.
    """
    import anndata as ad

    check_frame(frame, values, cell_types)
    adata = ad.AnnData(X=np.asarray(values, np.float32), obs=spots_obs(frame),
                       var=pd.DataFrame(index=[str(c) for c in cell_types]))
    adata.obsm["spatial"] = frame[["x", "y"]].to_numpy(np.float64)
    for name, layer in (layers or {}).items():
        if np.shape(layer) != adata.shape:
            raise ValueError(f"layer {name!r} of shape {np.shape(layer)}; expected {adata.shape}")
        adata.layers[name] = np.asarray(layer, np.float32)
    for name, column in (obs or {}).items():
        adata.obs[name] = np.asarray(column)
    if uns is not None:
        adata.uns["hespot"] = dict(uns)
    if h5_path is not None:
        spatial = {}
        with CanonicalH5(h5_path, chunk_cache_mb=CHUNK_CACHE_MB) as h5:
            for slide in adata.obs["slide"].cat.categories:
                xy = adata.obsm["spatial"][(adata.obs["slide"] == slide).to_numpy()]
                spatial[str(slide)] = slide_spatial(h5, str(slide), xy[:, 0], xy[:, 1],
                                                    hires_px)
        adata.uns["spatial"] = spatial
    return adata


def write_anndata(path: str | Path, frame: pd.DataFrame, values: np.ndarray,
                  cell_types: Sequence[str], h5_path: str | Path | None = None,
                  layers: Mapping[str, np.ndarray] | None = None, *,
                  hires_px: int = HIRES_PX, obs: Mapping[str, np.ndarray] | None = None,
                  uns: Mapping[str, Any] | None = None) -> Path:
    """Write ``predictions.h5ad`` (scanpy's Visium layout, :func:`build_anndata`) atomically:
    an existing file is replaced only by a complete one. Returns ``path``.

    Args: as :func:`build_anndata`; ``path`` is the .h5ad file to write.
    """
    adata = build_anndata(frame, values, cell_types, h5_path, layers, hires_px, obs=obs,
                          uns=uns)
    with atomic_path(path, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)
    return Path(path)
