"""The kinds of abundance model a candidate names (:attr:`AbundanceSpec.kind`): how a fresh
one is made, which arrays a model folder keeps of a fitted one (its
``abundance-<name>.npz``) and how ``hespot predict`` rebuilds it from them::

    ridge   AbundanceRidge on the spec's transform      arrays RIDGE_ARRAYS
    blend   the mean of that ridge and AbundanceMLP      arrays "ridge_*", "mlp_*", "weight"

A model folder written before kinds existed has no ``kind`` in model.json: it is a ridge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from regress.abundance import (
    RIDGE_ARRAYS,
    AbundanceRidge,
    AbundanceSpec,
    SavedAbundance,
    export_ridge,
)
from regress.abundance_mlp import ARRAYS as MLP_ARRAYS
from regress.abundance_mlp import AbundanceMLP, SavedMLP

DEFAULT_KIND = "ridge"


class AbundanceBlend(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """``(1 - weight)`` x :class:`AbundanceRidge` on ``transform`` + ``weight`` x
    :class:`AbundanceMLP`, both fitted on the same spots. Rows on the simplex stay on it.

    Fitted attributes: ``ridge_``, ``mlp_``, ``alpha_`` (the ridge's).
    """

    def __init__(self, transform="sqrt", weight=0.5):
        self.transform = transform
        self.weight = weight

    def fit(self, X, y, groups=None):
        """X float (n_spots, n_features); y float (n_spots, n_types); groups: the spots'
        slides (the ridge's penalty is chosen by leaving each out)."""
        self.ridge_ = AbundanceRidge(transform=self.transform).fit(X, y, groups=groups)
        self.mlp_ = AbundanceMLP().fit(X, y)
        self.alpha_ = self.ridge_.alpha_
        return self

    def predict(self, X):
        """float (n_spots, n_types) abundances of one slide's spots X (n_spots, n_feat)."""
        check_is_fitted(self)
        return blend(self.ridge_.predict(X), self.mlp_.predict(X), self.weight)


def blend(A: np.ndarray, B: np.ndarray, weight: float) -> np.ndarray:
    return (1.0 - weight) * A + weight * B


@dataclass
class SavedBlend:
    """An :class:`AbundanceBlend` rebuilt from its arrays."""

    ridge: SavedAbundance
    mlp: SavedMLP
    weight: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        return blend(self.ridge.predict(X), self.mlp.predict(X), self.weight)


def _prefixed(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}_{k}": v for k, v in arrays.items()}


def _part(prefix: str, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k[len(prefix) + 1:]: v for k, v in arrays.items() if k.startswith(prefix + "_")}


def _export_blend(est: AbundanceBlend) -> dict[str, np.ndarray]:
    return {**_prefixed("ridge", export_ridge(est.ridge_)),
            **_prefixed("mlp", est.mlp_.export()), "weight": np.asarray([est.weight])}


def _load_blend(transform: str, arrays: dict[str, np.ndarray]) -> SavedBlend:
    return SavedBlend(SavedAbundance(transform, _part("ridge", arrays)),
                      SavedMLP(_part("mlp", arrays)), float(arrays["weight"][0]))


@dataclass(frozen=True)
class Kind:
    """How one kind of abundance model is made, saved and rebuilt."""

    make: Callable[[AbundanceSpec], BaseEstimator]
    export: Callable[[BaseEstimator], dict[str, np.ndarray]]
    load: Callable[[str, dict[str, np.ndarray]], object]   # (transform, arrays) -> .predict
    arrays: tuple[str, ...]


KINDS: dict[str, Kind] = {
    "ridge": Kind(lambda spec: AbundanceRidge(transform=spec.transform), export_ridge,
                  SavedAbundance, RIDGE_ARRAYS),
    "blend": Kind(lambda spec: AbundanceBlend(transform=spec.transform), _export_blend,
                  _load_blend, ("weight", *(f"ridge_{k}" for k in RIDGE_ARRAYS),
                                *(f"mlp_{k}" for k in MLP_ARRAYS))),
}


def make_abundance_model(spec: AbundanceSpec) -> BaseEstimator:
    """A fresh estimator of a candidate."""
    return KINDS[spec.kind].make(spec)
