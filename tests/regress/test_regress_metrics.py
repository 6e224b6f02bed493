"""Stage-2 metrics (Spearman both ways) and target transforms (rank scaling)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from regress.metrics import score, spearman_per_spot, spearman_per_type
from regress.targets import TARGETS, rank_scale, transform_targets


def _scipy_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return np.array([spearmanr(a, b).statistic for a, b in zip(A, B, strict=True)])


def _data(kind: str, seed: int = 0, shape=(40, 12)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "continuous":
        return rng.random(shape), rng.random(shape)
    # integer values in a small range: many ties in every row and column
    return rng.integers(0, 4, shape).astype(float), rng.integers(0, 4, shape).astype(float)


# ---------------------------------------------------------------- metrics

@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_spearman_per_spot_matches_scipy_row_by_row(kind):
    T, P = _data(kind)
    if kind == "ties":  # no constant row here, so scipy is defined everywhere
        assert all(len(np.unique(r)) > 1 for r in np.vstack([T, P]))
    got = spearman_per_spot(T, P)
    assert got.shape == (len(T),)
    np.testing.assert_allclose(got, _scipy_rows(T, P), atol=1e-12)


@pytest.mark.parametrize("kind", ["continuous", "ties"])
def test_spearman_per_type_matches_scipy_column_by_column(kind):
    T, P = _data(kind, seed=1)
    got = spearman_per_type(T, P)
    assert got.shape == (T.shape[1],)
    np.testing.assert_allclose(got, _scipy_rows(T.T, P.T), atol=1e-12)


def test_constant_rows_score_zero_not_nan():
    T, P = _data("continuous", seed=2, shape=(6, 5))
    T[0] = 0.2          # constant truth
    P[1] = 0.7          # constant prediction
    T[2] = P[2] = 1.0   # both constant
    got = spearman_per_spot(T, P)
    assert not np.isnan(got).any()
    assert got[0] == 0.0 and got[1] == 0.0 and got[2] == 0.0
    np.testing.assert_allclose(got[3:], _scipy_rows(T[3:], P[3:]), atol=1e-12)


def test_constant_columns_score_zero_not_nan():
    T, P = _data("continuous", seed=3, shape=(8, 5))
    T[:, 0] = 0.0
    P[:, 4] = 3.0
    got = spearman_per_type(T, P)
    assert not np.isnan(got).any()
    assert got[0] == 0.0 and got[4] == 0.0
    np.testing.assert_allclose(got[1:4], _scipy_rows(T.T[1:4], P.T[1:4]), atol=1e-12)


def test_constant_prediction_everywhere_scores_zero():
    T, _ = _data("continuous", seed=4)
    P = np.full_like(T, 0.5)
    assert score(T, P) == {"spot": 0.0, "type": 0.0}


def test_perfect_and_reversed_predictions():
    T, _ = _data("continuous", seed=5)
    np.testing.assert_allclose(spearman_per_spot(T, 2 * T + 1), 1.0)
    np.testing.assert_allclose(spearman_per_type(T, -T), -1.0)


def test_score_returns_both_means():
    T, P = _data("ties", seed=6)
    s = score(T, P)
    assert set(s) == {"spot", "type"}
    assert all(isinstance(v, float) for v in s.values())
    assert s["spot"] == pytest.approx(_scipy_rows(T, P).mean(), abs=1e-12)
    assert s["type"] == pytest.approx(_scipy_rows(T.T, P.T).mean(), abs=1e-12)


def test_metrics_reject_shape_mismatch():
    T, P = _data("continuous")
    with pytest.raises(ValueError, match="shapes differ"):
        spearman_per_spot(T, P[:, :-1])
    with pytest.raises(ValueError, match="shapes differ"):
        spearman_per_type(T, P[:-1])


# ---------------------------------------------------------------- targets

def test_rank_scale_averages_ties():
    np.testing.assert_allclose(rank_scale(np.array([[1.0, 1.0, 2.0]]), axis=1),
                               [[0.25, 0.25, 1.0]])
    np.testing.assert_allclose(rank_scale(np.array([[1.0], [1.0], [2.0]]), axis=0),
                               [[0.25], [0.25], [1.0]])


def test_rank_scale_per_spot_in_unit_interval():
    Y, _ = _data("continuous", seed=7)
    R = rank_scale(Y, axis=1)
    assert R.shape == Y.shape and R.min() >= 0 and R.max() <= 1
    np.testing.assert_allclose(R.min(axis=1), 0.0)
    np.testing.assert_allclose(R.max(axis=1), 1.0)
    # order within each spot is kept
    np.testing.assert_array_equal(np.argsort(R, axis=1, kind="stable"),
                                  np.argsort(Y, axis=1, kind="stable"))


def test_rank_scale_per_type_in_unit_interval():
    Y, _ = _data("ties", seed=8)
    R = rank_scale(Y, axis=0)
    assert R.min() >= 0 and R.max() <= 1
    n = len(Y)
    for j in range(Y.shape[1]):  # the k tied maxima share the average of the top k ranks
        k = int((Y[:, j] == Y[:, j].max()).sum())
        assert R[:, j].max() == pytest.approx((n - (k + 1) / 2) / (n - 1))
    # equal values in a column get equal ranks
    for j in range(Y.shape[1]):
        for v in np.unique(Y[:, j]):
            assert len(np.unique(R[Y[:, j] == v, j])) == 1


def test_rank_scale_constant_line_is_one_half():
    np.testing.assert_allclose(rank_scale(np.full((3, 4), 7.0), axis=1), 0.5)
    np.testing.assert_allclose(rank_scale(np.ones((1, 4)), axis=0), 0.5)


def test_transform_targets_each_name():
    Y, _ = _data("continuous", seed=9)
    np.testing.assert_allclose(transform_targets(Y, "spot_rank"), rank_scale(Y, axis=1))
    np.testing.assert_allclose(transform_targets(Y, "type_rank"), rank_scale(Y, axis=0))
    np.testing.assert_array_equal(transform_targets(Y, "raw"), Y)
    assert set(TARGETS) == {"spot_rank", "type_rank", "raw"}


def test_transform_targets_rejects_unknown_name():
    with pytest.raises(ValueError, match="target must be one of"):
        transform_targets(np.ones((2, 2)), "log")
