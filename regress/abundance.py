"""Abundance models: non-negative predictions on the training targets' scale (proportions
summing to 1 per spot where every training spot's do), beside the rank models.

:class:`AbundanceRidge` is a scikit-learn estimator: ``fit(X, Y, groups)`` on raw
abundances Y (n_spots, n_types) with the spots' slides as ``groups``; ``predict(X)`` takes
one slide's spots at a time (as :func:`regress.loso.fit_predict` and
:func:`regress.recipes.predict_slides` call it), since ``quantile`` reads the slide as a
whole. It fits ridge (:class:`regress.models.RidgeLOSO`, alpha by inner
leave-one-slide-out mean squared error) on a transform of the abundances and maps its
predictions back:

- ``raw``: the proportions themselves, clipped at 0, rows renormalised;
- ``sqrt``: their square roots (the Hellinger embedding of the simplex), squared back;
- ``clr``: centred log-ratios (after a pseudo-count of ``eps`` times each type's training
  mean), mapped back by softmax;
- ``quantile``: each cell type's ranks within its slide; on a new slide, each type's
  predicted ranks are mapped onto that type's training distribution (quantile mapping).

:data:`ABUNDANCE_MODELS` names the candidates (a kind of model, a transform and the spatial
context of the features) that ``hespot regress`` scores by LOSO (mean per-spot
total-variation distance) and chooses among (:mod:`regress.abundance_run`); the last,
``sqrt_mlp``, averages the ridge on square roots with a network
(:mod:`regress.abundance_mlp`), :mod:`regress.abundance_kinds` builds, saves and reloads
each kind.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from data.errors import ConfigError
from regress.models import DEFAULT_ALPHAS, RidgeLOSO

TRANSFORMS = ("raw", "sqrt", "clr", "quantile")
SIMPLEX_TOL = 1e-3          # every training row's sum within this of 1: proportions
N_QUANTILES = 101


@dataclass(frozen=True)
class AbundanceSpec:
    """One candidate abundance model: its kind (:data:`regress.abundance_kinds.KINDS`:
    ``ridge`` on the ``transform``, or ``blend``: that ridge and
    :class:`regress.abundance_mlp.AbundanceMLP` averaged), the spatial context added to the
    recipe's features (neighbour-mean features of the ``context_k`` and ``context_wide``
    nearest spots), and whether the recipe's smoothing of predictions applies."""

    name: str
    transform: str
    context_k: int = 0
    description: str = ""
    kind: str = "ridge"
    context_wide: int = 0
    smooth: bool = True


ABUNDANCE_MODELS: dict[str, AbundanceSpec] = {s.name: s for s in (
    AbundanceSpec("raw", "raw", description="ridge on the proportions, clipped at 0, rows "
                  "renormalised (the issue's probe)"),
    AbundanceSpec("clr", "clr", description="ridge on centred log-ratios, softmax back"),
    AbundanceSpec("quantile", "quantile", description="ridge on each type's ranks within "
                  "its slide, mapped onto the type's training distribution"),
    AbundanceSpec("sqrt", "sqrt", description="ridge on square roots (Hellinger), squared "
                  "back and renormalised"),
    AbundanceSpec("sqrt_context", "sqrt", context_k=6, description="sqrt + the mean "
                  "features of the 6 nearest spots"),
    AbundanceSpec("sqrt_mlp", "sqrt", context_k=6, context_wide=18, kind="blend",
                  smooth=False, description="the mean of sqrt and a small network trained "
                  "on total-variation distance, both with the mean features of the 6 and "
                  "of the 18 nearest spots, unsmoothed"),
)}


def get_abundance_spec(name: str) -> AbundanceSpec:
    try:
        return ABUNDANCE_MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown abundance model {name!r}; known: "
                          f"{', '.join(ABUNDANCE_MODELS)}") from None


def sums_to_one(Y: np.ndarray, tol: float = SIMPLEX_TOL) -> bool:
    """True when every row of Y (n_spots, n_types) is non-negative and sums to 1."""
    Y = np.asarray(Y, float)
    return bool(len(Y)) and bool((Y >= 0).all()) and bool(np.abs(Y.sum(1) - 1).max() <= tol)


def to_scale(P: np.ndarray, simplex: bool, fallback: np.ndarray) -> np.ndarray:
    """Predictions clipped at 0; on the simplex, rows divided by their sums (a row with
    nothing left is the ``fallback`` composition (n_types,)).

    Args:
        P: float (n_spots, n_types).
    """
    P = np.clip(np.asarray(P, float), 0.0, None)
    if not simplex:
        return P
    s = P.sum(axis=1, keepdims=True)
    out = P / np.where(s > 0, s, 1.0)
    out[s[:, 0] <= 0] = fallback
    return out


def ranks_within(Y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each column's ranks within each group, scaled to [0, 1] (average ties; 0.5 for a
    group of one)."""
    R = np.full(np.shape(Y), 0.5)
    for g in np.unique(groups):
        rows = np.flatnonzero(groups == g)
        if len(rows) > 1:
            R[rows] = (rankdata(Y[rows], axis=0) - 1.0) / (len(rows) - 1)
    return R


@dataclass(frozen=True)
class BackTransform:
    """What maps a slide's predictions on the transformed scale back to abundances:
    ``mean`` (n_types,) and ``total`` (mean row sum) of the training abundances, each
    type's training ``quantiles`` (N_QUANTILES, n_types) and whether rows sum to 1."""

    transform: str
    mean: np.ndarray
    total: float
    quantiles: np.ndarray
    simplex: bool

    def __call__(self, T: np.ndarray) -> np.ndarray:
        """float (n_spots, n_types) transformed predictions of one slide -> abundances."""
        T = np.asarray(T, float)
        if self.transform == "sqrt":
            T = np.clip(T, 0, None) ** 2
        elif self.transform == "clr":
            T = np.exp(T - T.max(axis=1, keepdims=True))
            T = T / T.sum(axis=1, keepdims=True) * self.total
        elif self.transform == "quantile":
            R = ranks_within(T, np.zeros(len(T)))
            grid = np.linspace(0, 1, len(self.quantiles))
            T = np.stack([np.interp(R[:, j], grid, self.quantiles[:, j])
                          for j in range(T.shape[1])], axis=1).reshape(T.shape)
        return to_scale(T, self.simplex, self.mean)


class AbundanceRidge(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Ridge on transformed abundances, mapped back to non-negative rows on the training
    scale (the module docstring lists the transforms).

    Args:
        transform: one of :data:`TRANSFORMS`.
        alphas: ridge penalties, chosen by inner leave-one-slide-out mean squared error on
            the transformed targets.
        eps: ``clr``'s pseudo-count, relative to each cell type's training mean.

    Fitted attributes: ``ridge_`` (:class:`regress.models.RidgeLOSO`), ``back_``
    (:class:`BackTransform`), ``alpha_``.
    """

    def __init__(self, transform="sqrt", alphas=DEFAULT_ALPHAS, eps=0.05):
        self.transform = transform
        self.alphas = alphas
        self.eps = eps

    def _targets(self, Y: np.ndarray, groups: np.ndarray) -> np.ndarray:
        if self.transform == "raw":
            return Y
        if self.transform == "sqrt":
            return np.sqrt(np.clip(Y, 0, None))
        if self.transform == "clr":
            L = np.log(np.clip(Y, 0, None) + self.eps * np.maximum(self.back_.mean, 1e-12))
            return L - L.mean(axis=1, keepdims=True)
        return ranks_within(Y, groups)

    def fit(self, X, y, groups=None):
        if self.transform not in TRANSFORMS:
            raise ConfigError(f"abundance transform must be one of {TRANSFORMS}, got "
                              f"{self.transform!r}")
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        Y = np.asarray(y, float).reshape(len(y), -1)
        groups = np.zeros(len(Y)) if groups is None else np.asarray(groups)
        self.back_ = BackTransform(self.transform, Y.mean(axis=0),
                                   float(Y.sum(axis=1).mean()),
                                   np.quantile(Y, np.linspace(0, 1, N_QUANTILES), axis=0),
                                   sums_to_one(Y))
        self.ridge_ = RidgeLOSO(alphas=self.alphas, scoring="mse").fit(
            X, self._targets(Y, groups), groups=groups)
        self.alpha_ = self.ridge_.alpha_
        return self

    def predict(self, X):
        """float (n_spots, n_types) abundances of one slide's spots X (n_spots, n_feat)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return self.back_(self.ridge_.predict(X))


#: the arrays of :func:`export_ridge` (a model folder's npz)
RIDGE_ARRAYS = ("scaler_mean", "scaler_scale", "coef", "intercept", "mean", "total",
                "quantiles", "simplex")


def export_ridge(est: AbundanceRidge) -> dict[str, np.ndarray]:
    """The arrays that reproduce ``est.predict`` (:data:`RIDGE_ARRAYS`; a model folder's
    ``abundance-*.npz``)."""
    r, b = est.ridge_, est.back_
    return {"scaler_mean": r.scaler_.mean_, "scaler_scale": r.scaler_.scale_,
            "coef": r.coef_, "intercept": np.asarray(r.intercept_, float),
            "mean": b.mean, "total": np.asarray([b.total]), "quantiles": b.quantiles,
            "simplex": np.asarray([b.simplex])}


@dataclass
class SavedAbundance:
    """An abundance model rebuilt from ``abundance.npz`` and its transform's name."""

    transform: str
    arrays: dict[str, np.ndarray]

    def predict(self, X: np.ndarray) -> np.ndarray:
        """float (n_spots, n_types) abundances of one slide (as the fitted estimator)."""
        a = self.arrays
        Z = np.array(X, dtype=X.dtype if X.dtype in (np.float32, np.float64) else float)
        Z -= a["scaler_mean"].astype(Z.dtype)   # as StandardScaler: in X's dtype
        Z /= a["scaler_scale"].astype(Z.dtype)
        back = BackTransform(self.transform, a["mean"], float(a["total"][0]), a["quantiles"],
                             bool(a["simplex"][0]))
        return back(Z @ a["coef"] + a["intercept"])
