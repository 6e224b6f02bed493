"""Regressors, as scikit-learn estimators: constant baseline, ridge with inner
leave-one-slide-out alpha, LightGBM per cell type.

``fit(X, Y, groups=None)``: ``groups`` (n_spots,) are slide ids for inner CV; without
them, inner CV falls back to contiguous folds.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, check_X_y, validate_data

from data.errors import ConfigError
from regress.metrics import spearman_per_spot, spearman_per_type

DEFAULT_ALPHAS = tuple(10.0 ** np.arange(-1, 7.5, 0.5))


def _inner_folds(n: int, groups: np.ndarray | None, n_folds: int = 5) -> list[np.ndarray]:
    """Held-out index sets: one per group (slide), else contiguous folds."""
    if groups is not None and len(np.unique(groups)) >= 2:
        return [np.flatnonzero(groups == g) for g in np.unique(groups)]
    return [f for f in np.array_split(np.arange(n), min(n_folds, n)) if len(f)]


class ConstantRegressor(RegressorMixin, BaseEstimator):
    """Predicts the mean training profile for every spot (the baseline)."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # fit/predict take (n, n_outputs) natively
        return tags

    def fit(self, X, y, groups=None):
        X, y = check_X_y(X, y, multi_output=True, y_numeric=True)
        self.n_features_in_ = X.shape[1]
        self.mean_ = np.mean(y, axis=0)
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return np.tile(self.mean_, (X.shape[0],) + (1,) * np.ndim(self.mean_))


class _Preprocessed(RegressorMixin, BaseEstimator):
    """Shared: optional StandardScaler + PCA fitted in ``fit``."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True  # fit/predict take (n, n_outputs) natively
        return tags

    def _fit_prep(self, X: np.ndarray) -> np.ndarray:
        self.scaler_ = StandardScaler().fit(X) if self.standardize else None
        Z = self.scaler_.transform(X) if self.scaler_ is not None else X
        n_comp = min(self.n_components or 0, *Z.shape)
        self.pca_ = PCA(n_comp, random_state=0).fit(Z) if n_comp else None
        return self.pca_.transform(Z) if self.pca_ is not None else Z

    def _prep(self, X: np.ndarray) -> np.ndarray:
        Z = self.scaler_.transform(X) if self.scaler_ is not None else X
        return self.pca_.transform(Z) if self.pca_ is not None else Z


def centred_svd(Z: np.ndarray) -> tuple[np.ndarray, ...]:
    """Thin SVD of the centred Z: (column means (d,), U (n, k), s (k,), Vt (k, d)).

    Wider than tall (d > n, the usual stage-2 case: a few hundred spots per fold, a few
    thousand features), it goes through the n x n Gram matrix (eigh), several times faster
    than an SVD of Z; directions with a squared singular value below 1e-12 of the largest
    are dropped (ridge's alphas >= 0.1 shrink them to nothing anyway)."""
    zm = Z.mean(0)
    Zc = Z - zm
    if Zc.shape[1] <= Zc.shape[0]:
        U, s, Vt = np.linalg.svd(Zc, full_matrices=False)
        return zm, U, s, Vt
    w, U = np.linalg.eigh(Zc @ Zc.T)
    keep = w > max(w.max(), 0.0) * 1e-12
    U, s = U[:, keep][:, ::-1], np.sqrt(w[keep])[::-1]
    return zm, U, s, (U.T @ Zc) / s[:, None]


class RidgeLOSO(_Preprocessed):
    """Multi-output ridge; alpha chosen by inner leave-one-slide-out CV.

    Args:
        alphas: candidate penalties.
        standardize: StandardScaler first.
        n_components: PCA components after scaling (None: no PCA).
        per_type_alpha: choose one alpha per output column instead of one for all.
        scoring: inner-CV criterion: "spot" (per-spot Spearman), "type" (per-type
            Spearman) or "mse".
        slide_gain: g > 1 amplifies a slide's predicted mean composition's distance
            from the training mean: P + (g - 1) * (mean of P over spots - training
            mean). Ridge pulls a slide unlike the training ones towards their mean;
            this undoes part of it. ``predict`` then takes one slide's spots at a time.

    Fitted attributes: ``alpha_`` (float, or (n_outputs,) with per_type_alpha),
    ``coef_`` (n_components, n_outputs), ``intercept_``, ``cv_scores_`` (n_alphas,).
    """

    def __init__(self, alphas=DEFAULT_ALPHAS, standardize=True, n_components=None,
                 per_type_alpha=False, scoring="spot", slide_gain=1.0):
        self.alphas = alphas
        self.slide_gain = slide_gain
        self.standardize = standardize
        self.n_components = n_components
        self.per_type_alpha = per_type_alpha
        self.scoring = scoring

    @staticmethod
    def _solve_path(Z: np.ndarray, Y: np.ndarray, Zt: np.ndarray, alphas) -> np.ndarray:
        """Predictions on Zt for every alpha: (n_alphas, n_test, n_outputs)."""
        ym = Y.mean(0)
        zm, U, s, Vt = centred_svd(Z)
        UtY = U.T @ (Y - ym)
        P = (Zt - zm) @ Vt.T
        return np.stack([P @ ((s / (s**2 + a))[:, None] * UtY) + ym for a in alphas])

    def _score(self, T: np.ndarray, P: np.ndarray) -> np.ndarray | float:
        """Inner-CV score of predictions P for truth T (higher is better): per output
        column with per_type_alpha, else one number."""
        if self.scoring == "mse":
            err = -((P - T) ** 2).mean(0)
            return err if self.per_type_alpha else float(err.mean())
        if self.per_type_alpha:  # a column's alpha can only be judged across spots
            return spearman_per_type(T, P)
        fn = spearman_per_spot if self.scoring == "spot" else spearman_per_type
        return float(fn(T, P).mean())

    def _cv_scores(self, Z, Y, groups) -> np.ndarray:
        """(n_alphas, n_outputs) with per_type_alpha, else (n_alphas,): inner-CV scores
        weighted by the held-out fold sizes."""
        alphas = np.asarray(self.alphas, float)
        scores = np.zeros((len(alphas), Y.shape[1]) if self.per_type_alpha else len(alphas))
        for held in _inner_folds(len(Z), groups):
            train = np.setdiff1d(np.arange(len(Z)), held)
            preds = self._solve_path(Z[train], Y[train], Z[held], alphas)
            for i, P in enumerate(preds):
                scores[i] += self._score(Y[held], P) * len(held)
        return scores

    def fit(self, X, y, groups=None):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        if self.scoring not in ("spot", "type", "mse"):
            raise ConfigError(f"scoring must be spot, type or mse, got {self.scoring!r}")
        Y = y.reshape(len(y), -1).astype(float)
        Z = self._fit_prep(X)
        alphas = np.asarray(self.alphas, float)
        groups = None if groups is None else np.asarray(groups)
        self.cv_scores_ = self._cv_scores(Z, Y, groups) if len(alphas) > 1 and len(Z) > 2 \
            else np.zeros(len(alphas))
        best = np.argmax(self.cv_scores_, axis=0)
        self.alpha_ = alphas[best]
        ym = Y.mean(0)
        zm, U, s, Vt = centred_svd(Z)
        UtY = U.T @ (Y - ym)
        a = np.broadcast_to(np.atleast_1d(self.alpha_), (Y.shape[1],))
        self.coef_ = Vt.T @ ((s[:, None] / (s[:, None] ** 2 + a[None, :])) * UtY)
        self.intercept_ = ym - zm @ self.coef_
        self.y_mean_ = ym
        self._y_1d = y.ndim == 1
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        P = self._prep(X) @ self.coef_ + self.intercept_
        gain = getattr(self, "slide_gain", 1.0)  # models saved before the setting: 1
        if gain != 1.0 and len(P):
            P = P + (gain - 1.0) * (P.mean(axis=0) - self.y_mean_)
        return P[:, 0] if self._y_1d else P


class LGBMPerType(_Preprocessed):
    """One LightGBM regressor per output column, early-stopped on an inner slide split.

    The inner validation set is one training slide (the group whose size is the median),
    or the last 20 % of rows without groups. Features are standardised and reduced by PCA
    first (``n_components``) to keep the run time in check.
    """

    def __init__(self, n_estimators=200, learning_rate=0.1, num_leaves=15,
                 min_child_samples=20, subsample=0.8, colsample_bytree=0.8, reg_lambda=1.0,
                 early_stopping_rounds=20, n_components=32, standardize=True, n_jobs=2,
                 random_state=0):
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.n_components = n_components
        self.standardize = standardize
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _split(self, n: int, groups) -> tuple[np.ndarray, np.ndarray]:
        if groups is not None and len(np.unique(groups)) >= 2:
            names, counts = np.unique(groups, return_counts=True)
            held = names[np.argsort(counts)[len(counts) // 2]]
            return np.flatnonzero(groups != held), np.flatnonzero(groups == held)
        cut = max(1, int(n * 0.8))
        return np.arange(cut), np.arange(cut, n)

    def fit(self, X, y, groups=None):
        import lightgbm as lgb

        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        Y = y.reshape(len(y), -1).astype(float)
        Z = self._fit_prep(X)
        train, valid = self._split(len(Z), None if groups is None else np.asarray(groups))
        self.estimators_, self.best_iterations_ = [], []
        for j in range(Y.shape[1]):
            model = lgb.LGBMRegressor(
                n_estimators=self.n_estimators, learning_rate=self.learning_rate,
                num_leaves=self.num_leaves, min_child_samples=self.min_child_samples,
                subsample=self.subsample, subsample_freq=1,
                colsample_bytree=self.colsample_bytree, reg_lambda=self.reg_lambda,
                n_jobs=self.n_jobs, random_state=self.random_state, verbose=-1)
            callbacks = [lgb.early_stopping(self.early_stopping_rounds, verbose=False)] \
                if len(valid) else []
            with warnings.catch_warnings():  # lightgbm >= 4.7 renames eval_set; both work
                warnings.filterwarnings("ignore", message=".*eval_set.*deprecated")
                model.fit(Z[train], Y[train, j], eval_set=[(Z[valid], Y[valid, j])]
                          if len(valid) else None, callbacks=callbacks)
            self.estimators_.append(model)
            self.best_iterations_.append(model.best_iteration_ or self.n_estimators)
        self._y_1d = y.ndim == 1
        return self

    def predict(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        Z = self._prep(X)
        P = np.stack([m.predict(Z) for m in self.estimators_], axis=1)
        return P[:, 0] if self._y_1d else P


MODELS = {
    "constant": ConstantRegressor,
    "ridge": RidgeLOSO,
    "lgbm": LGBMPerType,
}


def make_model(name: str, **params) -> BaseEstimator:
    """A fresh regressor from the ``MODELS`` registry."""
    try:
        return MODELS[name](**params)
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
