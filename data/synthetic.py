"""Tiny synthetic slides for tests, whose abundances depend on image content.

Each spot gets a random composition over ``n_types`` cell types; every pixel is painted
in the colour and stripe texture of its nearest spot's composition (a Voronoi mosaic),
plus noise. A model that reads colour or texture from a patch centred on a spot can
therefore predict its abundances.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
