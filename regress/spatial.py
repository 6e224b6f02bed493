"""Spatial context within a slide: neighbour means of features, smoothing of predictions,
per-slide centring. Neighbours are always taken within one slide, never across."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from sklearn.base import BaseEstimator, TransformerMixin


def neighbour_index(xy: np.ndarray, k: int) -> np.ndarray:
    """int (n_spots, min(k, n_spots - 1)): the k nearest other spots by pixel distance.

    A slide with fewer than k + 1 spots uses all its other spots; a single spot has none
    (shape (1, 0)).
    """
    n = len(xy)
    kk = min(k, n - 1)
    if kk <= 0:
        return np.zeros((n, 0), dtype=np.int64)
    _, idx = cKDTree(xy).query(xy, k=kk + 1)
    idx = np.asarray(idx).reshape(n, kk + 1)
    # drop each spot itself (normally column 0; robust to duplicate positions, where it
    # may sit further right or be missing): the first kk other entries of every row
    other = idx != np.arange(n)[:, None]
    keep = np.argsort(~other, axis=1, kind="stable")[:, :kk]
    return np.take_along_axis(idx, keep, axis=1).astype(np.int64)


NEIGHBOUR_ROWS = 2048   # spots gathered at a time: (rows, k, d) floats, not (n, k, d)


def neighbour_mean(values: np.ndarray, xy: np.ndarray, k: int) -> np.ndarray:
    """(n_spots, d): mean of each spot's k nearest neighbours' rows (its own row when it
    has no neighbour). Gathered NEIGHBOUR_ROWS spots at a time: a whole slide's (n, k, d)
    gather would hold k copies of its features (200,000 spots x 18 x 2,224 float64: 64 GB);
    each row's mean is the same either way."""
    idx = neighbour_index(xy, k)
    if idx.shape[1] == 0:
        return values.copy()
    values = np.asarray(values)
    out = np.empty((len(idx), *values.shape[1:]),     # the dtype mean() gives
                   dtype=np.float64 if values.dtype.kind in "iub" else values.dtype)
    for start in range(0, len(idx), NEIGHBOUR_ROWS):
        rows = slice(start, start + NEIGHBOUR_ROWS)
        out[rows] = values[idx[rows]].mean(axis=1)
    return out


def _per_slide(fn, X: np.ndarray, xy: np.ndarray, groups: np.ndarray) -> np.ndarray:
    out = np.empty_like(X, dtype=float)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        out[rows] = fn(X[rows], xy[rows])
    return out


class SpatialContext(TransformerMixin, BaseEstimator):
    """Append the mean features of each spot's k nearest spots on the same slide.

    ``transform(X, xy, groups)``: X (n, d), xy (n, 2) pixel positions, groups (n,) slide
    ids -> (n, 2d). Stateless: ``fit`` only records the width.
    """

    def __init__(self, k: int = 6):
        self.k = k

    def fit(self, X, y=None, **params):
        self.n_features_in_ = np.asarray(X).shape[1]
        return self

    def transform(self, X, xy=None, groups=None):
        X = np.asarray(X, dtype=float)
        if xy is None:
            raise ValueError("SpatialContext.transform needs xy (n, 2) spot positions")
        groups = np.zeros(len(X)) if groups is None else np.asarray(groups)
        ctx = _per_slide(lambda v, p: neighbour_mean(v, p, self.k), X, np.asarray(xy), groups)
        return np.concatenate([X, ctx], axis=1)


def smooth_predictions(P: np.ndarray, xy: np.ndarray, k: int, weight: float) -> np.ndarray:
    """(1 - w) * P + w * mean of the k nearest spots' predictions (one slide's spots)."""
    if weight == 0 or k == 0:
        return P
    return (1 - weight) * P + weight * neighbour_mean(P, xy, k)


def center_per_slide(X: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Subtract each slide's mean feature vector (transductive: uses images, not labels)."""
    out = np.asarray(X, dtype=float).copy()
    for g in np.unique(groups):
        rows = groups == g
        out[rows] -= out[rows].mean(axis=0)
    return out
