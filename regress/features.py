"""Stage 2's inputs: feature parts read from the embeddings store (:mod:`data.store`) and
the slides' targets from the HDF5 file, gathered per slide."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from data.h5 import CanonicalH5
from data.store import FeatureSpec, open_store, read_array


@dataclass
class SlideSet:
    """Everything stage 2 needs, per slide.

    Attributes:
        parts: feature spec (str) -> slide -> float32 (n_spots, dim) as stored.
        X: slide -> float (n_spots, n_features): the model input (see :func:`assemble`).
        Y: train slide -> float (n_spots, n_types) abundances.
        xy: slide -> float (n_spots, 2) pixel (x, y).
        spot_ids: slide -> (n_spots,) str.
        pixel_um: slide -> µm per pixel, or None where the file does not record it.
    """

    cell_types: tuple[str, ...]
    train: list[str]
    test: list[str]
    parts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    X: dict[str, np.ndarray] = field(default_factory=dict)
    Y: dict[str, np.ndarray] = field(default_factory=dict)
    xy: dict[str, np.ndarray] = field(default_factory=dict)
    spot_ids: dict[str, np.ndarray] = field(default_factory=dict)
    pixel_um: dict[str, float | None] = field(default_factory=dict)

    @property
    def slides(self) -> list[str]:
        return self.train + self.test


def assemble(data: SlideSet, specs: list[FeatureSpec]) -> SlideSet:
    """A copy of ``data`` whose X concatenates the named parts (shared arrays otherwise)."""
    missing = [str(s) for s in specs if str(s) not in data.parts]
    if missing:
        raise ValueError(f"feature parts not loaded: {missing}")
    X = {sl: np.concatenate([data.parts[str(s)][sl] for s in specs], axis=1)
         for sl in data.slides}
    return replace(data, X=X)


def load_slides(h5_path: str | Path, store_path: str | Path,
                specs: list[FeatureSpec]) -> SlideSet:
    """Targets from the HDF5 file and every named feature part; X = their concatenation."""
    root = str(store_path)
    store = open_store(root)
    with CanonicalH5(h5_path) as h5:
        data = SlideSet(h5.cell_types, h5.train_slides, h5.test_slides)
        for slide in data.slides:
            table = h5.spots(slide)
            if table.Y is not None:
                data.Y[slide] = table.Y
            data.xy[slide] = np.stack([table.x, table.y], axis=1)
            data.spot_ids[slide] = table.spot_ids
            data.pixel_um[slide] = h5.pixel_size_um(slide)
            for spec in specs:
                data.parts.setdefault(str(spec), {})[slide] = read_array(
                    store, root, spec, slide, len(table))
    return assemble(data, specs)
