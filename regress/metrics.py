"""Spearman correlations both ways; a constant row or column scores 0, never NaN."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


def _rowwise_spearman(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """(n,) Spearman of each row of A with the same row of B (average-tie ranks)."""
    ra = rankdata(A, axis=1, method="average")
    rb = rankdata(B, axis=1, method="average")
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    num = (ra * rb).sum(axis=1)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    out = np.zeros(len(A))
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def spearman_per_spot(Y_true: np.ndarray, Y_pred: np.ndarray) -> np.ndarray:
    """float (n_spots,): per spot, Spearman across cell types (the challenge's metric)."""
    Y_true, Y_pred = np.asarray(Y_true, float), np.asarray(Y_pred, float)
    if Y_true.shape != Y_pred.shape:
        raise ValueError(f"shapes differ: {Y_true.shape} vs {Y_pred.shape}")
    return _rowwise_spearman(Y_true, Y_pred)


def spearman_per_type(Y_true: np.ndarray, Y_pred: np.ndarray) -> np.ndarray:
    """float (n_types,): per cell type, Spearman across spots."""
    Y_true, Y_pred = np.asarray(Y_true, float), np.asarray(Y_pred, float)
    if Y_true.shape != Y_pred.shape:
        raise ValueError(f"shapes differ: {Y_true.shape} vs {Y_pred.shape}")
    return _rowwise_spearman(Y_true.T, Y_pred.T)


def score(Y_true: np.ndarray, Y_pred: np.ndarray) -> dict[str, float]:
    """{"spot": mean per-spot Spearman, "type": mean per-type Spearman}."""
    return {"spot": float(spearman_per_spot(Y_true, Y_pred).mean()),
            "type": float(spearman_per_type(Y_true, Y_pred).mean())}


def tv_distance(Y_true: np.ndarray, Y_pred: np.ndarray) -> np.ndarray:
    """float (n_spots,): per spot, the total-variation distance between the predicted and
    true abundances, half their L1 distance (0 = equal; 1 = disjoint proportions)."""
    Y_true, Y_pred = np.asarray(Y_true, float), np.asarray(Y_pred, float)
    if Y_true.shape != Y_pred.shape:
        raise ValueError(f"shapes differ: {Y_true.shape} vs {Y_pred.shape}")
    return 0.5 * np.abs(Y_pred - Y_true).sum(axis=1)


def pearson_per_type(Y_true: np.ndarray, Y_pred: np.ndarray) -> np.ndarray:
    """float (n_types,): per cell type, Pearson across spots; a constant column scores 0."""
    Y_true, Y_pred = np.asarray(Y_true, float), np.asarray(Y_pred, float)
    if Y_true.shape != Y_pred.shape:
        raise ValueError(f"shapes differ: {Y_true.shape} vs {Y_pred.shape}")
    a = Y_true - Y_true.mean(axis=0)
    b = Y_pred - Y_pred.mean(axis=0)
    den = np.sqrt((a * a).sum(axis=0) * (b * b).sum(axis=0))
    out = np.zeros(Y_true.shape[1])
    if not len(Y_true):
        return out
    # constant up to rounding (a column of a tiled mean): no correlation to speak of
    tiny = 1e-9 * np.maximum(np.abs(Y_true).max(axis=0), np.abs(Y_pred).max(axis=0))
    ok = (np.ptp(Y_true, axis=0) > tiny) & (np.ptp(Y_pred, axis=0) > tiny) & (den > 0)
    out[ok] = (a * b).sum(axis=0)[ok] / den[ok]
    return out
