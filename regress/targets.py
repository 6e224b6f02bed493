"""Target transforms: ranks scaled to [0, 1] (per spot or per cell type), or raw values."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from data.errors import ConfigError

TARGETS = ("spot_rank", "type_rank", "raw")


def rank_scale(Y: np.ndarray, axis: int = 1) -> np.ndarray:
    """Average-tie ranks along ``axis`` scaled to [0, 1].

    Args:
        Y: float (n_spots, n_types).
        axis: 1 ranks each spot across cell types (the seed's recipe); 0 ranks each cell
            type across spots.

    Returns:
        float64 of Y's shape; a constant line maps to 0.5.
    """
    Y = np.asarray(Y, dtype=float)
    n = Y.shape[axis]
    if n < 2:
        return np.full_like(Y, 0.5)
    return (rankdata(Y, axis=axis, method="average") - 1.0) / (n - 1.0)


def transform_targets(Y: np.ndarray, target: str) -> np.ndarray:
    """(n_spots, n_types) abundances -> the regression target named ``target``."""
    if target == "spot_rank":
        return rank_scale(Y, axis=1)
    if target == "type_rank":
        return rank_scale(Y, axis=0)
    if target == "raw":
        return np.asarray(Y, dtype=float)
    raise ConfigError(f"target must be one of {TARGETS}, got {target!r}")
