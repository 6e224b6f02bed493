"""Dihedral test-time augmentation: the 8 flips/rotations of a square patch."""

from __future__ import annotations

import torch

from data.errors import ConfigError

TTA_CHOICES = (1, 2, 4, 8)


def dihedral_views(n_views: int) -> list[tuple[int, bool]]:
    """(quarter turns k, horizontal flip) for each view.

    1: identity; 2: identity + flip; 4: the 4 rotations; 8: rotations x flip. The sets of
    4 and 8 are closed under rotation, so their averaged features are rotation invariant.
    """
    if n_views not in TTA_CHOICES:
        raise ConfigError(f"TTA views must be one of {TTA_CHOICES}, got {n_views}")
    if n_views == 1:
        return [(0, False)]
    if n_views == 2:
        return [(0, False), (0, True)]
    rotations = [(k, False) for k in range(4)]
    return rotations if n_views == 4 else rotations + [(k, True) for k in range(4)]


def stack_views(x: torch.Tensor, n_views: int) -> torch.Tensor:
    """(B, C, H, W) -> (V * B, C, H, W): every view of every patch, view-major."""
    views = []
    for k, flip in dihedral_views(n_views):
        v = torch.flip(x, dims=(3,)) if flip else x
        views.append(torch.rot90(v, k, dims=(2, 3)) if k else v)
    return torch.cat(views, dim=0)


def average_views(features: torch.Tensor, n_views: int) -> torch.Tensor:
    """(V * B, D) -> (B, D): mean over the views of each patch."""
    return features.reshape(n_views, -1, *features.shape[1:]).mean(dim=0)
