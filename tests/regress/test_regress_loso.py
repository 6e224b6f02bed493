"""Leave-one-slide-out: no slide on both sides of a split, complete OOF and test output."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import BaseEstimator, RegressorMixin

from regress.features import SlideSet
from regress.loso import fit_predict, run_loso, stack
from regress.metrics import spearman_per_spot, spearman_per_type
from regress.models import RidgeLOSO
from regress.targets import rank_scale

TRAIN = ["A", "B", "C", "D"]
TEST = ["T1", "T2"]
N_TYPES = 5


def _data(train=TRAIN, test=TEST, seed: int = 0) -> SlideSet:
    """Column 0 of X is the slide's index (so a prediction call reveals its slide); the
    other columns carry a linear signal of the targets."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(6, N_TYPES))
    data = SlideSet(tuple(f"C{i + 1}" for i in range(N_TYPES)), list(train), list(test))
    for i, s in enumerate(data.train + data.test):
        n = 15 + 3 * i
        F = rng.normal(size=(n, 6))
        data.X[s] = np.concatenate([np.full((n, 1), float(i)), F], axis=1).astype(np.float32)
        if s in data.train:
            data.Y[s] = np.exp(F @ W + 0.1 * rng.normal(size=(n, N_TYPES)))
        data.xy[s] = rng.uniform(0, 100, (n, 2))
        data.spot_ids[s] = np.array([f"{s}-{k}" for k in range(n)])
    return data


class Recorder(RegressorMixin, BaseEstimator):
    """Mean regressor that logs the slides it is fitted on and the slides it predicts."""

    def __init__(self, log=None, names=None):
        self.log = log
        self.names = names

    def fit(self, X, y, groups=None):
        fitted_rows = {self.names[int(i)] for i in np.unique(X[:, 0])}
        assert fitted_rows == set(np.unique(groups)), "groups disagree with the rows"
        self.log.append({"fit": set(np.unique(groups)), "predict": set()})
        self.mean_ = np.asarray(y).mean(0)
        return self

    def predict(self, X):
        self.log[-1]["predict"] |= {self.names[int(i)] for i in np.unique(X[:, 0])}
        return np.tile(self.mean_, (len(X), 1))


def _recording(data: SlideSet):
    log: list[dict] = []
    names = data.train + data.test
    return log, (lambda: Recorder(log, names))


def test_no_slide_on_both_sides():
    data = _data()
    log, make = _recording(data)
    run_loso(make, data, "spot_rank")
    assert len(log) == len(TRAIN) + 1
    for call in log:
        assert call["fit"] and call["predict"]
        assert not call["fit"] & call["predict"]
        assert call["fit"] <= set(TRAIN)           # never fitted on a test slide
    # each train slide held out exactly once, fitted on all the others
    for held in TRAIN:
        calls = [c for c in log if c["predict"] == {held}]
        assert len(calls) == 1 and calls[0]["fit"] == set(TRAIN) - {held}
    # the final fit uses every train slide and predicts every test slide
    assert log[-1] == {"fit": set(TRAIN), "predict": set(TEST)}


def test_fit_predict_refuses_overlap():
    data = _data()
    log, make = _recording(data)
    with pytest.raises(ValueError, match=r"both sides.*'B'"):
        fit_predict(make, data, ["A", "B"], ["B", "C"], "raw")
    assert log == []  # refused before anything was fitted


def test_oof_covers_every_train_slide():
    data = _data()
    res = run_loso(lambda: RidgeLOSO(), data, "spot_rank")
    assert set(res.oof) == set(TRAIN) == set(res.per_slide)
    for s in TRAIN:
        assert res.oof[s].shape == data.Y[s].shape
        assert np.isfinite(res.oof[s]).all()
        # scores are computed against the untransformed abundances
        assert res.per_slide[s]["spot"] == pytest.approx(
            spearman_per_spot(data.Y[s], res.oof[s]).mean())
        assert res.per_slide[s]["type"] == pytest.approx(
            spearman_per_type(data.Y[s], res.oof[s]).mean())
    assert res.per_type.shape == (N_TYPES,)
    assert res.mean["spot"] == pytest.approx(np.mean([v["spot"] for v in
                                                      res.per_slide.values()]))
    assert res.mean["spot"] > 0.5  # the linear signal is learnt across slides
    assert res.seconds > 0


def test_test_predictions_for_each_test_slide():
    data = _data()
    res = run_loso(lambda: RidgeLOSO(), data, "raw",
                   describe=lambda m: {"alpha": float(m.alpha_)})
    assert set(res.test) == set(TEST)
    for s in TEST:
        assert res.test[s].shape == (len(data.X[s]), N_TYPES)
    assert set(res.fitted) == {"alpha"}


def test_no_test_slides():
    data = _data(test=[])
    log, make = _recording(data)
    res = run_loso(make, data, "raw")
    assert res.test == {} and len(log) == len(TRAIN)


def test_postprocess_applies_per_slide():
    data = _data()
    seen = []

    def post(slide, P):
        seen.append(slide)
        return rank_scale(P, axis=1)

    res = run_loso(lambda: RidgeLOSO(), data, "raw", postprocess=post)
    assert seen == TRAIN + TEST
    for P in [*res.oof.values(), *res.test.values()]:
        assert P.min() >= 0 and P.max() <= 1


def test_stack_transforms_targets_per_slide():
    data = _data()
    X, Y, groups = stack(data, ["B", "D"], "spot_rank")
    assert len(X) == len(Y) == len(groups) == len(data.X["B"]) + len(data.X["D"])
    assert list(np.unique(groups)) == ["B", "D"]
    np.testing.assert_allclose(Y[groups == "D"], rank_scale(data.Y["D"], axis=1))
