"""One prediction for both metrics (regress.orders): the per-spot order of every row is
kept exactly; the columns follow the per-type model's order more closely."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from regress.metrics import spearman_per_spot, spearman_per_type
from regress.orders import combine_by_slide, combine_orders, project, score_oof


def _example(n=60, t=8, seed=0):
    """Truth Y; a per-spot model that knows each spot's profile shape but not the spots'
    differences within a type; a per-type model that knows those but not the profile."""
    rng = np.random.default_rng(seed)
    Y = rng.dirichlet(np.full(t, 0.5), size=n)
    # rows ~right; a spot-specific scale and offset scramble the columns
    spot = (Y + rng.normal(0, 0.02, Y.shape)) * np.exp(rng.normal(0, 2, (n, 1))) \
        + rng.normal(0, 1, (n, 1))
    typ = rankdata(Y + rng.normal(0, 0.02, Y.shape), axis=0) / n     # cols ~right, rows not
    return Y, spot, typ


def test_rows_keep_the_per_spot_order_exactly():
    Y, S, T = _example()
    M = combine_orders(S, T)
    np.testing.assert_array_equal(rankdata(M, axis=1), rankdata(S, axis=1))
    np.testing.assert_allclose(spearman_per_spot(Y, M), spearman_per_spot(Y, S), atol=1e-12)
    assert M.min() >= 0 and M.max() <= 1


def test_columns_follow_the_per_type_model():
    Y, S, T = _example()
    M = combine_orders(S, T)
    before = spearman_per_type(Y, S).mean()
    after = spearman_per_type(Y, M).mean()
    assert after > before + 0.2, (before, after)
    assert after >= spearman_per_type(Y, T).mean() - 0.05  # close to the per-type model
    assert spearman_per_type(T, M).mean() > 0.8  # close to the per-type model's order


def test_ties_in_the_per_spot_model_stay_ties():
    Y, S, T = _example(n=20, t=5)
    S[:, 1] = S[:, 0]
    M = combine_orders(S, T)
    np.testing.assert_array_equal(M[:, 0], M[:, 1])
    np.testing.assert_array_equal(rankdata(M, axis=1), rankdata(S, axis=1))


def test_isotonic_rows_is_the_least_squares_monotone_fit():
    from sklearn.isotonic import isotonic_regression

    from regress.orders import isotonic_rows, monotone
    rng = np.random.default_rng(4)
    V = rng.normal(size=(50, 9))
    expected = np.stack([isotonic_regression(v) for v in V])
    np.testing.assert_allclose(isotonic_rows(V), expected, atol=1e-12)
    key = rng.normal(size=V.shape)
    key[:, 3] = key[:, 4]                                  # ties share their mean value
    F = monotone(V, key)
    np.testing.assert_array_equal(F[:, 3], F[:, 4])
    order = np.argsort(key, axis=1, kind="stable")
    assert np.all(np.diff(np.take_along_axis(F, order, axis=1), axis=1) >= -1e-12)


def test_project_rearranges_a_lines_values():
    M = np.array([[0.1, 0.5, 0.9]])
    key = np.array([[3.0, 1.0, 2.0]])
    np.testing.assert_allclose(project(M, key, axis=1), [[0.9, 0.1, 0.5]])
    np.testing.assert_allclose(project(M, np.array([[1.0, 1.0, 2.0]]), axis=1),
                               [[0.3, 0.3, 0.9]])  # tied keys share their mean value


def test_by_slide_never_mixes_slides():
    Y, S, T = _example(n=40)
    slides = np.repeat(["a", "b"], 20)
    M = combine_by_slide(S, T, slides)
    np.testing.assert_allclose(M[:20], combine_orders(S[:20], T[:20]))
    np.testing.assert_allclose(M[20:], combine_orders(S[20:], T[20:]))
    with pytest.raises(ValueError, match="shapes differ"):
        combine_orders(S, T[:, :3])


def test_score_oof_of_the_combination():
    Y, S, T = _example(n=30)
    types = [f"c{j}" for j in range(S.shape[1])]

    def frame(P):
        return pd.concat([pd.DataFrame({"slide": "a", "row": np.arange(len(P))}),
                          pd.DataFrame(P, columns=types)], axis=1)

    scores = score_oof([frame(S)], frame(T), {"a": Y}, types,
                       lambda rows: rows[0][types].to_numpy(float))
    M = combine_orders(S, T)
    assert scores["mean"]["spot"] == pytest.approx(spearman_per_spot(Y, S).mean())
    assert scores["mean"]["type"] == pytest.approx(spearman_per_type(Y, M).mean())
