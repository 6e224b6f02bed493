"""90 % intervals for the abundances, calibrated on leave-one-slide-out residuals: split
conformal prediction with the held-out slides as the calibration set, per cell type and
per level of the prediction (Mondrian bins).

For a cell type, the held-out predictions are cut into bins at their 50th, 80th and 90th
percentiles; within a bin, the residuals are scaled by ``s(P) = sqrt(P + c)`` and their
(1 - level)/2 and (1 + level)/2 quantiles, ``lo`` and ``hi``, give the interval
``[P + lo * s(P), P + hi * s(P)]`` (clipped to the targets' range) of any spot whose
prediction falls in that bin. Every held-out slide weighs the same, whatever its number of
spots. Binning keeps the coverage where the prediction is high (where a biologist looks)
close to the level instead of lending it the narrow residuals of the many near-zero
predictions; on the sample it also narrows the intervals.

A residual of a held-out slide is what the model does on a slide it never saw, so the
intervals hold for a new slide as far as it is like the training slides; a slide unlike
all of them may fall outside (the OOD warning, :mod:`regress.ood`, says when).
:func:`nested_coverage` scores that honestly: each held-out slide's coverage uses the
quantiles of the other slides' residuals only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

LEVEL = 0.9
SCALE_C = 0.01            # s(P) = sqrt(P + c): no zero width at a zero prediction
BIN_QUANTILES = (0.5, 0.8, 0.9)


@dataclass(frozen=True)
class Calibration:
    """The intervals of every cell type.

    Attributes:
        edges: float (n_bins - 1, n_types) bin edges on the predicted value.
        lo, hi: float (n_bins, n_types) quantiles of the scaled residuals per bin.
        upper_bound: 1.0 for proportions, else None (no upper clip).
    """

    level: float
    scale_c: float
    edges: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    upper_bound: float | None = 1.0

    def as_dict(self) -> dict:
        """JSON-ready (report.json, model.json)."""
        return {"level": self.level, "scale_c": self.scale_c, "edges": self.edges.tolist(),
                "lo": self.lo.tolist(), "hi": self.hi.tolist(),
                "upper_bound": self.upper_bound}

    @classmethod
    def from_dict(cls, values: Mapping) -> Calibration:
        n_types = len(values["lo"][0])
        edges = np.asarray(values["edges"], float).reshape(-1, n_types)
        bound = values.get("upper_bound")
        return cls(float(values["level"]), float(values["scale_c"]), edges,
                   np.asarray(values["lo"], float), np.asarray(values["hi"], float),
                   None if bound is None else float(bound))


def _scale(P: np.ndarray, c: float) -> np.ndarray:
    return np.sqrt(np.clip(P, 0, None) + c)


def _bins(P: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """int (n_spots, n_types): the bin of each prediction (edges (n_bins - 1, n_types))."""
    return (P[None] > edges[:, None, :]).sum(axis=0)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``values`` (n,) with ``weights`` (n,): the smallest value
    whose cumulative weight reaches q of the total (no interpolation); 0 when empty."""
    if not len(values):
        return 0.0
    order = np.argsort(values, kind="stable")
    cw = np.cumsum(weights[order])
    return float(values[order][min(int((cw < q * cw[-1]).sum()), len(cw) - 1)])


def calibrate(preds: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
              level: float = LEVEL, scale_c: float = SCALE_C,
              upper_bound: float | None = 1.0) -> Calibration:
    """The calibration of held-out predictions ``preds`` (slide -> float (n_spots,
    n_types)) against ``truth`` (same shapes), each slide weighing 1.

    The quantile levels are moved out by split conformal prediction's finite-sample
    correction, (n + 1) / n with n the smallest slide's spot count."""
    slides = list(preds)
    P = np.concatenate([preds[s] for s in slides])
    R = (np.concatenate([truth[s] for s in slides]) - P) / _scale(P, scale_c)
    w = np.concatenate([np.full(len(preds[s]), 1.0 / len(preds[s])) for s in slides])
    n = min(len(preds[s]) for s in slides)
    half = min(1.0, level * (n + 1) / n) / 2
    edges = np.quantile(P, BIN_QUANTILES, axis=0)
    bins = _bins(P, edges)
    shape = (len(BIN_QUANTILES) + 1, P.shape[1])
    lo, hi = np.zeros(shape), np.zeros(shape)
    for b in range(shape[0]):
        for j in range(shape[1]):
            rows = bins[:, j] == b
            lo[b, j] = weighted_quantile(R[rows, j], w[rows], 0.5 - half)
            hi[b, j] = weighted_quantile(R[rows, j], w[rows], 0.5 + half)
    return Calibration(level, scale_c, edges, lo, hi, upper_bound)


def intervals(P: np.ndarray, cal: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) float (n_spots, n_types) around abundances P (n_spots, n_types):
    within [0, upper_bound], and always holding P."""
    P = np.asarray(P, float)
    b, t = _bins(P, cal.edges), np.arange(P.shape[1])
    s = _scale(P, cal.scale_c)
    lower = np.clip(P + cal.lo[b, t] * s, 0.0, None)
    upper = P + cal.hi[b, t] * s
    if cal.upper_bound is not None:
        upper = np.minimum(upper, cal.upper_bound)
    return np.minimum(lower, P), np.maximum(upper, P)


def coverage(lower: np.ndarray, upper: np.ndarray, Y: np.ndarray) -> dict[str, float]:
    """{"coverage": share of (spot, type) cells with lower <= Y <= upper, "width": mean
    upper - lower} of one slide."""
    inside = (Y >= lower) & (Y <= upper)
    return {"coverage": float(inside.mean()), "width": float((upper - lower).mean())}


def nested_coverage(preds: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray],
                    level: float = LEVEL, upper_bound: float | None = 1.0
                    ) -> dict[str, dict[str, float]]:
    """held-out slide -> its coverage and width with quantiles calibrated on the other
    held-out slides' residuals only (what a new slide would get)."""
    out = {}
    for slide in preds:
        rest = {s: p for s, p in preds.items() if s != slide}
        if rest:
            cal = calibrate(rest, truth, level, upper_bound=upper_bound)
            out[slide] = coverage(*intervals(preds[slide], cal), truth[slide])
    return out
