"""The fine-tuned CNN path: LOSO fine-tuning of a registry backbone, written in stage 2's
format (``OUT/predictions/<model_id>/{oof,test}.csv`` and an entry of ``OUT/report.json``).

``python -m embed.finetune --h5 out/her2st.h5 --out out --epochs 3`` (also
``hespot finetune``, ``make finetune``).

Each train slide is held out in turn (``--folds`` runs some): a model is trained on the
others but one, the inner slide (the median-sized one; with a single training slide, its
last fifth of spots), which is scored after every epoch by its per-spot Spearman: its
best epoch predicts the held-out slide (out-of-fold) and the test slides, both with
dihedral TTA, and training stops ``--patience`` epochs after the inner score last rose
(``--epochs`` at the most). The held-out slide is scored every epoch for the report only:
it does not choose its own epoch, so the out-of-fold score is an honest one. The test
predictions are the mean of the fold models' (each at its best epoch): no extra
full-data fit.

Recipe ("winning" preset, each part a setting): patches centred on spots (224 px);
albumentations training pipeline (``embed.finetune.augment``) and CutMix; targets
rank-scaled per spot to [0, 1]; head Linear -> Sigmoid; L1 loss; AdamW + cosine annealing
(per step). ``--loss soft_rank`` trains on 1 - a soft-rank per-spot Spearman instead
(``l1+soft_rank``: their sum; ``--rank-tau``, ``--rank-type-weight``;
:mod:`embed.finetune.losses`). The "seed_baseline" preset: timm resnet18 (or, where its
weights cannot be had, the offline default backbone, said in the log), linear head, MSE
on raw abundances.

Patches are cropped once per slide and kept in memory. Checkpoints:
``OUT/finetune/<model_id>/fold_<slide>/epoch_<n>.pt``; a killed run resumes after its last
epoch; a run with other settings is refused (``--overwrite`` starts again).
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from data.check import preflight
from data.cli import config_dict, config_parser, entry_point, parse_list, resolve_config, run_stage
from data.errors import ConfigError
from data.h5 import CanonicalH5
from data.patches import PAD_MODES
from embed.backbones import DEFAULT_BACKBONE, Backbone, get_backbone
from embed.device import DeviceChoice, select_device
from embed.finetune.augment import WINNING_AUGMENT, check_augment
from embed.finetune.checkpoints import check_settings
from embed.finetune.config import (
    PRESETS,
    RUN_ONLY,
    FinetuneConfig,
    apply_preset,
    check_config,
    unused_settings,
    with_batch_defaults,
)
from embed.finetune.data import SlidePatches
from embed.finetune.fold import run_fold
from embed.finetune.losses import DEFAULT_RANK_TAU, LOSSES
from embed.finetune.model import HEADS
from embed.tta import TTA_CHOICES
from embed.weights import WeightsError, WeightsInfo, build_model
from regress.results import (
    LosoResult,
    model_entry,
    predictions_frame,
    update_report,
    write_predictions,
)
from regress.targets import TARGETS

log = logging.getLogger("hespot")


def build_encoder(cfg: FinetuneConfig) -> tuple[nn.Module, WeightsInfo, Backbone]:
    """(encoder, WeightsInfo, backbone entry); the fallback backbone, logged, if the
    requested one has no weights here and the config names one.

    Raises:
        WeightsError: no weights for the backbone, and no fallback backbone.
    """
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
    """``cfg.model_id``, else ``finetune-<backbone>`` (winning preset) or
    ``finetune-<preset>-<backbone>``."""
    if cfg.model_id:
        return cfg.model_id
    return f"finetune-{backbone}" if cfg.preset == "winning" else \
        f"finetune-{cfg.preset}-{backbone}"


def training_settings(cfg: FinetuneConfig, backbone: str, weights_sha: str, dtype: str,
                      data: SlidePatches) -> dict:
    """What determines the trained weights; stored in checkpoints, compared on resume:
    the config (less ``RUN_ONLY`` and the settings its loss does not use), the backbone
    actually used and its weights, the autocast dtype, the images and spots
    (fingerprints) and the targets."""
    skip = {*RUN_ONLY, *unused_settings(cfg)}
    kept = {k: v for k, v in config_dict(cfg).items() if k not in skip}
    return {**kept, "backbone": backbone, "weights_sha256": weights_sha, "dtype": dtype,
            "input_fingerprints": dict(sorted(data.fingerprints.items())),
            "targets_sha256": data.targets_sha256()}


def summarise(folds: dict[str, dict], data: SlidePatches, test_slides: list[str],
              ) -> LosoResult:
    """LosoResult of the folds run (``run_fold``'s results by held-out slide): per-slide
    scores, test predictions float (n_spots, n_types) averaged over the folds, timing."""
    res = LosoResult()
    for fold, r in folds.items():
        res.add_fold(fold, r["oof"], data.Y[fold])
    res.test = {s: np.mean([r["test"][s] for r in folds.values()], axis=0)
                for s in test_slides}
    res.seconds = sum(sum(h["seconds"] for h in r["history"]) + r["predict_seconds"]
                      for r in folds.values())
    return res


def describe_folds(results: dict[str, dict], entry: Backbone, winfo: WeightsInfo,
                   choice: DeviceChoice, tta: int) -> dict:
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
        "epoch_selection": "best per-spot Spearman of the inner slide (not trained on); "
                           "training stops after `patience` epochs without a better one",
        "inner": {f: r["inner"] for f, r in results.items()},
        "history": {f: r["history"] for f, r in results.items()}}


def run(cfg: FinetuneConfig) -> dict:
    """LOSO fine-tuning; writes predictions and the report entry. Returns the entry.

    ``cfg.threads`` applies for the duration of the run (the previous value is restored).

    Raises:
        ConfigError: a bad setting (checked before any work), or checkpoints of a run
            with other settings.
        DataError: a bad canonical HDF5 file.
    """
    cfg = replace(cfg, augment=check_augment(cfg.augment))
    check_config(cfg)
    preflight(cfg.h5)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)


def _run(cfg: FinetuneConfig) -> dict:
    choice = select_device(cfg.device, cfg.precision, training=True)
    cfg = with_batch_defaults(cfg, choice.device.type)
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
    """The parser of ``python -m embed.finetune``: flags default to absent (see
    :func:`data.cli.config_parser`)."""
    p = config_parser("python -m embed.finetune", __doc__, FinetuneConfig,
                      common=("h5", "out", "device", "precision", "threads", "quiet"))
    add = p.add_argument
    add("--preset", help=f"one of {', '.join(PRESETS)} (default winning)")
    add("--backbone", help=f"registry name (default {DEFAULT_BACKBONE})")
    add("--fallback-backbone", dest="fallback_backbone",
        help="used, and logged, where the backbone's weights cannot be had")
    add("--weights", help="local weights file for the backbone")
    add("--model-id", dest="model_id", help="name in the report and predictions/")
    add("--epochs", type=int, help="epochs at the most (default 10)")
    add("--patience", type=int, help="stop after this many epochs without a better inner "
        "score (default 3)")
    add("--batch-size", dest="batch_size", type=int,
        help="default 32 on a CPU, 128 on a GPU")
    add("--lr", type=float, help="default 3e-4 x batch size / 32")
    add("--weight-decay", dest="weight_decay", type=float)
    add("--patch-px", dest="patch_px", type=int, help="patch side in px (224)")
    add("--input-px", dest="input_px", type=int, help="resize patches to this side")
    add("--augment", type=parse_list, help="comma-separated parts of the training pipeline "
        f"({','.join(WINNING_AUGMENT)}) or none")
    add("--cutmix-p", dest="cutmix_p", type=float, help="CutMix probability per batch")
    add("--target", choices=TARGETS)
    add("--head", choices=HEADS)
    add("--loss", choices=tuple(LOSSES), help="l1 (default), mse, soft_rank (1 - soft "
        "per-spot Spearman) or l1+soft_rank")
    add("--rank-tau", dest="rank_tau", type=float, help="soft-rank temperature, in standard "
        f"deviations of a spot's predictions ({DEFAULT_RANK_TAU})")
    add("--rank-type-weight", dest="rank_type_weight", type=float, help="weight of the "
        "soft-rank loss's per-type term over the batch's spots (0: per-spot only)")
    add("--tta", type=int, choices=TTA_CHOICES, help="views for OOF/test predictions (8)")
    add("--val-tta", dest="val_tta", type=int, choices=TTA_CHOICES,
        help="views when scoring each epoch (1)")
    add("--folds", type=parse_list, help="held-out slides to run (default: all train slides)")
    add("--test", action=argparse.BooleanOptionalAction, help="predict the test slides")
    add("--workers", type=int, help="DataLoader workers (default 2)")
    add("--seed", type=int)
    add("--eval-batch-size", dest="eval_batch_size", type=int)
    add("--pad-mode", dest="pad_mode", choices=PAD_MODES)
    add("--keep-checkpoints", dest="keep_checkpoints", action=argparse.BooleanOptionalAction,
        help="keep every epoch's checkpoint (default: the last and the best)")
    add("--overwrite", action=argparse.BooleanOptionalAction,
        help="remove this model's checkpoints and train from scratch")
    return p


def resolve(argv: Sequence[str] | None = None) -> FinetuneConfig:
    """The run's config from ``argv``: defaults < preset < --config JSON < flags.

    Raises:
        ConfigError: an unknown preset or augmentation part, or unknown settings.
        DataError: an unreadable --config file.
    """
    args = build_parser().parse_args(argv)
    cfg = resolve_config(FinetuneConfig, args)
    explicit = set(vars(args)) - {"config"}
    if getattr(args, "config", None):
        explicit |= set(json.loads(Path(args.config).read_text()))
    cfg = apply_preset(cfg, explicit)
    return replace(cfg, augment=check_augment(cfg.augment))


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m embed.finetune``; exit code 2 (one line on stderr) for a bad setting or
    input."""
    return run_stage(resolve(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
