"""The fine-tuning model: a pooled-feature encoder with a regression head, and its
prediction averaged over dihedral (TTA) views. (Its losses: :mod:`embed.finetune.losses`.)"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from data.errors import ConfigError
from embed.device import DeviceChoice
from embed.finetune.losses import LOSSES
from embed.tta import average_views, stack_views

__all__ = ["HEADS", "LOSSES", "SpotRegressor", "predict"]
HEADS = ("sigmoid", "linear")


class SpotRegressor(nn.Module):
    """A pooled-feature encoder, then Linear (then Sigmoid): (B, 3, H, W) -> (B, n_types).

    With ``head="sigmoid"`` every output lies in [0, 1], the range of rank-scaled targets.

    Raises:
        ConfigError: ``head`` is not one of :data:`HEADS`.
    """

    def __init__(self, encoder: nn.Module, n_features: int, n_outputs: int,
                 head: str = "sigmoid") -> None:
        super().__init__()
        if head not in HEADS:
            raise ConfigError(f"head must be one of {HEADS}, got {head!r}")
        self.encoder = encoder
        self.head = nn.Linear(n_features, n_outputs)
        self.sigmoid = head == "sigmoid"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(self.encoder(x))
        return torch.sigmoid(out) if self.sigmoid else out


@torch.inference_mode()
def predict(model: nn.Module, patches: np.ndarray, transform: Callable, choice: DeviceChoice,
            n_views: int = 8, batch_size: int = 64) -> np.ndarray:
    """float32 (n, n_outputs): the model's output averaged over ``n_views`` dihedral views.

    Args:
        patches: uint8 (n, S, S, 3); transform: the validation pipeline (ToTensorV2 last).
    """
    model.eval()
    outs = []
    for start in range(0, len(patches), batch_size):
        x = torch.stack([transform(image=p)["image"] for p in patches[start:start + batch_size]])
        x = stack_views(x.to(choice.device), n_views)
        if choice.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with choice.autocast():
            out = model(x)
        outs.append(average_views(out.float(), n_views).cpu())
    n_out = model.head.out_features if hasattr(model, "head") else 0
    return torch.cat(outs).numpy() if outs else np.zeros((0, n_out), np.float32)
