"""One LOSO fold, end to end: the held-out slide's model is built, trained (or resumed,
:func:`embed.finetune.loop.train_fold`) on the other train slides, and its best epoch
predicts the held-out slide and the test slides with TTA; the predictions are cached in
the fold's folder (``predictions_tta<k>.npz``), so a rerun reads them back.
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
from embed.finetune.augment import build_train_transform, build_valid_transform
from embed.finetune.checkpoints import checkpoint_path, load_checkpoint, save_arrays
from embed.finetune.config import FinetuneConfig
from embed.finetune.data import SlidePatches, SpotDataset
from embed.finetune.loop import FoldOutcome, TrainSettings, train_fold
from embed.finetune.model import SpotRegressor, predict

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
    outcome = train_fold(model, fold, folder, SpotDataset(X, Y, train_t), data.patches[fold],
                         data.Y[fold], valid_t, choice, TrainSettings.from_config(cfg),
                         settings)
    result = {"best_epoch": outcome.best_epoch, "history": outcome.history}
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
