"""Patches -> model inputs -> TTA-averaged features (pooled, and optionally per stage)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embed.backbones import Backbone
from embed.device import DeviceChoice, keep_freed_memory
from embed.tta import average_views, stack_views


def preprocess(patches: np.ndarray, backbone: Backbone) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float32 (B, 3, input, input), resized and normalised."""
    x = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float().div_(255)
    size = backbone.input_size
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > size)
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    return (x - mean) / std


def mean_std_pool(fmap: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> float32 (N, 2C): per-channel spatial mean, then std."""
    f = fmap.float()
    return torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3), unbiased=False)], dim=1)


@dataclass
class FeatureExtractor:
    """Runs a backbone over all TTA views of a batch of patches in one forward pass.

    Attributes:
        stage_indices: intermediate stages (timm ``forward_intermediates`` indices) to
            mean+std pool from the same forward pass; empty for pooled features only.
    """

    model: nn.Module
    backbone: Backbone
    choice: DeviceChoice
    n_views: int = 8
    stage_indices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.choice.device.type == "cpu":
            keep_freed_memory()
        self.model = self.model.to(self.choice.device).eval()
        if self.choice.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)

    def stage_dims(self) -> int:
        """Width of the stage features: 2 x the summed channels of the chosen stages."""
        info = self.model.feature_info
        chans = info.channels() if hasattr(info, "channels") else [d["num_chs"] for d in info]
        return 2 * sum(chans[i] for i in self.stage_indices)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Features of preprocessed patches.

        Args:
            x: float32 (B, 3, input, input) from :func:`preprocess`.

        Returns:
            {"pooled": float32 (B, num_features)} and, with stages,
            {"stages": float32 (B, stage_dims)}.
        """
        x = stack_views(x.to(self.choice.device, non_blocking=True), self.n_views)
        if self.choice.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = {}
        with self.choice.autocast():
            if self.stage_indices:
                final, inter = self.model.forward_intermediates(
                    x, indices=list(self.stage_indices))
                pooled = self.model.forward_head(final, pre_logits=True)
                stages = torch.cat([mean_std_pool(f) for f in inter], dim=1)
                out["stages"] = average_views(stages.float(), self.n_views)
            else:
                pooled = self.model(x)
        out["pooled"] = average_views(pooled.float(), self.n_views)
        return {k: v.cpu().numpy() for k, v in out.items()}
