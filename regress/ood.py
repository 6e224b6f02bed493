"""How far a slide's features lie from the training slides': a score per spot and per
slide, and a threshold calibrated on the leave-one-slide-out folds.

The reference (:class:`OODReference`) is fitted on the training spots' stage-1 features
(the recipe's feature parts, without position features): standardised, then a PCA of
``n_components``. A spot's score is the root mean square of two distances, each 1 on
average for the training spots themselves: its Mahalanobis distance within the PCA
subspace (per component) and the norm of what the subspace leaves out (relative to the
training spots' mean). A slide's score is the median of its spots'.

Calibration (:func:`calibrate`): each training slide is scored against a reference
fitted on the other training slides, as a new slide would be. The slide threshold is
the largest of those held-out slide scores times :data:`SLIDE_MARGIN`: a slide is flagged
when it lies clearly further (25 %) from the training slides than any training slide did
when it was held out. The spot
threshold is the 99th percentile of the held-out spots' scores, every slide weighing the
same. :func:`nested_flags` says which held-out slide a threshold calibrated on the other
folds alone would have flagged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from regress.models import centred_svd

N_COMPONENTS = 32
SPOT_QUANTILE = 0.99
SLIDE_MARGIN = 1.25


@dataclass
class OODReference:
    """The training features' summary that spots are scored against.

    Attributes (float64): ``mean``, ``scale`` (n_features,) of the standardisation,
    ``centre`` (n_features,) of the PCA, ``components`` (k, n_features), ``variances``
    (k,), ``residual`` the training spots' mean squared residual norm.
    """

    mean: np.ndarray
    scale: np.ndarray
    centre: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    residual: float

    @classmethod
    def fit(cls, X: np.ndarray, n_components: int = N_COMPONENTS) -> OODReference:
        """The reference of training features X (n_spots, n_features)."""
        X = np.asarray(X, float)
        mean, scale = X.mean(axis=0), X.std(axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        Z = (X - mean) / scale
        centre, _, s, Vt = centred_svd(Z)
        k = max(1, min(n_components, len(s) - 1))
        variances = s[:k] ** 2 / max(len(Z) - 1, 1)
        ref = cls(mean, scale, centre, Vt[:k], np.maximum(variances, 1e-12), 1.0)
        ref.residual = max(float(np.mean(ref._parts(X)[1])), 1e-12)
        return ref

    def _parts(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(squared Mahalanobis distance per component, squared residual norm) per spot."""
        Z = (np.asarray(X, float) - self.mean) / self.scale - self.centre
        T = Z @ self.components.T
        maha = (T ** 2 / self.variances).mean(axis=1)
        resid = ((Z - T @ self.components) ** 2).sum(axis=1)
        return maha, resid

    def score(self, X: np.ndarray) -> np.ndarray:
        """float (n_spots,): each spot's distance from the training features (about 1
        for a training spot)."""
        maha, resid = self._parts(X)
        return np.sqrt((maha + resid / self.residual) / 2)

    def as_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a model folder's ``ood.npz``."""
        return {"mean": self.mean, "scale": self.scale, "centre": self.centre,
                "components": self.components, "variances": self.variances,
                "residual": np.asarray([self.residual])}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> OODReference:
        return cls(*(np.asarray(arrays[k], float) for k in
                     ("mean", "scale", "centre", "components", "variances")),
                   float(np.asarray(arrays["residual"]).ravel()[0]))


def slide_score(spot_scores: np.ndarray) -> float:
    """A slide's score: the median of its spots' (0 for a slide without spots)."""
    return float(np.median(spot_scores)) if len(spot_scores) else 0.0


@dataclass(frozen=True)
class Threshold:
    """``slide``: flag a slide whose score exceeds it; ``spot``: count the spots above."""

    slide: float
    spot: float


def calibrate(held_out: Mapping[str, np.ndarray]) -> Threshold:
    """Thresholds from the held-out spot scores of the LOSO folds (slide -> (n_spots,)):
    the largest held-out slide score times :data:`SLIDE_MARGIN` and the weighted 99th
    percentile of the spots'."""
    slides = [s for s, v in held_out.items() if len(v)]
    values = np.concatenate([held_out[s] for s in slides])
    weights = np.concatenate([np.full(len(held_out[s]), 1 / len(held_out[s])) for s in slides])
    order = np.argsort(values)
    cw = np.cumsum(weights[order])
    spot = float(values[order][min(int((cw < SPOT_QUANTILE * cw[-1]).sum()), len(cw) - 1)])
    return Threshold(SLIDE_MARGIN * max(slide_score(held_out[s]) for s in slides), spot)


def verdict(spot_scores: np.ndarray, threshold: Threshold) -> dict:
    """``uns["hespot"]["slides"][slide]`` of one slide: ``ood_score``, ``ood_threshold``,
    ``ood_flagged`` and ``flagged_spots`` (spots above the spot threshold)."""
    score = slide_score(spot_scores)
    return {"ood_score": score, "ood_threshold": float(threshold.slide),
            "ood_flagged": bool(score > threshold.slide),
            "flagged_spots": int((np.asarray(spot_scores) > threshold.spot).sum())}


def nested_flags(held_out: Mapping[str, np.ndarray]) -> dict[str, dict]:
    """held-out slide -> its verdict against thresholds calibrated on the other folds
    only (would it have been flagged as a new slide?)."""
    out = {}
    for slide, scores in held_out.items():
        rest = {s: v for s, v in held_out.items() if s != slide}
        if rest:
            out[slide] = verdict(scores, calibrate(rest))
    return out


def warning_line(slide: str, result: Mapping) -> str:
    """The one warning line of a flagged slide."""
    return (f"slide {slide} looks unlike the training slides: OOD score "
            f"{result['ood_score']:.2f} > threshold {result['ood_threshold']:.2f} "
            f"({result['flagged_spots']} spots above the spot threshold); its abundances "
            "and intervals may be wrong")
