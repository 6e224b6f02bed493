"""Feature sets from the stage-1 Zarr store, and the slides' targets from the HDF5 file."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import zarr

from data.errors import DataError, Problem
from data.h5 import CanonicalH5


@dataclass(frozen=True)
class FeatureSpec:
    """One array of the store: ``backbone`` and array name (``features``, ``stages``,
    ``features_448px``...). Written ``backbone`` or ``backbone:array`` on the command line."""

    backbone: str
    array: str = "features"

    @classmethod
    def parse(cls, text: str) -> FeatureSpec:
        backbone, _, array = text.partition(":")
        return cls(backbone.strip(), array.strip() or "features")

    def __str__(self) -> str:
        return self.backbone if self.array == "features" else f"{self.backbone}:{self.array}"


@dataclass
class SlideSet:
    """Everything stage 2 needs, per slide.

    Attributes:
        parts: feature spec (str) -> slide -> float32 (n_spots, dim) as stored.
        X: slide -> float (n_spots, n_features): the model input (see :func:`assemble`).
        Y: train slide -> float (n_spots, n_types) abundances.
        xy: slide -> float (n_spots, 2) pixel (x, y).
        spot_ids: slide -> (n_spots,) str.
    """

    cell_types: tuple[str, ...]
    train: list[str]
    test: list[str]
    parts: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    X: dict[str, np.ndarray] = field(default_factory=dict)
    Y: dict[str, np.ndarray] = field(default_factory=dict)
    xy: dict[str, np.ndarray] = field(default_factory=dict)
    spot_ids: dict[str, np.ndarray] = field(default_factory=dict)

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


def open_store(root: str | Path) -> zarr.Group:
    """The stage-1 Zarr store, read-only; DataError when it does not exist."""
    if not Path(root).exists():
        raise DataError(Problem(str(root), "", "", "an embeddings store", "no such folder",
                                "run `make embeddings` first"))
    return zarr.open_group(str(root), mode="r")


def read_array(store: zarr.Group, root: str, spec: FeatureSpec, slide: str,
               n_spots: int | None = None) -> np.ndarray:
    """float32 (n_spots, dim) of one finished (backbone, slide, array); with ``n_spots``
    the row count is checked against the spot table."""
    fix = (f"run `make embeddings` (python -m embed.run --backbones {spec.backbone}"
           f"{' --stages' if spec.array.startswith('stages') else ''}) first")
    key = f"{spec.backbone}/{slide}"
    if key not in store:
        raise DataError(Problem(root, slide, key, f"embeddings of {spec.backbone}",
                                "none stored", fix))
    group = store[key]
    if spec.array not in group:
        have = sorted(k for k in group.array_keys() if k not in ("done", "spot_index"))
        raise DataError(Problem(root, slide, f"{key}/{spec.array}", f"one of {have}",
                                "no such array", fix))
    if not np.all(group["done"][:] == 1):
        raise DataError(Problem(root, slide, key, "a finished slide", "an interrupted run",
                                "run `make embeddings` again: it resumes"))
    X = np.asarray(group[spec.array][:], dtype=np.float32)
    if n_spots is not None and len(X) != n_spots:
        raise DataError(Problem(root, slide, f"{key}/{spec.array}",
                                f"{n_spots} rows (the spot table)", f"{len(X)} rows",
                                "the HDF5 changed since: rerun embeddings with --overwrite"))
    return X


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
            for spec in specs:
                data.parts.setdefault(str(spec), {})[slide] = read_array(
                    store, root, spec, slide, len(table))
    return assemble(data, specs)
