"""The fine-tuning loop of one fold: the flat epoch loop (each epoch:
:mod:`embed.finetune.epoch`), scoring after every epoch (the inner slide, which chooses
the epoch and when to stop, and the held-out slide, which is only reported), per-epoch
checkpoints and exact resume.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embed.device import DeviceChoice
from embed.finetune.batch_augment import BatchAugment
from embed.finetune.checkpoints import (
    checkpoint_path,
    load_checkpoint,
    prune_checkpoints,
    save_atomic,
    saved_epochs,
)
from embed.finetune.config import TrainSettings
from embed.finetune.data import SpotDataset
from embed.finetune.epoch import Optimisation, TrainBatches, train_epoch
from embed.finetune.model import predict
from regress.metrics import spearman_per_spot, spearman_per_type

log = logging.getLogger("hespot")


@dataclass
class FoldOutcome:
    """best_epoch (1-based), its inner per-spot Spearman, and one dict per epoch."""

    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)

    def record(self, row: dict[str, float]) -> None:
        """Append an epoch's row; it becomes the best when its ``inner_spot`` (the inner
        slide's per-spot Spearman) beats it. The first epoch is the best until one does,
        whatever it scores (NaN: predictions that do not vary count as the worst)."""
        self.history.append(row)
        score = row["inner_spot"] if np.isfinite(row["inner_spot"]) else -math.inf
        if self.best_epoch == 0 or score > self.best_score:
            self.best_epoch, self.best_score = int(row["epoch"]), score

    def finished(self, st: TrainSettings) -> bool:
        """All ``st.epochs`` run, or ``st.patience`` epochs since the inner score last
        rose."""
        done = len(self.history)
        return done >= st.epochs or done - self.best_epoch >= st.patience

#: a slide's patches, uint8 (n, S, S, 3), and raw abundances, float (n, n_types)
Slide = tuple[np.ndarray, np.ndarray]

def score(model: nn.Module, patches: np.ndarray, Y: np.ndarray, transform: Callable,
          choice: DeviceChoice, st: TrainSettings) -> tuple[float, float]:
    """Mean per-spot and per-type Spearman of a slide's predictions (``st.val_tta``
    views). patches: uint8 (n, S, S, 3); Y: float (n, n_types)."""
    P = predict(model, patches, transform, choice, st.val_tta, st.eval_batch_size)
    return float(spearman_per_spot(Y, P).mean()), float(spearman_per_type(Y, P).mean())


def resume(model: nn.Module, optim: Optimisation, folder: Path, settings: dict, fold: str,
           st: TrainSettings) -> FoldOutcome:
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
    if not outcome.finished(st):
        log.info("fold %s: resuming after epoch %d of %d at the most", fold, done[-1],
                 st.epochs)
    else:
        log.info("fold %s: trained, %d epochs (best %d)", fold, done[-1], outcome.best_epoch)
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
               augment: BatchAugment, inner: Slide, held_out: Slide,
               valid_transform: Callable, choice: DeviceChoice, st: TrainSettings,
               settings: dict, stop_after: int | None = None) -> FoldOutcome:
    """Train ``model`` on ``train``, scoring the inner and the held-out slide after every
    epoch; the inner slide's per-spot Spearman chooses the best epoch and stops the
    training ``st.patience`` epochs after it last rose (at ``st.epochs`` at the most).

    Args:
        model: a fresh :class:`SpotRegressor` (its state is replaced on resume).
        fold: the held-out slide (names the fold's seeds).
        folder: the fold's checkpoint folder; a complete epoch there is resumed from.
        train: training spots (the workers' half of the augmentation: uint8 images).
        augment: the device's half (flips, colour, normalisation).
        inner, held_out: (uint8 (n, S, S, 3) patches, float (n, n_types) raw
            abundances) of the slide that chooses the epoch (not trained on) and of the
            fold's held-out slide (only reported).
        settings: JSON-able dict stored in every checkpoint and compared on resume.
        stop_after: stop after this many epochs in total (to simulate an interruption).

    Returns:
        The outcome; the best epoch's checkpoint stays in ``folder``.
    """
    model.to(choice.device)
    if choice.channels_last:
        model.to(memory_format=torch.channels_last)
    optim = Optimisation.build(model, st, len(train), choice)
    outcome = resume(model, optim, folder, settings, fold, st)
    if outcome.history and not st.keep_checkpoints:  # a run killed between save and prune
        prune_checkpoints(folder, {len(outcome.history), outcome.best_epoch})
    batches = TrainBatches.build(train, augment, st, choice) if not outcome.finished(st) \
        else None
    while not outcome.finished(st) and not (stop_after and len(outcome.history) >= stop_after):
        epoch = len(outcome.history)
        t0 = time.perf_counter()
        lr0 = optim.sched.get_last_lr()[0]
        loss, n = train_epoch(model, batches, optim, choice, st, fold, epoch)
        train_s = time.perf_counter() - t0
        inner_spot, inner_type = score(model, *inner, valid_transform, choice, st)
        spot, per_type = score(model, *held_out, valid_transform, choice, st)
        row = {"epoch": epoch + 1, "loss": loss, "lr_start": lr0,
               "lr_end": optim.sched.get_last_lr()[0], "inner_spot": inner_spot,
               "inner_type": inner_type, "val_spot": spot, "val_type": per_type,
               "train_seconds": train_s, "seconds": time.perf_counter() - t0,
               "images_per_s": n / train_s if train_s else 0.0}
        outcome.record(row)
        save_epoch(folder, epoch + 1, model, optim, outcome, settings, st.keep_checkpoints)
        log.info("fold %s epoch %d/%d: loss %.4f, inner per-spot %.3f (best epoch %d), "
                 "held-out per-spot %.3f per-type %.3f, %.0f s (%.1f images/s)", fold,
                 epoch + 1, st.epochs, loss, inner_spot, outcome.best_epoch, spot, per_type,
                 row["seconds"], row["images_per_s"])
    if outcome.finished(st) and len(outcome.history) < st.epochs:
        log.info("fold %s: stopped after epoch %d, %d epochs without a better inner score "
                 "(best epoch %d)", fold, len(outcome.history), st.patience,
                 outcome.best_epoch)
    return outcome
