"""Stage-2 estimators: scikit-learn's estimator checks, ridge's inner leave-one-slide-out
alpha, LightGBM's slide hold-out."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

import regress.models as models
from regress.models import (
    ConstantRegressor,
    LGBMPerType,
    RidgeLOSO,
    _inner_folds,
    make_model,
)

# LightGBM >= 4.7 deprecates ``eval_set`` (used by LGBMPerType); not what these tests test.
pytestmark = pytest.mark.filterwarnings("ignore:The argument 'eval_set' is deprecated")

CHECKED = [
    ConstantRegressor(),
    RidgeLOSO(),
    RidgeLOSO(per_type_alpha=True, n_components=8, scoring="mse"),
    LGBMPerType(n_estimators=30, learning_rate=0.3, n_components=None, n_jobs=1),
]


def _expected_failed_checks(estimator) -> dict[str, str]:
    if isinstance(estimator, ConstantRegressor):
        return {"check_regressors_train":
                "the baseline predicts the training mean: R^2 is 0 by design, the check "
                "wants > 0.5"}
    return {}


@parametrize_with_checks(CHECKED, expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The argument 'eval_set' is deprecated")
        check(estimator)


def test_estimators_declare_multi_output():
    for est in CHECKED:
        assert est.__sklearn_tags__().target_tags.multi_output


def test_make_model_registry():
    assert isinstance(make_model("ridge", n_components=4), RidgeLOSO)
    assert make_model("ridge", n_components=4).n_components == 4
    assert isinstance(make_model("lgbm"), LGBMPerType)
    assert isinstance(make_model("constant"), ConstantRegressor)
    with pytest.raises(ValueError, match="unknown model 'svm'"):
        make_model("svm")


def test_constant_predicts_training_mean():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(20, 3)), rng.random((20, 4))
    P = ConstantRegressor().fit(X, Y).predict(rng.normal(size=(7, 3)))
    assert P.shape == (7, 4)
    np.testing.assert_allclose(P, np.tile(Y.mean(0), (7, 1)))


# ---------------------------------------------------------------- ridge

def _slides(seed: int, n_per: int = 40, n_slides: int = 4, d: int = 20, t: int = 6):
    """X, a linear signal, pure noise (both around distinct per-type means), groups."""
    rng = np.random.default_rng(seed)
    n = n_per * n_slides
    X = rng.normal(size=(n, d))
    groups = np.repeat([f"s{i}" for i in range(n_slides)], n_per)
    mu = np.linspace(0, 3, t)
    signal = mu + X @ rng.normal(size=(d, t)) + 0.1 * rng.normal(size=(n, t))
    noise = mu + rng.normal(size=(n, t))
    return X, signal, noise, groups


@pytest.mark.parametrize("scoring", ["spot", "type", "mse"])
def test_ridge_prefers_larger_alpha_on_noise(scoring):
    X, signal, noise, groups = _slides(0)
    a_signal = RidgeLOSO(scoring=scoring).fit(X, signal, groups=groups).alpha_
    a_noise = RidgeLOSO(scoring=scoring).fit(X, noise, groups=groups).alpha_
    assert a_noise > a_signal
    if scoring == "mse":  # noise: shrink all the way to the mean
        assert a_noise == max(RidgeLOSO().alphas)


def test_ridge_fits_a_linear_signal():
    X, signal, _, groups = _slides(1)
    model = RidgeLOSO().fit(X[:120], signal[:120], groups=groups[:120])
    np.testing.assert_allclose(model.predict(X[120:]), signal[120:], atol=0.6)
    assert model.coef_.shape == (X.shape[1], signal.shape[1])
    assert model.cv_scores_.shape == (len(model.alphas),)


def test_ridge_per_type_alpha_shape():
    X, signal, noise, groups = _slides(2)
    Y = np.concatenate([signal[:, :3], noise[:, :3]], axis=1)
    model = RidgeLOSO(per_type_alpha=True, scoring="mse").fit(X, Y, groups=groups)
    assert np.shape(model.alpha_) == (Y.shape[1],)
    assert model.cv_scores_.shape == (len(model.alphas), Y.shape[1])
    # signal columns keep a small penalty, noise columns get a large one
    assert model.alpha_[:3].max() < model.alpha_[3:].min()
    assert model.predict(X).shape == Y.shape
    one = RidgeLOSO(scoring="mse").fit(X, Y, groups=groups)
    assert np.ndim(one.alpha_) == 0


def test_ridge_pca_components():
    X, signal, _, groups = _slides(3)
    model = RidgeLOSO(n_components=5).fit(X, signal, groups=groups)
    assert model.pca_.n_components_ == 5
    assert model.coef_.shape == (5, signal.shape[1])
    assert model.predict(X).shape == signal.shape


def test_ridge_rejects_unknown_scoring():
    X, signal, _, groups = _slides(4)
    with pytest.raises(ValueError, match="scoring"):
        RidgeLOSO(scoring="r2").fit(X, signal, groups=groups)


def test_inner_folds_one_per_group():
    groups = np.array(["b", "a", "b", "c", "a", "c", "c"])
    folds = _inner_folds(len(groups), groups)
    assert len(folds) == 3
    for fold in folds:
        assert len(np.unique(groups[fold])) == 1          # one slide per fold
        assert set(fold) == set(np.flatnonzero(groups == groups[fold[0]]))  # all of it
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))


def test_inner_folds_without_groups_are_contiguous():
    folds = _inner_folds(23, None)
    assert len(folds) == 5
    np.testing.assert_array_equal(np.concatenate(folds), np.arange(23))
    # a single group cannot be held out: contiguous folds again
    assert len(_inner_folds(23, np.zeros(23))) == 5


def test_ridge_inner_cv_uses_the_groups(monkeypatch):
    X, signal, _, groups = _slides(5)
    seen = []

    def spy(n, g, n_folds=5):
        folds = _inner_folds(n, g, n_folds)
        seen.append([np.unique(groups[f]).tolist() for f in folds])
        return folds

    monkeypatch.setattr(models, "_inner_folds", spy)
    RidgeLOSO().fit(X, signal, groups=groups)
    assert seen == [[["s0"], ["s1"], ["s2"], ["s3"]]]


def test_ridge_alpha_depends_on_groups():
    """Slide-level offsets in X that predict slide-level offsets in Y: only contiguous
    folds that cut slides in two can exploit them; slide folds cannot."""
    rng = np.random.default_rng(6)
    n_per, n_slides = 30, 5
    groups = np.repeat(np.arange(n_slides), n_per)
    slide_fx = rng.normal(size=(n_slides, 4)) * 3
    X = np.concatenate([slide_fx[groups], rng.normal(size=(len(groups), 10))], axis=1)
    Y = (slide_fx[groups] @ rng.normal(size=(4, 3))) + 0.1 * rng.normal(size=(len(groups), 3))
    Y += np.linspace(0, 5, 3)
    perm = rng.permutation(len(groups))  # interleave slides so contiguous folds mix them
    X, Y, groups = X[perm], Y[perm], groups[perm]
    by_slide = RidgeLOSO(scoring="mse").fit(X, Y, groups=groups)
    by_rows = RidgeLOSO(scoring="mse").fit(X, Y)
    assert not np.allclose(by_slide.cv_scores_, by_rows.cv_scores_)


# ---------------------------------------------------------------- LightGBM

def test_lgbm_holds_out_one_whole_slide():
    groups = np.repeat(["a", "b", "c", "d"], [10, 30, 20, 40])
    train, valid = LGBMPerType()._split(len(groups), groups)
    held = np.unique(groups[valid])
    assert len(held) == 1 and held[0] not in set(groups[train])
    assert len(train) + len(valid) == len(groups)
    t2, v2 = LGBMPerType()._split(100, None)
    assert len(v2) == 20 and v2.min() == t2.max() + 1


def test_lgbm_fits_per_type():
    X, signal, _, groups = _slides(7)
    model = LGBMPerType(n_estimators=40, n_components=8, n_jobs=1).fit(X, signal,
                                                                      groups=groups)
    assert len(model.estimators_) == signal.shape[1]
    assert len(model.best_iterations_) == signal.shape[1]
    assert model.pca_.n_components_ == 8
    P = model.predict(X)
    assert P.shape == signal.shape and np.isfinite(P).all()
    # clone keeps the parameters and drops the fit
    fresh = clone(model)
    assert fresh.get_params() == model.get_params() and not hasattr(fresh, "estimators_")


def test_centred_svd_of_a_wide_matrix_matches_numpys():
    """The Gram-matrix path (more features than spots) gives the same ridge fits as a
    plain SVD of the centred matrix."""
    from regress.models import centred_svd

    rng = np.random.default_rng(5)
    for shape in ((40, 300), (300, 40)):
        Z = rng.normal(size=shape)
        zm, U, s, Vt = centred_svd(Z)
        np.testing.assert_allclose((U * s) @ Vt, Z - Z.mean(0), atol=1e-9)
        U2, s2, _ = np.linalg.svd(Z - Z.mean(0), full_matrices=False)
        np.testing.assert_allclose(s, s2[:len(s)], rtol=1e-9)
        assert len(s) >= min(shape) - 1          # centring removes one direction at most
