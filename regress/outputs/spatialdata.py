"""Predictions as a SpatialData store (``--spatialdata``; the optional ``spatial`` extra).

One store holds, per slide ``S`` (names made valid for SpatialData by :func:`element_name`):

    images/S_image     uint8 (c, y, x) multiscale image, read lazily from the HDF5 file
    shapes/S_spots     the spots as circles (x, y) with a ``radius`` column, in
                       full-resolution pixels
    tables/predictions AnnData (n_spots, n_types) of every slide, annotating the circles
                       (obs ``region`` = S_spots, ``instance_id`` = the spot's row)

Each slide has its own coordinate system ``S`` (identity: full-resolution pixels), so
slides are drawn apart. spatialdata is imported inside the functions: hespot works
without the extra, and asking for the store without it is a :class:`ConfigError`.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data.atomic import atomic_dir
from data.errors import ConfigError
from data.h5 import CanonicalH5
from regress.outputs.anndata import CHUNK_CACHE_MB, build_anndata, check_frame, spot_diameter_px

TABLE = "predictions"
IMAGE_CHUNK = 1024        # full-resolution pixels per dask block side (2 x the HDF5 chunk)
PYRAMID_MIN_PX = 256      # the smallest pyramid level keeps its longest side above this
WRITE_THREADS = 4         # dask threads encoding blocks: bounds the blocks held at once


def require_spatialdata() -> None:
    """ConfigError saying how to install the extra unless spatialdata can be imported."""
    try:
        import spatialdata  # noqa: F401
    except ImportError as exc:
        raise ConfigError("--spatialdata needs the optional package spatialdata (not "
                          f"installed: {exc}); install it with: pip install 'hespot[spatial]'"
                          ) from exc


def element_name(slide: str) -> str:
    """``slide`` as a valid SpatialData name: characters other than letters, digits,
    ``_ - .`` become ``_``; a name starting with ``_`` or ``.`` gets an ``s`` in front."""
    name = "".join(c if c.isalnum() or c in "_-." else "_" for c in str(slide))
    return f"s{name}" if not name or name[0] in "_." else name


def pyramid_factors(shape: Sequence[int]) -> list[int]:
    """Downscale factors (2 each) until the longest side would drop below
    :data:`PYRAMID_MIN_PX`; at least one, so the image is always multiscale."""
    longest = max(int(shape[0]), int(shape[1]), 1)
    return [2] * max(1, int(math.floor(math.log2(max(1, longest // PYRAMID_MIN_PX)))))


class _Windows:
    """Array-like (H, W, 3) view of a slide for ``dask.array.from_array``: each block is
    one :meth:`CanonicalH5.read_window` (serialised: the chunk cache is not thread-safe)."""

    def __init__(self, h5: CanonicalH5, slide: str) -> None:
        self.h5, self.slide = h5, slide
        self.shape = (*h5.image_shape(slide)[:2], 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self._lock = threading.Lock()

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        ys, xs, cs = (k.indices(n) for k, n in zip(key, self.shape, strict=True))
        with self._lock:
            window = self.h5.read_window(self.slide, ys[0], ys[1], xs[0], xs[1])
        return window[::ys[2], ::xs[2], slice(*cs)]


def lazy_image(h5: CanonicalH5, slide: str) -> Any:
    """dask uint8 (3, H, W) of the slide's image, in :data:`IMAGE_CHUNK` blocks; nothing
    is read until a block is computed (``h5`` must stay open until then)."""
    import dask.array as da

    reader = _Windows(h5, slide)
    return da.from_array(reader, chunks=(IMAGE_CHUNK, IMAGE_CHUNK, 3), lock=False,
                         meta=np.empty((0, 0, 0), np.uint8),
                         name=f"hespot-image-{h5.path.name}-{slide}").transpose(2, 0, 1)


def slide_elements(h5: CanonicalH5, slide: str, frame: pd.DataFrame) -> tuple[Any, Any]:
    """The multiscale image (DataTree) and the spot circles (GeoDataFrame, index = the
    spots' rows) of one slide, whose rows of the prediction frame are ``frame``."""
    from spatialdata.models import Image2DModel, ShapesModel
    from spatialdata.transformations import Identity

    to_pixels = {element_name(slide): Identity()}
    image = lazy_image(h5, slide)
    x, y = frame["x"].to_numpy(float), frame["y"].to_numpy(float)
    radius = spot_diameter_px(x, y, h5.pixel_size_um(slide)) / 2
    circles = ShapesModel.parse(np.stack([x, y], axis=1), geometry=0,
                                radius=np.full(len(x), radius),
                                index=frame["row"].to_numpy(np.int64),
                                transformations=to_pixels)
    multiscale = Image2DModel.parse(image, dims=("c", "y", "x"), c_coords=["r", "g", "b"],
                                    scale_factors=pyramid_factors(image.shape[1:]),
                                    transformations=to_pixels)
    return multiscale, circles


def predictions_table(frame: pd.DataFrame, values: np.ndarray,
                      cell_types: Sequence[str]) -> Any:
    """The table: AnnData (n_spots, n_types) with obs ``region`` (the slide's circles) and
    ``instance_id`` (the spot's row, the circles' index)."""
    from spatialdata.models import TableModel

    adata = build_anndata(frame, values, cell_types)
    regions = [f"{element_name(s)}_spots" for s in frame["slide"].astype(str)]
    adata.obs["region"] = pd.Categorical(regions)
    adata.obs["instance_id"] = frame["row"].to_numpy(np.int64)
    return TableModel.parse(adata, region=sorted(set(regions)), region_key="region",
                            instance_key="instance_id")


def write_spatialdata(path: str | Path, frame: pd.DataFrame, values: np.ndarray,
                      cell_types: Sequence[str], h5_path: str | Path) -> Path:
    """Write the predictions as a SpatialData ``.zarr`` store (the module docstring),
    atomically: built in a temporary folder beside ``path``, then renamed over it.

    Args:
        path: the store to write (e.g. ``OUT/predictions.zarr``).
        frame: one row per spot with columns slide, row, spot_id, x, y (and maybe ID).
        values: float (n_spots, n_types) predictions in frame order.
        cell_types: the n_types column names.
        h5_path: the canonical HDF5 file holding the slides' images (read block by block).

    Raises:
        ConfigError: spatialdata is not installed (``pip install 'hespot[spatial]'``), or
            two slides map to the same element name.
        ValueError: missing frame columns or arrays of the wrong shape.
        DataError: a slide of the frame is not in ``h5_path``.
    """
    require_spatialdata()
    import dask
    from spatialdata import SpatialData

    check_frame(frame, values, cell_types)
    slides = list(dict.fromkeys(frame["slide"].astype(str)))
    names = [element_name(s) for s in slides]
    if len(set(names)) < len(names):
        raise ConfigError(f"slides {slides} give clashing SpatialData names {names}; "
                          "rename the slides so that they differ in letters or digits")
    table = predictions_table(frame, values, cell_types)
    with CanonicalH5(h5_path, chunk_cache_mb=CHUNK_CACHE_MB) as h5, atomic_dir(path) as tmp:
        images, shapes = {}, {}
        for slide in slides:
            rows = frame[frame["slide"].astype(str) == slide]
            name = element_name(slide)
            images[f"{name}_image"], shapes[f"{name}_spots"] = slide_elements(h5, slide, rows)
        with warnings.catch_warnings(), dask.config.set(scheduler="threads",
                                                        num_workers=WRITE_THREADS):
            # anndata's notice about zarr's coming default
            warnings.filterwarnings("ignore", "zarr v3 autosharding", UserWarning)
            SpatialData(images=images, shapes=shapes, tables={TABLE: table}).write(tmp)
    return Path(path)
