"""Patches -> model inputs -> TTA-averaged features (pooled, and optionally per stage)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embed.backbones import Backbone
from embed.device import DeviceChoice, keep_freed_memory
from embed.runners import make_runner, resolve_runner
from embed.stain import jitter_hed
from embed.tta import average_views, stack_views


def normalisation(backbone: Backbone, device: torch.device | str = "cpu"
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The backbone's (mean, std) as float32 (1, 3, 1, 1) tensors on ``device``."""
    mean = torch.tensor(backbone.mean).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std).view(1, 3, 1, 1)
    return mean.to(device), std.to(device)


def preprocess(patches: np.ndarray | torch.Tensor, backbone: Backbone,
               norm: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """uint8 (B, S, S, 3) -> float32 (B, 3, input, input), resized and normalised, where
    the patches are (a tensor on the device: there; a numpy array: on the CPU).

    Args:
        norm: :func:`normalisation` on the patches' device (made here when None; a caller
            that runs many batches on a GPU passes them, so no host-to-device copy waits
            for the queued work).
    """
    x = patches if isinstance(patches, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(patches))
    x = x.permute(0, 3, 1, 2).float().div_(255)
    size = backbone.input_size
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                          antialias=x.shape[-1] > size)
    mean, std = norm if norm is not None else normalisation(backbone, x.device)
    return (x - mean) / std


def mean_std_pool(fmap: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> float32 (N, 2C): per-channel spatial mean, then std."""
    f = fmap.float()
    return torch.cat([f.mean(dim=(2, 3)), f.std(dim=(2, 3), unbiased=False)], dim=1)


class ViewFeatures(nn.Module):
    """The whole per-batch computation as one module (so a runner can trace it):
    dihedral views -> (HED jitter of the views after the first) -> backbone -> pooled
    (and mean+std pooled stages) -> view average.

    ``forward(x)``: float32 (B, 3, in, in) -> (pooled (B, num_features),) or
    (pooled, stages (B, stage_dims)).

    Args:
        hed_norm: the backbone's (mean, std) to jitter the views' HED stains with
            (:func:`embed.stain.jitter_hed`); None: no jitter.
    """

    def __init__(self, model: nn.Module, n_views: int, stage_indices: tuple[int, ...] = (),
                 channels_last: bool = False,
                 hed_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None) -> None:
        super().__init__()
        self.model = model
        self.n_views = n_views
        self.stage_indices = list(stage_indices)
        self.channels_last = channels_last
        self.hed_norm = hed_norm

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = stack_views(x, self.n_views)
        if self.hed_norm is not None:
            x = jitter_hed(x, self.n_views, *self.hed_norm)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.stage_indices:
            return (average_views(self.model(x).float(), self.n_views),)
        final, inter = self.model.forward_intermediates(x, indices=self.stage_indices)
        pooled = self.model.forward_head(final, pre_logits=True)
        stages = torch.cat([mean_std_pool(f) for f in inter], dim=1)
        return (average_views(pooled.float(), self.n_views),
                average_views(stages, self.n_views))


@dataclass(frozen=True)
class Pending:
    """A launched batch (:meth:`FeatureExtractor.launch`): its outputs (on the host once
    ``done`` has happened; None: already there)."""

    outputs: tuple[torch.Tensor, ...]
    done: torch.cuda.Event | None = None


@dataclass
class FeatureExtractor:
    """Runs a backbone over all TTA views of a batch of patches in one forward pass.

    Attributes:
        stage_indices: intermediate stages (timm ``forward_intermediates`` indices) to
            mean+std pool from the same forward pass; empty for pooled features only.
        runner: how the forward runs (:data:`embed.runners.RUNNERS`, or "auto").
        batch_spots: patches per call; a traced graph is built for this many (default: the
            first call's).
        hed: jitter the HED stains of every view after the first (``+hed``).
    """

    model: nn.Module
    backbone: Backbone
    choice: DeviceChoice
    n_views: int = 8
    stage_indices: tuple[int, ...] = ()
    runner: str = "eager"
    batch_spots: int | None = None  # patches per call (fixes a traced graph's batch size)
    hed: bool = False

    def __post_init__(self) -> None:
        if self.choice.device.type == "cpu":
            keep_freed_memory()
        self.model = self.model.to(self.choice.device).eval()
        if self.choice.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.runner = resolve_runner(self.runner, self.choice, self.model)
        self._forward = None  # built at the first call (meta-device models never run)
        self._norm: tuple[torch.Tensor, torch.Tensor] | None = None  # on the device

    def stage_dims(self) -> int:
        """Width of the stage features: 2 x the summed channels of the chosen stages."""
        info = self.model.feature_info
        chans = info.channels() if hasattr(info, "channels") else [d["num_chs"] for d in info]
        return 2 * sum(chans[i] for i in self.stage_indices)

    def prepare(self, patches: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, 3) patches (shared or pinned CPU memory) -> the model's float32
        (B, 3, input, input) input on the device: copied without waiting (``non_blocking``:
        the copy overlaps the batch the device is running), then converted, resized and
        normalised there (:func:`preprocess`; on a CPU the same operations as ever, so the
        same bits)."""
        if self._norm is None:
            self._norm = normalisation(self.backbone, self.choice.device)
        x = patches.to(self.choice.device, non_blocking=True)
        return preprocess(x, self.backbone, self._norm)

    @torch.inference_mode()
    def launch(self, x: torch.Tensor) -> Pending:
        """Start the forward pass of ``x`` (float32 (B, 3, input, input) from
        :func:`preprocess` or :meth:`prepare`). On CUDA the work is queued and its outputs
        copied back without waiting, so the caller can prepare and queue the next batch
        while this one runs; :meth:`collect` waits for them."""
        if self._forward is None:
            norm = (self.backbone.mean, self.backbone.std) if self.hed else None
            module = ViewFeatures(self.model, self.n_views, self.stage_indices,
                                  self.choice.channels_last, norm).eval()
            self._forward = make_runner(self.runner, module, self.choice, self.batch_spots)
        out = self._forward(x.to(self.choice.device, non_blocking=True))
        if self.choice.device.type != "cuda":
            return Pending(out)
        host = tuple(o.to("cpu", non_blocking=True) for o in out)
        done = torch.cuda.Event()
        done.record()
        return Pending(host, done)

    @staticmethod
    def collect(pending: Pending) -> dict[str, np.ndarray]:
        """The features of a launched batch, once they are on the host:
        {"pooled": float32 (B, num_features)} and, with stages,
        {"stages": float32 (B, stage_dims)}."""
        if pending.done is not None:
            pending.done.synchronize()
        names = ("pooled", "stages")[:len(pending.outputs)]
        return {k: v.cpu().numpy() for k, v in zip(names, pending.outputs, strict=True)}

    def __call__(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """Features of preprocessed patches (:meth:`launch`, then :meth:`collect`).

        Args:
            x: float32 (B, 3, input, input) from :func:`preprocess`.

        Returns:
            {"pooled": float32 (B, num_features)} and, with stages,
            {"stages": float32 (B, stage_dims)}.
        """
        return self.collect(self.launch(x))
