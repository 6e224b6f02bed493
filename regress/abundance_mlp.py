"""A small network for abundances, trained on the metric they are judged by: the mean
per-spot total-variation distance between predicted and true proportions.

:class:`AbundanceMLP` standardises the features and projects them onto their first
``rank`` principal components, whitened (each component's largest loading made positive,
so the projection does not depend on the LAPACK's sign choices). On those it trains
``seeds`` networks of one hidden layer::

    dropout(in_drop) -> Linear(rank, hidden) -> GELU -> dropout(drop) -> Linear(hidden, n_types)
    -> softmax

each with AdamW on mini-batches, for a fixed number of epochs, written in numpy (forward
and backward, :func:`tv_step`; stage 2 does not import torch), in float64, every random
draw (weights, batch order, dropout masks) from its own generator and the BLAS and LAPACK
on one thread (the principal components too: eigh's eigenvectors differ by 1e-12 between
1 and 2 threads), so the same data give the same weights in any process, whatever its
thread count.
The weights are not a smooth function of the features at float precision: on the sample,
features changed by 1e-7 (relative; as another CPU's fp32 convolutions change them) change
the weights by up to 1e-2 of their scale and the abundances by up to 1e-3. The
output layer's bias starts at the log of the training mean composition. A prediction is
the mean of the networks' softmax rows, scaled by the training rows' mean total (1 on the
simplex, where the rows are also divided by their sums, as
:func:`regress.abundance.to_scale` does for the ridge models).

On the bundled sample's leave-one-slide-out folds the network alone has the least
total-variation distance of the candidates, and the ridge on square roots the better
per-type Pearson; their mean (:class:`regress.abundance_kinds.AbundanceBlend`) has both
(README, "Abundances").

``predict`` (and a model folder's copy, :class:`SavedMLP`) run :func:`forward` on the
arrays of :meth:`AbundanceMLP.export`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import erf
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.preprocessing import StandardScaler
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from regress.abundance import sums_to_one, to_scale

#: the arrays of :meth:`AbundanceMLP.export` (a model folder's npz)
ARRAYS = ("mean", "scale", "projection", "w1", "b1", "w2", "b2", "composition", "total",
          "simplex")


EXACT_MAX = 3000   # min(n_spots, n_features) up to which the components are exact


def principal_projection(Z: np.ndarray, rank: int) -> np.ndarray:
    """float (n_features, r): the whitened projection onto the first r <= ``rank``
    principal components of standardised rows Z (n_spots, n_features); components of
    (numerically) zero variance are left out. Each column's largest loading is positive.

    Exact (an eigendecomposition of the smaller Gram matrix) while min(n_spots,
    n_features) <= EXACT_MAX; beyond, scikit-learn's randomized SVD (7 power iterations,
    a fixed seed): the challenge's 8,349 spots x 6,688 features take 4 s instead of 73.
    """
    n, d = Z.shape
    if min(n, d) > EXACT_MAX:
        from sklearn.utils.extmath import randomized_svd

        _, s, Vt = randomized_svd(Z, min(rank, n, d), n_iter=7, random_state=0)
        w, V = s ** 2, Vt.T
    else:                                    # the Gram matrix of the smaller side
        w, E = np.linalg.eigh(Z @ Z.T if n <= d else Z.T @ Z)
        top = np.argsort(w)[::-1][:rank]
        w, E = w[top], E[:, top]
        V = Z.T @ E / np.sqrt(np.clip(w, 1e-300, None)) if n <= d else E
    keep = w > w[0] * 1e-10 if len(w) else np.zeros(0, bool)
    V, w = V[:, keep], w[keep]
    sign = np.sign(V[np.abs(V).argmax(axis=0), np.arange(V.shape[1])])
    return V * sign / np.sqrt(w) * np.sqrt(n)


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _softmax(L: np.ndarray) -> np.ndarray:
    E = np.exp(L - L.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def forward(arrays: dict[str, np.ndarray], X: np.ndarray) -> np.ndarray:
    """float (n_spots, n_types) abundances of the spots X (n_spots, n_features), from the
    arrays of :meth:`AbundanceMLP.export` (numpy, float64)."""
    a = arrays
    Z = ((np.asarray(X, float) - a["mean"]) / a["scale"]) @ a["projection"].astype(float)
    P = np.mean([_softmax(_gelu(Z @ w1 + b1) @ w2 + b2)
                 for w1, b1, w2, b2 in zip(a["w1"], a["b1"], a["w2"], a["b2"], strict=True)],
                axis=0)
    return to_scale(P * float(a["total"][0]), bool(a["simplex"][0]), a["composition"])


def _gelu_grad(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(
        2.0 * math.pi)


class AdamW:
    """AdamW (decoupled weight decay on every parameter, as torch.optim.AdamW with its
    defaults betas (0.9, 0.999), eps 1e-8), updating float64 arrays in place."""

    def __init__(self, params: list[np.ndarray], lr: float, weight_decay: float):
        self.params, self.lr, self.wd = params, lr, weight_decay
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[np.ndarray], beta1: float = 0.9, beta2: float = 0.999,
             eps: float = 1e-8) -> None:
        self.t += 1
        c1, c2 = 1.0 - beta1 ** self.t, 1.0 - beta2 ** self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            p *= 1.0 - self.lr * self.wd
            m *= beta1
            m += (1.0 - beta1) * g
            v *= beta2
            v += (1.0 - beta2) * g * g
            p -= self.lr / c1 * m / (np.sqrt(v / c2) + eps)


def tv_step(params: list[np.ndarray], x: np.ndarray, T: np.ndarray,
            masks: tuple[np.ndarray, np.ndarray] | None = None
            ) -> tuple[float, list[np.ndarray]]:
    """One batch's mean per-spot total-variation distance and its gradients.

    Args:
        params: (w1 (r, h), b1 (h,), w2 (h, k), b2 (k,)).
        x: float (B, r) components; T: float (B, k) true proportions.
        masks: dropout's (input (B, r), hidden (B, h)) multipliers (0 or 1 / (1 - p)).

    Returns:
        (loss, [dw1, db1, dw2, db2]).
    """
    w1, b1, w2, b2 = params
    m_in, m_h = masks if masks is not None else (1.0, 1.0)
    xd = x * m_in
    a = xd @ w1 + b1
    hd = _gelu(a) * m_h
    P = _softmax(hd @ w2 + b2)
    B = len(x)
    loss = 0.5 * float(np.abs(P - T).sum(axis=1).mean())
    G = 0.5 * np.sign(P - T) / B                          # d loss / d P
    dL = P * (G - (G * P).sum(axis=1, keepdims=True))     # through the softmax
    da = (dL @ w2.T) * m_h * _gelu_grad(a)
    return loss, [xd.T @ da, da.sum(axis=0), hd.T @ dL, dL.sum(axis=0)]


def _train_one(Z: np.ndarray, Y: np.ndarray, seed: int, hidden: int, epochs: int,
               batch: int, lr: float, weight_decay: float, in_drop: float, drop: float
               ) -> list[np.ndarray]:
    """One network's (w1, b1, w2, b2) on whitened components Z (n, r) and proportions
    Y (n, k), trained on the mean per-spot total-variation distance; every random draw
    (initial weights, batch order, dropout masks) from ``seed``."""
    rng = np.random.default_rng(seed)
    n, r = Z.shape
    k = Y.shape[1]
    fan_in = math.sqrt(max(r, 1))          # no component at all: the biases alone learn
    params = [rng.uniform(-1, 1, (r, hidden)) / fan_in,
              rng.uniform(-1, 1, hidden) / fan_in,
              rng.uniform(-1, 1, (hidden, k)) / math.sqrt(hidden),
              np.log(np.clip(Y.mean(axis=0), 1e-6, None))]
    opt = AdamW(params, lr, weight_decay)

    def mask(shape, p):
        return (rng.random(shape) >= p) / (1.0 - p) if p > 0 else 1.0

    for _ in range(epochs):
        order = rng.permutation(n)
        for i in range(0, n, batch):
            rows = order[i:i + batch]
            masks = (mask((len(rows), r), in_drop), mask((len(rows), hidden), drop))
            opt.step(tv_step(params, Z[rows], Y[rows], masks)[1])
    return params


class AbundanceMLP(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """Networks on whitened principal components, trained on total-variation distance
    (the module docstring has the details).

    Args:
        rank: principal components kept (at most).
        hidden: width of the hidden layer.
        epochs, batch, lr, weight_decay: AdamW's schedule, the same for every network.
        in_drop, drop: dropout of the components and of the hidden layer.
        seeds: networks averaged (seeds ``seed``, ``seed + 1``, ...).

    Fitted attributes: ``arrays_`` (:meth:`export`).
    """

    def __init__(self, rank=64, hidden=64, epochs=60, batch=64, lr=1e-3, weight_decay=1e-3,
                 in_drop=0.2, drop=0.5, seeds=3, seed=0):
        self.rank = rank
        self.hidden = hidden
        self.epochs = epochs
        self.batch = batch
        self.lr = lr
        self.weight_decay = weight_decay
        self.in_drop = in_drop
        self.drop = drop
        self.seeds = seeds
        self.seed = seed

    def fit(self, X, y, groups=None):
        """X float (n_spots, n_features); y float (n_spots, n_types) abundances (>= 0);
        ``groups`` is accepted (as the other abundance models take it) and not used."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        X = np.asarray(X, float)
        Y = np.clip(np.asarray(y, float).reshape(len(y), -1), 0, None)
        # StandardScaler's mean and scale: a column constant up to rounding (a CNN channel
        # that is always 0.1 has a standard deviation of 3e-17) gets scale 1, not 1e-16
        scaler = StandardScaler().fit(X)
        mean, scale = scaler.mean_, scaler.scale_
        total = Y.sum(axis=1, keepdims=True)
        composition = Y.mean(axis=0) / max(float(total.mean()), 1e-300)
        props = np.where(total > 0, Y / np.where(total > 0, total, 1.0), composition)
        standard = (X - mean) / scale
        with threadpool_limits(1):     # eigh's and the products' sums: any thread count
            # kept in float32 (a model folder's largest array; 1e-7 is far below what the
            # features' own precision allows), used as kept by training and prediction
            projection = principal_projection(standard, self.rank).astype(np.float32)
            Z = standard @ projection.astype(float)
            del standard
            nets = [_train_one(Z, props, self.seed + i, self.hidden, self.epochs, self.batch,
                               self.lr, self.weight_decay, self.in_drop, self.drop)
                    for i in range(self.seeds)]
        w1, b1, w2, b2 = (np.stack(p) for p in zip(*nets, strict=True))
        self.arrays_ = {"mean": mean, "scale": scale, "projection": projection,
                        "w1": w1, "b1": b1, "w2": w2, "b2": b2,
                        "composition": Y.mean(axis=0), "total": np.asarray([total.mean()]),
                        "simplex": np.asarray([sums_to_one(Y)])}
        return self

    def predict(self, X):
        """float (n_spots, n_types) abundances of the spots X (n_spots, n_features)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return forward(self.arrays_, X)

    def export(self) -> dict[str, np.ndarray]:
        """The arrays that reproduce ``predict`` (:data:`ARRAYS`)."""
        check_is_fitted(self)
        return dict(self.arrays_)


@dataclass
class SavedMLP:
    """An :class:`AbundanceMLP` rebuilt from its exported arrays."""

    arrays: dict[str, np.ndarray]

    def predict(self, X: np.ndarray) -> np.ndarray:
        return forward(self.arrays, X)
