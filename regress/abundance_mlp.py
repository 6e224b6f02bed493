"""A small network for abundances, trained on the metric they are judged by: the mean
per-spot total-variation distance between predicted and true proportions.

:class:`AbundanceMLP` standardises the features and projects them onto their first
``rank`` principal components, whitened (each component's largest loading made positive,
so the projection does not depend on the LAPACK's sign choices). On those it trains
``seeds`` networks of one hidden layer::

    dropout(in_drop) -> Linear(rank, hidden) -> GELU -> dropout(drop) -> Linear(hidden, n_types)
    -> softmax

each with AdamW on mini-batches, for a fixed number of epochs, in float64 on the CPU and
from its own generator (weights, batch order and dropout masks all come from ``seed``) and
on one thread, so the same data give the same weights in any process, whatever its thread
count. The weights are not a smooth function of the features at float precision: on the
sample, features changed by 1e-7 (relative; as another CPU's fp32 convolutions change
them) change the weights by up to 1e-2 of their scale and the abundances by < 1e-4. The
output layer's bias starts at the log of the training mean composition. A prediction is
the mean of the networks' softmax rows, scaled by the training rows' mean total (1 on the
simplex, where the rows are also divided by their sums, as
:func:`regress.abundance.to_scale` does for the ridge models).

On the bundled sample's leave-one-slide-out folds the network alone has the least
total-variation distance of the candidates, and the ridge on square roots the better
per-type Pearson; their mean (:class:`regress.abundance_kinds.AbundanceBlend`) has both
(README, "Abundances").

Only ``fit`` needs torch; ``predict`` (and a model folder's copy,
:class:`SavedMLP`) run numpy on the arrays of :meth:`AbundanceMLP.export`.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from scipy.special import erf
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from regress.abundance import sums_to_one, to_scale

#: the arrays of :meth:`AbundanceMLP.export` (a model folder's npz)
ARRAYS = ("mean", "scale", "projection", "w1", "b1", "w2", "b2", "composition", "total",
          "simplex")


def principal_projection(Z: np.ndarray, rank: int) -> np.ndarray:
    """float (n_features, r): the whitened projection onto the first r <= ``rank``
    principal components of standardised rows Z (n_spots, n_features); components of
    (numerically) zero variance are left out. Each column's largest loading is positive."""
    n = len(Z)
    if n <= Z.shape[1]:                      # the Gram side is the smaller one
        w, U = np.linalg.eigh(Z @ Z.T)
        order = np.argsort(w)[::-1]
        w, U = w[order], U[:, order]
        keep = w > w[0] * 1e-10 if len(w) else np.zeros(0, bool)
        V = Z.T @ U[:, keep] / np.sqrt(w[keep])
    else:
        w, V = np.linalg.eigh(Z.T @ Z)
        order = np.argsort(w)[::-1]
        w, V = w[order], V[:, order]
        keep = w > w[0] * 1e-10 if len(w) else np.zeros(0, bool)
        V = V[:, keep]
    w = w[keep][:rank]
    V = V[:, :rank]
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


_ONE_THREAD = threading.Lock()


@contextmanager
def one_torch_thread():
    """Torch on one thread meanwhile (and one such block at a time): a matrix product's
    sums are split by thread, so the trained weights would depend on the thread count."""
    import torch

    with _ONE_THREAD:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


def _train_one(Z: np.ndarray, Y: np.ndarray, seed: int, hidden: int, epochs: int,
               batch: int, lr: float, weight_decay: float, in_drop: float, drop: float
               ) -> list[np.ndarray]:
    """One network's (w1, b1, w2, b2) on whitened components Z (n, r) and proportions
    Y (n, k), trained on the mean per-spot total-variation distance."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n, r = Z.shape
    k = Y.shape[1]

    def uniform(*shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * bound

    w1, b1 = uniform(r, hidden, fan_in=r), uniform(hidden, fan_in=r)
    w2 = uniform(hidden, k, fan_in=hidden)
    b2 = torch.log(torch.as_tensor(Y.mean(axis=0), dtype=torch.float64).clamp_min(1e-6))
    params = [p.requires_grad_() for p in (w1, b1, w2, b2)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    A = torch.as_tensor(Z, dtype=torch.float64)
    T = torch.as_tensor(Y, dtype=torch.float64)

    def dropout(x, p):
        if p <= 0:
            return x
        keep = torch.rand(x.shape, generator=g, dtype=x.dtype) >= p
        return x * keep / (1 - p)

    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            rows = order[i:i + batch]
            h = torch.nn.functional.gelu(dropout(A[rows], in_drop) @ w1 + b1)
            P = torch.softmax(dropout(h, drop) @ w2 + b2, dim=1)
            loss = 0.5 * (P - T[rows]).abs().sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return [p.detach().numpy().copy() for p in params]


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
        mean = X.mean(axis=0)
        scale = X.std(axis=0)
        scale[scale == 0] = 1.0
        # kept in float32 (a model folder's largest array; 1e-7 is far below what the
        # features' own precision allows), used as kept by training and prediction alike
        projection = principal_projection((X - mean) / scale, self.rank).astype(np.float32)
        Z = (X - mean) / scale @ projection.astype(float)
        total = Y.sum(axis=1, keepdims=True)
        composition = Y.mean(axis=0) / max(float(total.mean()), 1e-300)
        props = np.where(total > 0, Y / np.where(total > 0, total, 1.0), composition)
        with one_torch_thread():
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
