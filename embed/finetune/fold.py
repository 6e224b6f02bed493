"""One LOSO fold, end to end: the held-out slide's model is built, trained (or resumed,
:func:`embed.finetune.loop.train_fold`) on the other train slides but the inner one
(:func:`inner_split`), whose score chooses the epoch, and its best epoch predicts the
held-out slide and the test slides with TTA; the predictions are cached in the fold's
folder (``predictions_tta<k>.npz``), so a rerun reads them back.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embed.backbones import Backbone
from embed.device import DeviceChoice
from embed.finetune.augment import build_valid_transform, build_worker_transform
from embed.finetune.batch_augment import DEVICE_PARTS, BatchAugment
from embed.finetune.checkpoints import checkpoint_path, load_checkpoint, save_arrays
from embed.finetune.config import FinetuneConfig, TrainSettings
from embed.finetune.data import SlidePatches, SpotDataset
from embed.finetune.loop import FoldOutcome, Slide, train_fold
from embed.finetune.model import SpotRegressor, predict
from regress.targets import transform_targets

log = logging.getLogger("hespot")


def load_best(model: nn.Module, folder: Path, outcome: FoldOutcome, settings: dict) -> nn.Module:
    """``model`` with the weights of the fold's best epoch."""
    state = load_checkpoint(checkpoint_path(folder, outcome.best_epoch), settings)
    model.load_state_dict(state["model"])
    return model


def read_predictions(cache: Path, best_epoch: int, test_slides: list[str]) -> dict | None:
    """The fold's cached predictions if ``cache`` holds them for ``best_epoch`` and every
    test slide: {"predict_seconds", "oof": float32 (n, n_types), "test": {slide: ...}}."""
    if not cache.is_file():
        return None
    keys = ["oof", *(f"test_{s}" for s in test_slides)]
    with np.load(cache) as z:
        if int(z["best_epoch"]) != best_epoch or not all(k in z for k in keys):
            return None
        return {"predict_seconds": float(z["seconds"]), "oof": z["oof"],
                "test": {s: z[f"test_{s}"] for s in test_slides}}


def inner_split(data: SlidePatches, slides: list[str], target: str
                ) -> tuple[tuple[np.ndarray, np.ndarray], Slide, str]:
    """The fold's training data and its inner slide, which chooses the epoch.

    With two or more ``slides``: the median-sized one (ties by name) is the inner slide,
    the others are trained on. With one: the last fifth of its spots.

    Returns:
        ((uint8 (n, S, S, 3) patches, float32 (n, n_types) ``target`` targets) to train
        on, (patches, raw abundances) of the inner slide, a description of it).
    """
    if len(slides) >= 2:
        inner = sorted(slides, key=lambda s: (len(data.Y[s]), s))[len(slides) // 2]
        train = data.stack([s for s in slides if s != inner], target)
        return train, (data.patches[inner], data.Y[inner]), inner
    (slide,) = slides
    P, A = data.patches[slide], data.Y[slide]
    k = max(1, len(P) // 5)
    train = (P[:-k], transform_targets(A[:-k], target).astype(np.float32))  # after the split
    return train, (P[-k:], A[-k:]), f"{slide} (its last {k} spots)"


def run_fold(cfg: FinetuneConfig, fold: str, data: SlidePatches, train_slides: list[str],
             test_slides: list[str], encoder: nn.Module, entry: Backbone,
             choice: DeviceChoice, root: Path, settings: dict) -> dict:
    """Train (or resume) the fold holding out ``fold``; predict it and the test slides
    with the best epoch and ``cfg.tta`` views (cached in the fold's folder).

    Returns:
        {"best_epoch", "history", "inner", "predict_seconds", "oof": float32 (n, n_types),
        "test": {slide: float32 (n, n_types)}}.
    """
    folder = root / f"fold_{fold}"
    cache = folder / f"predictions_tta{cfg.tta}.npz"
    (X, Y), inner, inner_name = inner_split(data, [s for s in train_slides if s != fold],
                                            cfg.target)
    train_t = build_worker_transform(cfg.augment, cfg.patch_px, cfg.input_px, seed=cfg.seed)
    augment = BatchAugment(tuple(p for p in cfg.augment if p in DEVICE_PARTS), entry.mean,
                           entry.std)
    valid_t = build_valid_transform(entry.mean, entry.std, cfg.patch_px, cfg.input_px)
    torch.manual_seed(cfg.seed)  # the same head initialisation in every fold and run
    model = SpotRegressor(copy.deepcopy(encoder), encoder.num_features, Y.shape[1], cfg.head)
    outcome = train_fold(model, fold, folder, SpotDataset(X, Y, train_t), augment, inner,
                         (data.patches[fold], data.Y[fold]), valid_t, choice,
                         TrainSettings.from_config(cfg), settings)
    result = {"best_epoch": outcome.best_epoch, "history": outcome.history,
              "inner": inner_name}
    cached = read_predictions(cache, outcome.best_epoch, test_slides)
    if cached is not None:
        log.info("fold %s: predictions (TTA %d) read from %s", fold, cfg.tta, cache)
        return {**result, **cached}
    t0 = time.perf_counter()
    load_best(model, folder, outcome, settings)
    preds = {s: predict(model, data.patches[s], valid_t, choice, cfg.tta, cfg.eval_batch_size)
             for s in [fold, *test_slides]}
    seconds = time.perf_counter() - t0
    save_arrays(cache, best_epoch=outcome.best_epoch, seconds=seconds, oof=preds[fold],
                **{f"test_{s}": preds[s] for s in test_slides})
    return {**result, "predict_seconds": seconds, "oof": preds[fold],
            "test": {s: preds[s] for s in test_slides}}
