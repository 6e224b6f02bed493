"""One LOSO fold of fine-tuning: the model, the flat training loop, checkpoints, TTA
prediction.

A checkpoint is written (atomically) after every epoch: model, optimizer, scheduler,
grad scaler, history, best epoch so far and the settings it was trained with. A killed
run resumes after its last complete epoch and follows the same schedule: every epoch's
randomness (shuffling, augmentation, CutMix, dropout) is seeded from (seed, fold, epoch),
so a resumed epoch is the epoch an uninterrupted run would have run.
"""

from __future__ import annotations

import copy
import logging
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from data.errors import ConfigError
from embed.augment import build_train_transform, build_valid_transform, cutmix
from embed.backbones import Backbone
from embed.checkpoints import (
    checkpoint_path,
    load_checkpoint,
    prune_checkpoints,
    save_arrays,
    save_atomic,
    saved_epochs,
)
from embed.device import DeviceChoice
from embed.train_data import SlidePatches, SpotDataset, epoch_loader, steps_per_epoch
from embed.tta import average_views, stack_views
from regress.metrics import spearman_per_spot, spearman_per_type

if TYPE_CHECKING:
    from embed.finetune import FinetuneConfig

log = logging.getLogger("hespot")

LOSSES: dict[str, Callable[[], nn.Module]] = {"l1": nn.L1Loss, "mse": nn.MSELoss}
HEADS = ("sigmoid", "linear")


class SpotRegressor(nn.Module):
    """A pooled-feature encoder, then Linear (then Sigmoid): (B, 3, H, W) -> (B, n_types).

    With ``head="sigmoid"`` every output lies in [0, 1], the range of rank-scaled targets.
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


@dataclass
class FoldOutcome:
    """best_epoch (1-based), its held-out per-spot Spearman, and one dict per epoch."""

    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)


def epoch_seed(seed: int, fold: str, epoch: int) -> int:
    """A seed that depends only on (run seed, fold, epoch)."""
    return int(np.random.SeedSequence([seed, zlib.crc32(fold.encode()), epoch])
               .generate_state(1)[0])


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


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, loss_fn: nn.Module,
               choice: DeviceChoice) -> torch.Tensor:
    """One optimisation step under the device's autocast; returns the loss (a scalar)."""
    with choice.autocast():
        out = model(x)
    loss = loss_fn(out.float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    return loss


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
    opt = torch.optim.AdamW(model.parameters(), lr=st.lr, weight_decay=st.weight_decay)
    steps = steps_per_epoch(len(train), st.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=st.epochs * steps)
    scaler = torch.amp.GradScaler(choice.device.type,
                                  enabled=choice.dtype == torch.float16)
    loss_fn = LOSSES[st.loss]()
    outcome = FoldOutcome(0, -math.inf)
    done = saved_epochs(folder)
    if done:
        state = load_checkpoint(checkpoint_path(folder, done[-1]), settings)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        outcome = FoldOutcome(state["best_epoch"], state["best_score"], state["history"])
        if done[-1] < st.epochs:
            log.info("fold %s: resuming after epoch %d of %d", fold, done[-1], st.epochs)
        else:
            log.info("fold %s: all %d epochs done (best %d)", fold, st.epochs,
                     outcome.best_epoch)
    last = min(st.epochs, stop_after) if stop_after else st.epochs
    for epoch in range(len(outcome.history), last):
        t0 = time.perf_counter()
        seed = epoch_seed(st.seed, fold, epoch)
        torch.manual_seed(seed)
        mixer = torch.Generator().manual_seed(seed + 1)
        loader = epoch_loader(train, st.batch_size, st.workers, seed)
        lr0 = sched.get_last_lr()[0]
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
            loss = train_step(model, x, y, opt, scaler, loss_fn, choice)
            sched.step()
            total, n = total + float(loss.detach()) * len(x), n + len(x)
            bar.set_postfix(loss=f"{total / n:.4f}")
        train_s = time.perf_counter() - t0
        P = predict(model, val_patches, valid_transform, choice, st.val_tta, st.eval_batch_size)
        spot = float(spearman_per_spot(val_Y, P).mean())
        row = {"epoch": epoch + 1, "loss": total / max(n, 1), "lr_start": lr0,
               "lr_end": sched.get_last_lr()[0], "val_spot": spot,
               "val_type": float(spearman_per_type(val_Y, P).mean()),
               "train_seconds": train_s, "seconds": time.perf_counter() - t0,
               "images_per_s": n / train_s if train_s else 0.0}
        outcome.history.append(row)
        if spot > outcome.best_score:
            outcome.best_epoch, outcome.best_score = epoch + 1, spot
        save_atomic({"model": model.state_dict(), "optimizer": opt.state_dict(),
                     "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                     "epoch": epoch + 1, "best_epoch": outcome.best_epoch,
                     "best_score": outcome.best_score, "history": outcome.history,
                     "settings": settings}, checkpoint_path(folder, epoch + 1))
        if not st.keep_checkpoints:
            prune_checkpoints(folder, {epoch + 1, outcome.best_epoch})
        log.info("fold %s epoch %d/%d: loss %.4f, held-out per-spot %.3f per-type %.3f, "
                 "%.0f s (%.1f images/s)", fold, epoch + 1, st.epochs, row["loss"], spot,
                 row["val_type"], row["seconds"], row["images_per_s"])
    return outcome


def load_best(model: nn.Module, folder: Path, outcome: FoldOutcome, settings: dict) -> nn.Module:
    """``model`` with the weights of the fold's best epoch."""
    state = load_checkpoint(checkpoint_path(folder, outcome.best_epoch), settings)
    model.load_state_dict(state["model"])
    return model


def run_fold(cfg: FinetuneConfig, fold: str, data: SlidePatches, train_slides: list[str],
             test_slides: list[str], encoder: nn.Module, entry: Backbone,
             choice: DeviceChoice, root: Path, settings: dict) -> dict:
    """Train (or resume) the fold holding out ``fold``; predict it and the test slides
    with the best epoch and ``cfg.tta`` views (cached in the fold's folder).

    Returns:
        {"best_epoch", "history", "predict_seconds", "oof": float32 (n, n_types),
        "test": {slide: float32 (n, n_types)}}.
    """
    folder = root / f"fold_{fold}"
    cache = folder / f"predictions_tta{cfg.tta}.npz"
    X, Y = data.stack([s for s in train_slides if s != fold], cfg.target)
    train_t = build_train_transform(cfg.augment, entry.mean, entry.std, cfg.patch_px,
                                    cfg.input_px, seed=cfg.seed)
    valid_t = build_valid_transform(entry.mean, entry.std, cfg.patch_px, cfg.input_px)
    torch.manual_seed(cfg.seed)  # the same head initialisation in every fold and run
    model = SpotRegressor(copy.deepcopy(encoder), encoder.num_features, Y.shape[1], cfg.head)
    st = TrainSettings(cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.cutmix_p,
                       cfg.loss, cfg.val_tta, cfg.workers, cfg.seed, cfg.eval_batch_size,
                       cfg.keep_checkpoints, cfg.quiet)
    outcome = train_fold(model, fold, folder, SpotDataset(X, Y, train_t), data.patches[fold],
                         data.Y[fold], valid_t, choice, st, settings)
    result = {"best_epoch": outcome.best_epoch, "history": outcome.history}
    keys = ["oof", *(f"test_{s}" for s in test_slides)]
    if cache.is_file():
        with np.load(cache) as z:
            if int(z["best_epoch"]) == outcome.best_epoch and all(k in z for k in keys):
                log.info("fold %s: predictions (TTA %d) read from %s", fold, cfg.tta, cache)
                return {**result, "predict_seconds": float(z["seconds"]), "oof": z["oof"],
                        "test": {s: z[f"test_{s}"] for s in test_slides}}
    t0 = time.perf_counter()
    load_best(model, folder, outcome, settings)
    preds = {s: predict(model, data.patches[s], valid_t, choice, cfg.tta, cfg.eval_batch_size)
             for s in [fold, *test_slides]}
    seconds = time.perf_counter() - t0
    save_arrays(cache, best_epoch=outcome.best_epoch, seconds=seconds, oof=preds[fold],
                **{f"test_{s}": preds[s] for s in test_slides})
    return {**result, "predict_seconds": seconds, "oof": preds[fold],
            "test": {s: preds[s] for s in test_slides}}
