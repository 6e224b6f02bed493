"""Leave-one-slide-out: one loop serves every model."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator

from regress.features import SlideSet
from regress.results import LosoResult
from regress.targets import transform_targets


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
