"""Tiny synthetic slides for tests, whose abundances depend on image content.

Each spot gets a random composition over ``n_types`` cell types; every pixel is painted
in the colour and stripe texture of its nearest spot's composition (a Voronoi mosaic),
plus noise. A model that reads colour or texture from a patch centred on a spot can
therefore predict its abundances.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from data.h5 import SlideRecord, write_h5
from data.spots import make_spot_table


@dataclass(frozen=True)
class SyntheticConfig:
    n_train: int = 3
    n_test: int = 1
    size: int = 512
    grid: int = 7
    n_types: int = 5
    pixel_size_um: float | None = 1.0
    slide_prefix: str = "S_"
    type_prefix: str = "C"
    test_field: str | None = None  # e.g. "Test_Set", as in the challenge's test table
    seed: int = 0


def _palette(n_types: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    colours = rng.uniform(40, 230, size=(n_types, 3))
    freqs = rng.uniform(0.05, 0.6, size=n_types)
    return colours, freqs


def make_slide(rng: np.random.Generator, cfg: SyntheticConfig, colours: np.ndarray,
               freqs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One slide: image uint8 (size, size, 3), x (n,), y (n,), Y float (n, n_types)."""
    step = cfg.size / cfg.grid
    gx, gy = np.meshgrid(np.arange(cfg.grid), np.arange(cfg.grid))
    x = (gx.ravel() + 0.5) * step + rng.uniform(-2, 2, gx.size)
    y = (gy.ravel() + 0.5) * step + rng.uniform(-2, 2, gy.size)
    Y = rng.dirichlet(np.full(cfg.n_types, 0.4), size=len(x))
    rows, cols = np.mgrid[0:cfg.size, 0:cfg.size]
    nearest = np.argmin((rows[..., None] - y) ** 2 + (cols[..., None] - x) ** 2, axis=-1)
    colour = Y @ colours                                           # (n, 3)
    stripes = np.sin(rows[..., None] * freqs + cols[..., None] * freqs * 0.5)  # (H, W, T)
    texture = (stripes * Y[nearest]).sum(-1) * 40                  # (H, W)
    image = colour[nearest] + texture[..., None] + rng.normal(0, 8, (cfg.size, cfg.size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), x, y, Y


def write_synthetic(path: str | Path, cfg: SyntheticConfig | None = None) -> Path:
    """Write a canonical file of ``n_train`` train and ``n_test`` test synthetic slides.

    Slide names are ``<prefix>1``.. in order (train first); cell types ``C1``..``Cn``.
    """
    cfg = cfg or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    colours, freqs = _palette(cfg.n_types, rng)
    types = [f"{cfg.type_prefix}{i + 1}" for i in range(cfg.n_types)]
    records = []
    for i in range(cfg.n_train + cfg.n_test):
        name = f"{cfg.slide_prefix}{i + 1}"
        image, x, y, Y = make_slide(rng, cfg, colours, freqs)
        if i < cfg.n_train:
            table = make_spot_table(x, y, Y, types)
            records.append(SlideRecord(name, "Train", table, image, cfg.pixel_size_um,
                                       "synthetic"))
        else:
            extra = {}
            if cfg.test_field:
                extra[cfg.test_field] = (np.arange(len(x)) % 2 + 1).astype(np.int64)
            table = make_spot_table(x, y, extra=extra)
            records.append(SlideRecord(name, "Test", table, image, cfg.pixel_size_um,
                                       "synthetic", extra_fields=tuple(extra)))
    return write_h5(path, records)


def true_test_abundances(cfg: SyntheticConfig | None = None) -> dict[str, np.ndarray]:
    """The withheld abundances of the test slides (regenerated from the seed), for tests."""
    cfg = cfg or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    colours, freqs = _palette(cfg.n_types, rng)
    out = {}
    for i in range(cfg.n_train + cfg.n_test):
        _, _, _, Y = make_slide(rng, cfg, colours, freqs)
        if i >= cfg.n_train:
            out[f"{cfg.slide_prefix}{i + 1}"] = Y
    return out


def write_many_spots(path: str | Path, n_test: int = 1_000_000, n_train: int = 300_000,
                     n_types: int = 4, n_extra: int = 10, side: int = 1000,
                     nan_test_row: int | None = None,
                     nan_train_row: int | None = None) -> Path:
    """A canonical file with huge spot tables on small plain images, for checks that must
    stream tables (tests, and timing ``hespot check`` / preflight on 10^6 spots).

    Train slide ``S1``: ``n_train`` spots with ``n_types`` cell types ``C1``.. (0 .. 1 each,
    rows summing to 1); test slide ``T1``: ``n_test`` spots with ``Test_Set`` and
    ``n_extra`` more float fields (``f0``..). Spots lie on a grid over ``side`` x ``side``
    images, each at its own position. ``nan_test_row`` / ``nan_train_row``: make that
    row's ``x`` (test) or ``C2`` (train) NaN.
    """
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        image = np.full((side, side, 3), 200, np.uint8)
        f["images/Train/S1"], f["images/Test/T1"] = image, image
        k = np.arange(n_train)
        step = max(1, side * side // max(1, n_train))
        train = np.zeros(n_train, [("x", float), ("y", float)] +
                         [(f"C{i + 1}", float) for i in range(n_types)])
        train["x"], train["y"] = (k * step) % side + 0.5, (k * step) // side + 0.5
        Y = rng.dirichlet(np.ones(n_types), size=n_train)
        for i in range(n_types):
            train[f"C{i + 1}"] = Y[:, i]
        k = np.arange(n_test)
        step = max(1, side * side // max(1, n_test))
        extra = ["Test_Set"] + [f"f{i}" for i in range(n_extra)]
        test = np.zeros(n_test, [("x", float), ("y", float), ("Test_Set", np.int64)] +
                        [(c, float) for c in extra[1:]])
        test["x"], test["y"] = (k * step) % side + 0.5, (k * step) // side + 0.5
        test["Test_Set"] = k % 2 + 1
        if nan_test_row is not None:
            test["x"][nan_test_row] = np.nan
        if nan_train_row is not None:
            train["C2"][nan_train_row] = np.nan
        f["spots/Train/S1"], f["spots/Test/T1"] = train, test
        f["spots/Test/T1"].attrs["extra_fields"] = extra
    return Path(path)
