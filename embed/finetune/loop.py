"""The fine-tuning loop of one fold: optimiser and schedule, the flat epoch loop, scoring
the held-out slide after every epoch, per-epoch checkpoints and exact resume.

A checkpoint is written (atomically) after every epoch: model, optimizer, scheduler,
grad scaler, history, best epoch so far and the settings it was trained with. A killed
run resumes after its last complete epoch and follows the same schedule: every epoch's
randomness (shuffling, augmentation, CutMix, dropout) is seeded from (seed, fold, epoch),
so a resumed epoch is the epoch an uninterrupted run would have run.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from embed.device import DeviceChoice
from embed.finetune.augment import cutmix
from embed.finetune.checkpoints import (
    checkpoint_path,
    load_checkpoint,
    prune_checkpoints,
    save_atomic,
    saved_epochs,
)
from embed.finetune.config import FinetuneConfig
from embed.finetune.data import SpotDataset, epoch_loader, steps_per_epoch
from embed.finetune.losses import DEFAULT_RANK_TAU, DEFAULT_RANK_TYPE_WEIGHT, build_loss
from embed.finetune.model import predict
from regress.metrics import spearman_per_spot, spearman_per_type

log = logging.getLogger("hespot")


@dataclass(frozen=True)
class TrainSettings:
    """What one fold's training needs beyond the data (a view of the run's config)."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    cutmix_p: float
    loss: str
    val_tta: int
    workers: int
    seed: int
    eval_batch_size: int = 64
    keep_checkpoints: bool = False
    quiet: bool = False
    rank_tau: float = DEFAULT_RANK_TAU
    rank_type_weight: float = DEFAULT_RANK_TYPE_WEIGHT

    @classmethod
    def from_config(cls, cfg: FinetuneConfig) -> TrainSettings:
        """The training part of a run's config."""
        return cls(cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.cutmix_p,
                   cfg.loss, cfg.val_tta, cfg.workers, cfg.seed, cfg.eval_batch_size,
                   cfg.keep_checkpoints, cfg.quiet, cfg.rank_tau, cfg.rank_type_weight)


@dataclass
class FoldOutcome:
    """best_epoch (1-based), its held-out per-spot Spearman, and one dict per epoch."""

    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, row: dict[str, float]) -> None:
        """Append an epoch's row; it becomes the best when its ``val_spot`` beats it."""
        self.history.append(row)
        if row["val_spot"] > self.best_score:
            self.best_epoch, self.best_score = int(row["epoch"]), row["val_spot"]


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


def train_epoch(model: nn.Module, train: SpotDataset, optim: Optimisation,
                choice: DeviceChoice, st: TrainSettings, fold: str, epoch: int
                ) -> tuple[float, int]:
    """One epoch over ``train`` (0-based ``epoch``), its randomness seeded from (seed, fold,
    epoch); the schedule steps after every batch. Returns (mean loss, images seen)."""
    seed = epoch_seed(st.seed, fold, epoch)
    torch.manual_seed(seed)
    mixer = torch.Generator().manual_seed(seed + 1)
    loader = epoch_loader(train, st.batch_size, st.workers, seed)
    model.train()
    total, n = 0.0, 0
    bar = tqdm(loader, desc=f"fold {fold} epoch {epoch + 1}/{st.epochs}", unit="batch",
               disable=st.quiet, leave=False)
    for x, y in bar:
        x, y = cutmix(x, y, st.cutmix_p, mixer)
        x = x.to(choice.device, non_blocking=True)
        if choice.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = y.to(choice.device, non_blocking=True)
        loss = train_step(model, x, y, optim.opt, optim.scaler, optim.loss_fn, choice)
        optim.sched.step()
        total, n = total + float(loss.detach()) * len(x), n + len(x)
        bar.set_postfix(loss=f"{total / n:.4f}")
    return total / max(n, 1), n


def score(model: nn.Module, patches: np.ndarray, Y: np.ndarray, transform: Callable,
          choice: DeviceChoice, st: TrainSettings) -> tuple[float, float]:
    """Mean per-spot and per-type Spearman of the held-out slide's predictions
    (``st.val_tta`` views). patches: uint8 (n, S, S, 3); Y: float (n, n_types)."""
    P = predict(model, patches, transform, choice, st.val_tta, st.eval_batch_size)
    return float(spearman_per_spot(Y, P).mean()), float(spearman_per_type(Y, P).mean())


def resume(model: nn.Module, optim: Optimisation, folder: Path, settings: dict, fold: str,
           epochs: int) -> FoldOutcome:
    """Load the fold's last complete epoch into ``model`` and ``optim``, if there is one.

    Returns:
        Its outcome so far (an empty one when nothing is saved).

    Raises:
        ConfigError: the checkpoint was written with other ``settings``.
    """
    done = saved_epochs(folder)
    if not done:
        return FoldOutcome(0, -math.inf)
    state = load_checkpoint(checkpoint_path(folder, done[-1]), settings)
    model.load_state_dict(state["model"])
    optim.load_state_dict(state)
    outcome = FoldOutcome(state["best_epoch"], state["best_score"], state["history"])
    if done[-1] < epochs:
        log.info("fold %s: resuming after epoch %d of %d", fold, done[-1], epochs)
    else:
        log.info("fold %s: all %d epochs done (best %d)", fold, epochs, outcome.best_epoch)
    return outcome


def save_epoch(folder: Path, epoch: int, model: nn.Module, optim: Optimisation,
               outcome: FoldOutcome, settings: dict, keep_all: bool) -> None:
    """Checkpoint ``epoch`` (1-based) atomically; unless ``keep_all``, delete every other
    epoch's checkpoint but the best's."""
    save_atomic({"model": model.state_dict(), **optim.state_dict(), "epoch": epoch,
                 "best_epoch": outcome.best_epoch, "best_score": outcome.best_score,
                 "history": outcome.history, "settings": settings},
                checkpoint_path(folder, epoch))
    if not keep_all:
        prune_checkpoints(folder, {epoch, outcome.best_epoch})


def train_fold(model: nn.Module, fold: str, folder: Path, train: SpotDataset,
               val_patches: np.ndarray, val_Y: np.ndarray, valid_transform: Callable,
               choice: DeviceChoice, st: TrainSettings, settings: dict,
               stop_after: int | None = None) -> FoldOutcome:
    """Train ``model`` on ``train``, scoring the held-out slide after every epoch.

    Args:
        model: a fresh :class:`SpotRegressor` (its state is replaced on resume).
        fold: the held-out slide (names the fold's seeds).
        folder: the fold's checkpoint folder; a complete epoch there is resumed from.
        train: training spots (augmenting transform).
        val_patches: uint8 (n, S, S, 3); val_Y: float (n, n_types) raw abundances.
        settings: JSON-able dict stored in every checkpoint and compared on resume.
        stop_after: stop after this many epochs in total (to simulate an interruption).

    Returns:
        The outcome; the best epoch's checkpoint stays in ``folder``.
    """
    model.to(choice.device)
    if choice.channels_last:
        model.to(memory_format=torch.channels_last)
    optim = Optimisation.build(model, st, len(train), choice)
    outcome = resume(model, optim, folder, settings, fold, st.epochs)
    if outcome.history and not st.keep_checkpoints:  # a run killed between save and prune
        prune_checkpoints(folder, {len(outcome.history), outcome.best_epoch})
    last = min(st.epochs, stop_after) if stop_after else st.epochs
    for epoch in range(len(outcome.history), last):
        t0 = time.perf_counter()
        lr0 = optim.sched.get_last_lr()[0]
        loss, n = train_epoch(model, train, optim, choice, st, fold, epoch)
        train_s = time.perf_counter() - t0
        spot, per_type = score(model, val_patches, val_Y, valid_transform, choice, st)
        row = {"epoch": epoch + 1, "loss": loss, "lr_start": lr0,
               "lr_end": optim.sched.get_last_lr()[0], "val_spot": spot, "val_type": per_type,
               "train_seconds": train_s, "seconds": time.perf_counter() - t0,
               "images_per_s": n / train_s if train_s else 0.0}
        outcome.record(row)
        save_epoch(folder, epoch + 1, model, optim, outcome, settings, st.keep_checkpoints)
        log.info("fold %s epoch %d/%d: loss %.4f, held-out per-spot %.3f per-type %.3f, "
                 "%.0f s (%.1f images/s)", fold, epoch + 1, st.epochs, loss, spot, per_type,
                 row["seconds"], row["images_per_s"])
    return outcome
