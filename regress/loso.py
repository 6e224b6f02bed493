"""Leave-one-slide-out: one loop serves every model; its folds (and the test fit) may run
as tasks on a Dask cluster (:class:`data.cluster.TaskMap`), in the same order of results."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial

import numpy as np
from sklearn.base import BaseEstimator

from data.cluster import TaskMap
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


def _fold(held: str | None, make: Callable[[], BaseEstimator], target: str,
          postprocess: Callable[[str, np.ndarray], np.ndarray] | None,
          describe: Callable[[BaseEstimator], dict] | None, data: SlideSet):
    """One task: ``held`` out (its predictions), or None: fit on every train slide and
    predict the test slides (their predictions and the fitted model's description)."""
    if held is not None:
        rest = [s for s in data.train if s != held]
        return fit_predict(make, data, rest, [held], target, postprocess)[1][held]
    model, test = fit_predict(make, data, data.train, data.test, target, postprocess)
    return test, describe(model) if describe else {}


def run_loso(make: Callable[[], BaseEstimator], data: SlideSet, target: str,
             postprocess: Callable[[str, np.ndarray], np.ndarray] | None = None,
             describe: Callable[[BaseEstimator], dict] | None = None,
             tasks: TaskMap | None = None) -> LosoResult:
    """Hold out each train slide in turn, then fit on all train slides for the test ones;
    the folds run through ``tasks`` (default: one after the other here)."""
    t0 = time.perf_counter()
    res = LosoResult()
    folds: list[str | None] = list(data.train) + ([None] if data.test else [])
    task = partial(_fold, make=make, target=target, postprocess=postprocess,
                   describe=describe)
    outs = (tasks or TaskMap()).map(task, folds, data=data)
    for held, out in zip(folds, outs, strict=True):
        if held is None:
            res.test, res.fitted = out
        else:
            res.add_fold(held, out, data.Y[held])
    res.seconds = time.perf_counter() - t0
    return res
