"""The fine-tuned CNN's training losses (:data:`LOSSES`, built by :func:`build_loss`): L1 and
MSE on the targets, and a differentiable per-spot Spearman from soft ranks.

``soft_rank`` is 1 - the Pearson correlation of the predictions' soft ranks with the
targets' (average-tie) ranks along the cell types of each spot (the challenge's per-spot
Spearman), averaged over the batch's spots; with ``type_weight`` > 0 it adds that weight
times the same along the batch's spots of each cell type (a per-type term, across slides:
only a proxy of the per-type metric). ``l1+soft_rank`` is L1 plus ``soft_rank``.

Soft ranks are the pairwise-sigmoid relaxation ``rank_i = 0.5 + sum_j sigmoid((z_i - z_j) /
tau)`` of the values ``z`` standardised along the ranked axis, so ``tau`` is in units of
their standard deviation and the loss does not depend on the head's output scale; as
``tau -> 0`` the soft ranks become average-tie ranks and the loss 1 - Spearman (two
floors keep the gradient of a near-constant line bounded: :data:`VAR_FLOOR` on the
variance, :data:`NORM_FLOOR` on the squared norm of the centred soft ranks). Lines
whose targets are constant (no order to learn) are left out of the mean. The loss is
computed in float32 with autocast off, so it is the same under bf16 / fp16 autocast.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from data.errors import ConfigError

DEFAULT_RANK_TAU = 0.1          # in standard deviations of a spot's predictions
DEFAULT_RANK_TYPE_WEIGHT = 0.0  # the per-spot metric only (see SoftRankLoss)
VAR_FLOOR = 1e-4  # added to a line's variance: below ~0.01 spread, ranks soften (no blow-up)
NORM_FLOOR = 1e-2  # added to the squared norm of centred soft ranks (about n^3 / 12)
EPS = 1e-8


def soft_rank(x: torch.Tensor, dim: int = -1, tau: float = DEFAULT_RANK_TAU) -> torch.Tensor:
    """float32 soft ranks (1-based) of ``x`` along ``dim``; x is standardised first.

    Args:
        x: float (..., n, ...); tau: temperature in standard deviations of the line.
    """
    z = x.float().movedim(dim, -1)
    z = (z - z.mean(-1, keepdim=True)) / torch.sqrt(z.var(-1, unbiased=False, keepdim=True)
                                                    + VAR_FLOOR)
    ranks = 0.5 + torch.sigmoid((z.unsqueeze(-1) - z.unsqueeze(-2)) / tau).sum(-1)
    return ranks.movedim(-1, dim)


def hard_rank(y: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """float32 average-tie ranks (1-based) of ``y`` along ``dim`` (no gradient)."""
    z = y.detach().float().movedim(dim, -1)
    diff = z.unsqueeze(-1) - z.unsqueeze(-2)
    ranks = 0.5 + (diff > 0).float().sum(-1) + 0.5 * (diff == 0).float().sum(-1)
    return ranks.movedim(-1, dim)


def rank_correlation(pred: torch.Tensor, target: torch.Tensor, dim: int,
                     tau: float) -> torch.Tensor:
    """Mean Pearson correlation of ``pred``'s soft ranks and ``target``'s ranks along
    ``dim``, over the lines whose target is not constant (0 with no such line).

    Args:
        pred, target: float (B, n_types); dim: 1 per spot, 0 per cell type.
    """
    a = soft_rank(pred, dim, tau)
    b = hard_rank(target, dim)
    a = a - a.mean(dim, keepdim=True)
    b = b - b.mean(dim, keepdim=True)
    bb = (b * b).sum(dim)
    # a floor on a's squared norm: a constant prediction line has a bounded gradient
    corr = (a * b).sum(dim) / torch.sqrt(((a * a).sum(dim) + NORM_FLOOR) * bb + EPS)
    ok = bb > 0
    return (corr * ok).sum() / ok.sum().clamp_min(1)


class SoftRankLoss(nn.Module):
    """1 - soft per-spot Spearman (+ ``type_weight`` x (1 - soft per-type Spearman) over the
    batch) (+ ``l1_weight`` x L1): a scalar float32.

    The per-type term defaults to 0: with the default ``spot_rank`` targets the order of
    the spots within a cell type is that of per-spot ranks, not of abundances, and the
    batch mixes slides; the submitted per-type order comes from a per-type model
    (:mod:`regress.orders`).

    Raises:
        ConfigError: ``tau`` <= 0 or a negative weight.
    """

    def __init__(self, tau: float = DEFAULT_RANK_TAU,
                 type_weight: float = DEFAULT_RANK_TYPE_WEIGHT, l1_weight: float = 0.0) -> None:
        super().__init__()
        if not tau > 0 or type_weight < 0 or l1_weight < 0:
            raise ConfigError(f"soft-rank loss: need tau > 0 and weights >= 0, got tau {tau}, "
                              f"type weight {type_weight}, l1 weight {l1_weight}")
        self.tau, self.type_weight, self.l1_weight = tau, type_weight, l1_weight

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: float (B, n_types), any dtype (computed in float32)."""
        with torch.autocast(pred.device.type, enabled=False):
            pred, target = pred.float(), target.float()
            loss = 1.0 - rank_correlation(pred, target, 1, self.tau)
            if self.type_weight > 0 and len(pred) > 1:
                loss = loss + self.type_weight * (1.0 - rank_correlation(pred, target, 0,
                                                                         self.tau))
            if self.l1_weight > 0:
                loss = loss + self.l1_weight * nn.functional.l1_loss(pred, target)
        return loss


def _plain(loss: type[nn.Module]) -> Callable[..., nn.Module]:
    """A factory of ``loss()`` that takes (and ignores) the soft-rank settings."""
    def make(tau: float = DEFAULT_RANK_TAU,
             type_weight: float = DEFAULT_RANK_TYPE_WEIGHT) -> nn.Module:
        return loss()
    return make


LOSSES: dict[str, Callable[..., nn.Module]] = {
    "l1": _plain(nn.L1Loss),
    "mse": _plain(nn.MSELoss),
    "soft_rank": SoftRankLoss,
    "l1+soft_rank": partial(SoftRankLoss, l1_weight=1.0),
}
RANK_LOSSES = ("soft_rank", "l1+soft_rank")  # the losses that use tau and type_weight


def build_loss(name: str, tau: float = DEFAULT_RANK_TAU,
               type_weight: float = DEFAULT_RANK_TYPE_WEIGHT) -> nn.Module:
    """The loss ``name`` of :data:`LOSSES`; ``tau`` and ``type_weight`` apply to
    :data:`RANK_LOSSES`.

    Raises:
        ConfigError: an unknown name (the message lists the known ones) or bad settings.
    """
    if name not in LOSSES:
        raise ConfigError(f"unknown loss {name!r}; known: {', '.join(LOSSES)}")
    return LOSSES[name](tau=tau, type_weight=type_weight)
