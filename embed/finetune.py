"""The fine-tuned CNN path: LOSO fine-tuning of a registry backbone, written in stage 2's
format (``OUT/predictions/<model_id>/{oof,test}.csv`` and an entry of ``OUT/report.json``).

``python -m embed.finetune --h5 out/her2st.h5 --out out --epochs 3`` (``make finetune``).

Each train slide is held out in turn (``--folds`` runs some): a model is trained on the
others (the recipe below), the held-out slide is scored after every epoch by its per-spot
Spearman, and the best epoch predicts it (out-of-fold) and the test slides, both with
dihedral TTA. The test predictions are the mean of the fold models' (each at its best
epoch): no extra full-data fit. Note that the held-out slide picks its own epoch, as in the
seed recipe, so the out-of-fold score is slightly optimistic.

Recipe ("winning" preset, each part a setting): patches centred on spots (224 px);
albumentations training pipeline (``embed.augment``) and CutMix; targets rank-scaled per
spot to [0, 1]; head Linear -> Sigmoid; L1 loss; AdamW + cosine annealing (per step).
The "seed_baseline" preset: timm resnet18 (or, where its weights cannot be had, the
offline default backbone, said in the log), linear head, MSE on raw abundances.

Patches are cropped once per slide and kept in memory. Checkpoints:
``OUT/finetune/<model_id>/fold_<slide>/epoch_<n>.pt``; a killed run resumes after its last
epoch; a run with other settings is refused (``--overwrite`` starts again).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from data.cli import config_dict, config_parser, parse_list, resolve_config, run_cli, setup_logging
from data.errors import ConfigError
from data.h5 import CanonicalH5
from embed.augment import WINNING_AUGMENT, check_augment
from embed.backbones import DEFAULT_BACKBONE, get_backbone
from embed.checkpoints import check_settings
from embed.device import select_device
from embed.train_data import SlidePatches
from embed.train_loop import HEADS, LOSSES, run_fold
from embed.tta import TTA_CHOICES
from embed.weights import WeightsError, build_model
from regress.loso import LosoResult
from regress.results import model_entry, predictions_frame, update_report, write_predictions
from regress.targets import TARGETS

log = logging.getLogger("hespot")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a fine-tuning run (defaults < preset < --config JSON < flags)."""

    h5: str = "out/her2st.h5"
    out: str = "out"
    preset: str = "winning"
    backbone: str = DEFAULT_BACKBONE
    fallback_backbone: str | None = None  # used (and logged) when backbone has no weights
    weights: str | None = None            # a local weights file for the backbone
    model_id: str | None = None           # default finetune-[<preset>-]<backbone>
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-2
    patch_px: int = 224
    input_px: int | None = None           # resize patches to this model input (None: as cut)
    augment: tuple[str, ...] = WINNING_AUGMENT
    cutmix_p: float = 0.5
    target: str = "spot_rank"
    head: str = "sigmoid"
    loss: str = "l1"
    tta: int = 8                          # dihedral views for the OOF and test predictions
    val_tta: int = 1                      # views when scoring each epoch
    folds: tuple[str, ...] = ()           # held-out slides to run (default: every train slide)
    test: bool = True                     # predict the test slides
    workers: int = 2                      # DataLoader workers (augmentation)
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    seed: int = 0
    eval_batch_size: int = 64
    pad_mode: str = "reflect"
    keep_checkpoints: bool = False        # keep every epoch's checkpoint (else last + best)
    overwrite: bool = False
    quiet: bool = False


PRESETS: dict[str, dict] = {
    "winning": {},
    "seed_baseline": {"backbone": "resnet18", "fallback_backbone": DEFAULT_BACKBONE,
                      "target": "raw", "head": "linear", "loss": "mse", "augment": (),
                      "cutmix_p": 0.0, "tta": 1},
}
# settings that do not change what is trained (so a resumed run may change them)
RUN_ONLY = ("h5", "out", "folds", "tta", "test", "workers", "device", "precision", "threads",
            "eval_batch_size", "keep_checkpoints", "overwrite", "quiet", "model_id", "weights",
            "fallback_backbone")


def check_config(cfg: FinetuneConfig) -> None:
    """Raise ValueError naming the first bad setting."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown preset {cfg.preset!r}; known: {', '.join(PRESETS)}")
    choices = {"target": TARGETS, "head": HEADS, "loss": tuple(LOSSES), "tta": TTA_CHOICES,
               "val_tta": TTA_CHOICES}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    if cfg.epochs < 1 or cfg.batch_size < 2 or cfg.patch_px < 8:
        raise ConfigError("need epochs >= 1, batch size >= 2 and patch px >= 8")
    if not 0.0 <= cfg.cutmix_p <= 1.0:
        raise ConfigError(f"cutmix p must lie in [0, 1], got {cfg.cutmix_p}")
    check_augment(cfg.augment)
    get_backbone(cfg.backbone)


def apply_preset(cfg: FinetuneConfig, explicit: set[str]) -> FinetuneConfig:
    """``cfg`` with its preset's values for every field not set explicitly."""
    if cfg.preset not in PRESETS:
        raise ConfigError(f"unknown preset {cfg.preset!r}; known: {', '.join(PRESETS)}")
    values = {k: v for k, v in PRESETS[cfg.preset].items() if k not in explicit}
    return replace(cfg, **values)


def build_encoder(cfg: FinetuneConfig):
    """(encoder, backbone entry, WeightsInfo); the fallback backbone, logged, if the
    requested one has no weights here and the config names one."""
    try:
        entry = get_backbone(cfg.backbone)
        return (*build_model(entry, cfg.weights), entry)
    except WeightsError as exc:
        if not cfg.fallback_backbone:
            raise
        log.warning("%s: no weights here (%s); using the fallback backbone %s instead",
                    cfg.backbone, str(exc).splitlines()[0][:200], cfg.fallback_backbone)
        entry = get_backbone(cfg.fallback_backbone)
        return (*build_model(entry), entry)


def default_model_id(cfg: FinetuneConfig, backbone: str) -> str:
    if cfg.model_id:
        return cfg.model_id
    return f"finetune-{backbone}" if cfg.preset == "winning" else \
        f"finetune-{cfg.preset}-{backbone}"


def training_settings(cfg: FinetuneConfig, backbone: str, weights_sha: str, dtype: str,
                      data: SlidePatches) -> dict:
    """What determines the trained weights; stored in checkpoints, compared on resume:
    the config (less ``RUN_ONLY``), the backbone actually used and its weights, the
    autocast dtype, the images and spots (fingerprints) and the targets."""
    kept = {k: v for k, v in config_dict(cfg).items() if k not in RUN_ONLY}
    return {**kept, "backbone": backbone, "weights_sha256": weights_sha, "dtype": dtype,
            "input_fingerprints": dict(sorted(data.fingerprints.items())),
            "targets_sha256": data.targets_sha256()}


def summarise(folds: dict[str, dict], data: SlidePatches, test_slides: list[str],
              ) -> LosoResult:
    """LosoResult of the folds run: per-slide scores, mean test predictions, timing."""
    res = LosoResult()
    for fold, r in folds.items():
        res.add_fold(fold, r["oof"], data.Y[fold])
    res.test = {s: np.mean([r["test"][s] for r in folds.values()], axis=0)
                for s in test_slides}
    res.seconds = sum(sum(h["seconds"] for h in r["history"]) + r["predict_seconds"]
                      for r in folds.values())
    return res


def describe_folds(results: dict[str, dict], entry, winfo, choice, tta: int) -> dict:
    """The report's ``fitted``: backbone, best epochs, time per epoch, histories."""
    def mean_of(key: str, r: dict) -> float:
        return round(float(np.mean([h[key] for h in r["history"]])), 2)

    return {
        "backbone": entry.name, "weights_sha256": winfo.sha256, "device": choice.describe(),
        "best_epoch": {f: r["best_epoch"] for f, r in results.items()},
        "seconds_per_epoch": {f: mean_of("seconds", r) for f, r in results.items()},
        "train_images_per_s": {f: mean_of("images_per_s", r) for f, r in results.items()},
        "test_predictions": f"mean of the {len(results)} fold models (best epoch each), "
                            f"TTA {tta}",
        "epoch_selection": "best held-out per-spot Spearman (the held-out slide picks its "
                           "epoch: optimistic)",
        "history": {f: r["history"] for f, r in results.items()}}


def run(cfg: FinetuneConfig) -> dict:
    """LOSO fine-tuning; writes predictions and the report entry. Returns the entry.

    ``cfg.threads`` applies for the duration of the run (the previous value is restored).
    """
    cfg = replace(cfg, augment=check_augment(cfg.augment))
    check_config(cfg)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: FinetuneConfig) -> dict:
    choice = select_device(cfg.device, cfg.precision, training=True)
    log.info("device: %s, %d threads; config: %s", choice.describe(), torch.get_num_threads(),
             json.dumps(config_dict(cfg)))
    encoder, winfo, entry = build_encoder(cfg)
    model_id = default_model_id(cfg, entry.name)
    out = Path(cfg.out)
    root = out / "finetune" / model_id
    with CanonicalH5(cfg.h5) as h5:
        train_slides, test_slides = h5.train_slides, h5.test_slides if cfg.test else []
        folds = list(cfg.folds) or train_slides
        bad = [f for f in folds if f not in train_slides]
        if bad or len(train_slides) < 2:
            raise ConfigError(f"folds must be train slides ({train_slides}; LOSO needs two or "
                             f"more), got {bad}")
        data = SlidePatches.load(h5, train_slides + test_slides, cfg.patch_px, cfg.pad_mode)
    settings = training_settings(cfg, entry.name, winfo.sha256, choice.dtype_name, data)
    check_settings(root, settings, cfg.overwrite)
    if set(folds) != set(train_slides):
        log.warning("running %d of %d folds (%s): the report's mean covers those only",
                    len(folds), len(train_slides), ",".join(folds))
    results = {f: run_fold(cfg, f, data, train_slides, test_slides, encoder, entry, choice,
                           root, settings) for f in folds}
    res = summarise(results, data, test_slides)
    res.fitted = describe_folds(results, entry, winfo, choice, cfg.tta)
    write_predictions(out, model_id,
                      predictions_frame(res.oof, data.cell_types, data.xy, data.spot_ids),
                      predictions_frame(res.test, data.cell_types, data.xy, data.spot_ids))
    report_entry = model_entry(res, data.cell_types, "finetune", cfg.target,
                               {**config_dict(cfg), "model_id": model_id,
                                "backbone": entry.name})
    update_report(out, {model_id: report_entry})
    log.info("%s: LOSO per-spot %.3f, per-type %.3f over %s (%.0f s); predictions in %s",
             model_id, res.mean["spot"], res.mean["type"], ",".join(folds), res.seconds,
             out / "predictions" / model_id)
    return report_entry


def build_parser() -> argparse.ArgumentParser:
    p = config_parser("python -m embed.finetune", __doc__, FinetuneConfig)
    add = p.add_argument
    add("--h5", help="canonical HDF5 file (default out/her2st.h5)")
    add("--out", help="output folder: report, predictions/, finetune/ (default out)")
    add("--preset", help=f"one of {', '.join(PRESETS)} (default winning)")
    add("--backbone", help=f"registry name (default {DEFAULT_BACKBONE})")
    add("--fallback-backbone", dest="fallback_backbone",
        help="used, and logged, where the backbone's weights cannot be had")
    add("--weights", help="local weights file for the backbone")
    add("--model-id", dest="model_id", help="name in the report and predictions/")
    add("--epochs", type=int)
    add("--batch-size", dest="batch_size", type=int)
    add("--lr", type=float)
    add("--weight-decay", dest="weight_decay", type=float)
    add("--patch-px", dest="patch_px", type=int, help="patch side in px (224)")
    add("--input-px", dest="input_px", type=int, help="resize patches to this side")
    add("--augment", type=parse_list, help="comma-separated parts of the training pipeline "
        f"({','.join(WINNING_AUGMENT)}) or none")
    add("--cutmix-p", dest="cutmix_p", type=float, help="CutMix probability per batch")
    add("--target", choices=TARGETS)
    add("--head", choices=HEADS)
    add("--loss", choices=tuple(LOSSES))
    add("--tta", type=int, choices=TTA_CHOICES, help="views for OOF/test predictions (8)")
    add("--val-tta", dest="val_tta", type=int, choices=TTA_CHOICES,
        help="views when scoring each epoch (1)")
    add("--folds", type=parse_list, help="held-out slides to run (default: all train slides)")
    add("--test", action=argparse.BooleanOptionalAction, help="predict the test slides")
    add("--workers", type=int, help="DataLoader workers (default 2)")
    add("--device", choices=["auto", "cpu", "cuda"])
    add("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    add("--threads", type=int, help="torch intra-op threads")
    add("--seed", type=int)
    add("--eval-batch-size", dest="eval_batch_size", type=int)
    add("--pad-mode", dest="pad_mode", choices=["reflect", "constant", "edge"])
    add("--keep-checkpoints", dest="keep_checkpoints", action=argparse.BooleanOptionalAction,
        help="keep every epoch's checkpoint (default: the last and the best)")
    add("--overwrite", action=argparse.BooleanOptionalAction,
        help="remove this model's checkpoints and train from scratch")
    add("--quiet", action=argparse.BooleanOptionalAction)
    return p


def resolve(argv: Sequence[str] | None = None) -> FinetuneConfig:
    """Defaults < preset < --config JSON < flags."""
    args = build_parser().parse_args(argv)
    cfg = resolve_config(FinetuneConfig, args)
    explicit = set(vars(args)) - {"config"}
    if getattr(args, "config", None):
        explicit |= set(json.loads(Path(args.config).read_text()))
    cfg = apply_preset(cfg, explicit)
    return replace(cfg, augment=check_augment(cfg.augment))


def _main(argv: Sequence[str] | None = None) -> int:
    cfg = resolve(argv)
    setup_logging(cfg.quiet)
    run(cfg)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)

if __name__ == "__main__":
    raise SystemExit(main())
