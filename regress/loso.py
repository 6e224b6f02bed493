"""Leave-one-slide-out: one loop serves every model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sklearn.base import BaseEstimator

from regress.features import SlideSet
from regress.metrics import spearman_per_spot, spearman_per_type
from regress.targets import transform_targets


@dataclass
class LosoResult:
    """Out-of-fold and test predictions with their scores.

    Attributes:
        oof: held-out slide -> float (n_spots, n_types) predictions.
        test: test slide -> float (n_spots, n_types) predictions (fit on all train slides).
        per_slide: slide -> {"spot": mean per-spot Spearman, "type": mean per-type}.
        per_type: float (n_types,) per-type Spearman averaged over held-out slides.
        seconds: wall time of the whole LOSO + final fit.
        fitted: params of interest of the final model (e.g. alpha).
    """

    oof: dict[str, np.ndarray] = field(default_factory=dict)
    test: dict[str, np.ndarray] = field(default_factory=dict)
    per_slide: dict[str, dict[str, float]] = field(default_factory=dict)
    per_type: np.ndarray | None = None
    seconds: float = 0.0
    fitted: dict = field(default_factory=dict)
    _per_type: list = field(default_factory=list, repr=False)

    def add_fold(self, slide: str, P: np.ndarray, T: np.ndarray) -> None:
        """Record a held-out slide's predictions P and its scores against the truth T."""
        self.oof[slide] = P
        pt = spearman_per_type(T, P)
        self._per_type.append(pt)
        self.per_slide[slide] = {"spot": float(spearman_per_spot(T, P).mean()),
                                 "type": float(pt.mean())}
        self.per_type = np.mean(self._per_type, axis=0)

    @property
    def mean(self) -> dict[str, float]:
        return {m: float(np.mean([s[m] for s in self.per_slide.values()]))
                for m in ("spot", "type")}


def stack(data: SlideSet, slides: list[str], target: str) -> tuple[np.ndarray, ...]:
    """X (n, d), transformed Y (n, t), groups (n,) of the given slides."""
    X = np.concatenate([data.X[s] for s in slides])
    Y = np.concatenate([transform_targets(data.Y[s], target) for s in slides])
    groups = np.concatenate([np.full(len(data.X[s]), s) for s in slides])
    return X, Y, groups


def fit_predict(make: Callable[[], BaseEstimator], data: SlideSet, train: list[str],
                predict: list[str], target: str,
                postprocess: Callable[[str, np.ndarray], np.ndarray] | None = None
                ) -> tuple[BaseEstimator, dict[str, np.ndarray]]:
    """Fit on ``train`` slides, predict each of ``predict``; never the same slide on both."""
    overlap = set(train) & set(predict)
    if overlap:
        raise ValueError(f"slides on both sides of a split: {sorted(overlap)}")
    X, Y, groups = stack(data, train, target)
    model = make().fit(X, Y, groups=groups)
    out = {}
    for s in predict:
        P = model.predict(data.X[s])
        out[s] = postprocess(s, P) if postprocess else P
    return model, out


def run_loso(make: Callable[[], BaseEstimator], data: SlideSet, target: str,
             postprocess: Callable[[str, np.ndarray], np.ndarray] | None = None,
             describe: Callable[[BaseEstimator], dict] | None = None) -> LosoResult:
    """Hold out each train slide in turn, then fit on all train slides for the test ones."""
    t0 = time.perf_counter()
    res = LosoResult()
    for held in data.train:
        rest = [s for s in data.train if s != held]
        _, pred = fit_predict(make, data, rest, [held], target, postprocess)
        res.add_fold(held, pred[held], data.Y[held])
    if data.test:
        model, res.test = fit_predict(make, data, data.train, data.test, target, postprocess)
        res.fitted = describe(model) if describe else {}
    res.seconds = time.perf_counter() - t0
    return res
