"""One prediction for both metrics: the per-spot model's order within every spot, the
per-type model's order (as closely as possible) within every cell type.

Both metrics look only at orders: the per-spot Spearman at the order of the cell types
within a spot (a row), the per-type Spearman at the order of the spots within a cell type
(a column). :func:`combine_orders` alternates two projections, starting from the per-type
model's column ranks: re-order each row's values by the per-spot model's order, then each
column's values by the per-type model's order, and ends on the rows, so the row orders
are exactly the per-spot model's. On the sample's LOSO (out-of-fold predictions of ridge
per-spot and per-type ranks) this keeps per-spot 0.515 and raises per-type from 0.194 to
0.395 (the per-type model alone: 0.406).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

ROUNDS = 10
TIE_BREAK = 1e-9  # keeps the per-spot order strict where two values of a row coincide


def project(M: np.ndarray, key: np.ndarray, axis: int) -> np.ndarray:
    """M's values along ``axis``, each line re-arranged to follow ``key``'s order (tied
    keys share the mean of their values: the line's sorted values at the average rank).

    Args:
        M, key: float (n_spots, n_types).
    """
    values = np.sort(M, axis=axis)
    pos = rankdata(key, axis=axis, method="average") - 1.0
    lo = np.floor(pos).astype(int)
    hi = np.ceil(pos).astype(int)
    v_lo = np.take_along_axis(values, lo, axis)
    v_hi = np.take_along_axis(values, hi, axis)
    return v_lo + (pos - lo) * (v_hi - v_lo)


def combine_orders(per_spot: np.ndarray, per_type: np.ndarray,
                   rounds: int = ROUNDS) -> np.ndarray:
    """float (n_spots, n_types) in [0, 1] of one slide: every row ordered exactly as
    ``per_spot``'s, columns ordered as close to ``per_type``'s as the rows allow.

    Args:
        per_spot: the per-spot model's predictions of one slide (n_spots, n_types).
        per_type: the per-type model's predictions of the same spots (n_spots, n_types).
        rounds: row-then-column projection rounds before the final row projection.
    """
    if per_spot.shape != per_type.shape:
        raise ValueError(f"shapes differ: {per_spot.shape} vs {per_type.shape}")
    n = len(per_type)
    M = (rankdata(per_type, axis=0) - 1.0) / max(n - 1, 1)
    for _ in range(rounds):
        M = project(project(M, per_spot, axis=1), per_type, axis=0)
    M = project(M, per_spot, axis=1)
    # strict where per_spot is strict (a value may repeat within a row), still in [0, 1]
    ranks = rankdata(per_spot, axis=1, method="average")
    margin = TIE_BREAK * M.shape[1]
    return margin + (1 - 2 * margin) * M + TIE_BREAK * (ranks - ranks.mean(axis=1,
                                                                             keepdims=True))


def combine_by_slide(values: np.ndarray, per_type: np.ndarray, slides: np.ndarray
                     ) -> np.ndarray:
    """:func:`combine_orders` slide by slide (orders never cross slides).

    Args:
        values, per_type: float (n_spots, n_types) of all slides' spots.
        slides: (n_spots,) the slide of each row.
    """
    out = np.empty_like(values, dtype=float)
    for slide in dict.fromkeys(slides):
        rows = np.flatnonzero(slides == slide)
        out[rows] = combine_orders(values[rows], per_type[rows])
    return out


def score_oof(frames: list, per_type, truth: dict[str, np.ndarray], cell_types: list[str],
              combine) -> dict:
    """LOSO scores of the submitted combination on the out-of-fold predictions.

    Args:
        frames: each submitted model's oof.csv (pandas DataFrames).
        per_type: the per-type model's oof.csv, or None (no re-ordering).
        truth: held-out slide -> float (n_spots, n_types) abundances.
        combine: ``frames_of_one_slide -> values`` (the single model or the ensemble).

    Returns:
        {"per_slide": {slide: {"spot", "type"}}, "mean": {"spot", "type"}} over the slides
        every frame holds.
    """
    from regress.metrics import spearman_per_spot, spearman_per_type

    parts = [*frames, *([per_type] if per_type is not None else [])]
    slides = sorted(set.intersection(*(set(f["slide"].astype(str)) for f in parts)))
    per_slide = {}
    for slide in slides:
        rows = [f[f["slide"].astype(str) == slide].sort_values("row") for f in parts]
        P = combine(rows[:len(frames)])
        if per_type is not None:
            P = combine_orders(P, rows[-1][cell_types].to_numpy(float))
        per_slide[slide] = {"spot": float(spearman_per_spot(truth[slide], P).mean()),
                            "type": float(spearman_per_type(truth[slide], P).mean())}
    mean = {m: float(np.mean([v[m] for v in per_slide.values()])) if per_slide else 0.0
            for m in ("spot", "type")}
    return {"per_slide": per_slide, "mean": mean}
