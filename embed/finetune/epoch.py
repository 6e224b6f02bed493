"""One training epoch of a fold: the optimiser, its per-step schedule, grad scaler and
loss (:class:`Optimisation`), the fold's batches (:class:`TrainBatches`: the loader's
workers live for the whole fold) and the epoch itself, every random choice of which is
seeded from (seed, fold, epoch) so that a resumed epoch is the one an uninterrupted run
would have run.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from embed.device import DeviceChoice
from embed.finetune.augment import cutmix
from embed.finetune.batch_augment import BatchAugment
from embed.finetune.config import TrainSettings
from embed.finetune.data import SeededOrder, SpotDataset, fold_loader, steps_per_epoch
from embed.finetune.losses import build_loss


@dataclass
class Optimisation:
    """A fold's AdamW, its per-step cosine schedule, the grad scaler and the loss."""

    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    loss_fn: nn.Module

    @classmethod
    def build(cls, model: nn.Module, st: TrainSettings, n_train: int,
              choice: DeviceChoice) -> Optimisation:
        """AdamW over ``model``, cosine-annealed over every step of ``st.epochs`` epochs of
        ``n_train`` spots; the scaler is on only under fp16 autocast."""
        opt = torch.optim.AdamW(model.parameters(), lr=st.lr, weight_decay=st.weight_decay)
        steps = steps_per_epoch(n_train, st.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=st.epochs * steps)
        scaler = torch.amp.GradScaler(choice.device.type,
                                      enabled=choice.dtype == torch.float16)
        return cls(opt, sched, scaler, build_loss(st.loss, st.rank_tau, st.rank_type_weight))

    def state_dict(self) -> dict:
        """{"optimizer", "scheduler", "scaler"}: their state dicts, for a checkpoint."""
        return {"optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore from a checkpoint (its "optimizer", "scheduler" and "scaler")."""
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])

@dataclass
class TrainBatches:
    """A fold's training batches: the loader (its workers live for the whole fold), its
    order (re-seeded each epoch) and the augmentation on the device."""

    loader: DataLoader
    order: SeededOrder
    augment: BatchAugment

    @classmethod
    def build(cls, train: SpotDataset, augment: BatchAugment, st: TrainSettings,
              choice: DeviceChoice) -> TrainBatches:
        loader, order = fold_loader(train, st.batch_size, st.workers,
                                    pin=choice.device.type == "cuda")
        return cls(loader, order, augment)

def epoch_seed(seed: int, fold: str, epoch: int) -> int:
    """A seed that depends only on (run seed, fold, epoch)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(fold.encode()), epoch])
               .generate_state(1)[0])


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss_fn: nn.Module,
               choice: DeviceChoice) -> torch.Tensor:
    """One optimisation step under the device's autocast; returns the loss (a scalar).

    Args:
        x: float (B, 3, H, W) images on the device; y: float32 (B, n_types) targets.
    """
    with choice.autocast():
        out = model(x)
    loss = loss_fn(out.float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss


def train_epoch(model: nn.Module, batches: TrainBatches, optim: Optimisation,
                choice: DeviceChoice, st: TrainSettings, fold: str, epoch: int
                ) -> tuple[float, int]:
    """One epoch of ``batches`` (0-based ``epoch``), its randomness seeded from (seed,
    fold, epoch): the order and each image's worker augmentation (:class:`SeededOrder`),
    the device's augmentation and CutMix; the schedule steps after every batch. Returns
    (mean loss, images seen)."""
    seed = epoch_seed(st.seed, fold, epoch)
    torch.manual_seed(seed)
    mixer = torch.Generator().manual_seed(seed + 1)
    augmenter = torch.Generator().manual_seed(seed + 2)
    batches.order.set_epoch(seed)
    model.train()
    total, n = 0.0, 0
    bar = tqdm(batches.loader, desc=f"fold {fold} epoch {epoch + 1}/{st.epochs}",
               unit="batch", disable=st.quiet, leave=False)
    for patches, y in bar:
        x = batches.augment(patches.to(choice.device, non_blocking=True), augmenter)
        y = y.to(choice.device, non_blocking=True)
        x, y = cutmix(x, y, st.cutmix_p, mixer)
        if choice.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = train_step(model, x, y, optim.opt, optim.scaler, optim.loss_fn, choice)
        optim.sched.step()
        total, n = total + float(loss.detach()) * len(x), n + len(x)
        bar.set_postfix(loss=f"{total / n:.4f}")
    return total / max(n, 1), n
