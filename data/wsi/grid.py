"""Spot grids laid over a slide that has no spot table: Visium geometry (55 µm spots,
100 µm centre to centre, hexagonal) or a square grid of a given pitch.

Grid coordinates follow Visium's convention: ``array_row`` counts rows, ``array_col``
counts half-pitches (even on even rows, odd on odd rows for the hexagonal grid).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data.errors import ConfigError

VISIUM_PITCH_UM = 100.0
#: a Visium spot's diameter over its pitch (55 / 100); square grids use the same ratio
SPOT_RATIO = 0.55


@dataclass(frozen=True)
class GridSpec:
    """``kind`` "visium" (hexagonal) or "square", centre-to-centre ``pitch_um`` and spot
    diameter ``spot_um``."""

    kind: str
    pitch_um: float
    spot_um: float

    @classmethod
    def parse(cls, text: str) -> GridSpec:
        """``visium`` or ``square:<pitch µm>`` (e.g. ``square:50``).

        Raises:
            ConfigError: anything else.
        """
        text = text.strip().lower()
        if text == "visium":
            return cls("visium", VISIUM_PITCH_UM, VISIUM_PITCH_UM * SPOT_RATIO)
        if text.startswith("square:"):
            try:
                pitch = float(text.split(":", 1)[1])
            except ValueError:
                pitch = float("nan")
            if math.isfinite(pitch) and pitch > 0:
                return cls("square", pitch, pitch * SPOT_RATIO)
        raise ConfigError(f"--grid must be visium or square:<pitch in µm> (e.g. square:50), "
                          f"got {text!r}")


@dataclass(frozen=True)
class Grid:
    """Spot centres in level-0 pixels (x column, y row) and their grid coordinates."""

    x: np.ndarray
    y: np.ndarray
    array_row: np.ndarray
    array_col: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, keep: np.ndarray) -> Grid:
        return Grid(self.x[keep], self.y[keep], self.array_row[keep], self.array_col[keep])

    @property
    def spot_ids(self) -> np.ndarray:
        return np.array([f"r{r}_c{c}" for r, c in zip(self.array_row, self.array_col,
                                                      strict=True)])


def lay_grid(shape: tuple[int, int], pixel_size_um: float, spec: GridSpec) -> Grid:
    """Every grid spot whose centre lies inside an (H, W) image of the given pixel size,
    row by row from the top left (first centre half a pitch in from each edge)."""
    h, w = shape
    pitch = spec.pitch_um / pixel_size_um
    dy = pitch * math.sqrt(3) / 2 if spec.kind == "visium" else pitch
    n_rows = max(0, int(math.floor((h - pitch / 2) / dy)) + 1)
    xs, ys, rows, cols = [], [], [], []
    for r in range(n_rows):
        shift = pitch / 2 if spec.kind == "visium" and r % 2 else 0.0
        x = np.arange(pitch / 2 + shift, w, pitch)
        xs.append(x)
        ys.append(np.full(len(x), pitch / 2 + r * dy))
        rows.append(np.full(len(x), r))
        step = 2 if spec.kind == "visium" else 1
        cols.append(np.arange(len(x)) * step + (r % 2 if spec.kind == "visium" else 0))
    def cat(parts: list[np.ndarray], dt: type) -> np.ndarray:
        return np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt)

    return Grid(cat(xs, float), cat(ys, float), cat(rows, np.int64), cat(cols, np.int64))
