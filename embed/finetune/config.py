"""The settings of a fine-tuning run: :class:`FinetuneConfig`, its presets and its checks.

Precedence: dataclass defaults < preset (:data:`PRESETS`, for the fields not set
explicitly) < ``--config`` JSON < flags. :func:`check_config` checks every name the run
takes (preset, backbones, target, head, loss, augmentation parts, ...) before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from data.cli import DEFAULT_H5, DEFAULT_OUT, check_name
from data.errors import ConfigError
from data.patches import PAD_MODES
from embed.backbones import DEFAULT_BACKBONE, get_backbone
from embed.finetune.augment import WINNING_AUGMENT, check_augment
from embed.finetune.losses import (
    DEFAULT_RANK_TAU,
    DEFAULT_RANK_TYPE_WEIGHT,
    LOSSES,
    RANK_LOSSES,
)
from embed.finetune.model import HEADS
from embed.tta import TTA_CHOICES
from regress.targets import TARGETS

DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class FinetuneConfig:
    """Settings of a fine-tuning run (defaults < preset < --config JSON < flags)."""

    h5: str = DEFAULT_H5
    out: str = DEFAULT_OUT
    preset: str = "winning"
    backbone: str = DEFAULT_BACKBONE
    fallback_backbone: str | None = None  # used (and logged) when backbone has no weights
    weights: str | None = None            # a local weights file for the backbone
    model_id: str | None = None           # default finetune-[<preset>-]<backbone>
    epochs: int = 10                      # at the most (see patience)
    patience: int = 3                     # stop after this many epochs without a better
                                          # inner score (the inner slide's per-spot Spearman)
    batch_size: int | None = None         # None: 32 on a CPU, 128 on a GPU
    lr: float | None = None               # None: 3e-4 x batch size / 32 (scaled together)
    weight_decay: float = 1e-2
    patch_px: int = 224
    input_px: int | None = None           # resize patches to this model input (None: as cut)
    augment: tuple[str, ...] = WINNING_AUGMENT
    cutmix_p: float = 0.5
    target: str = "spot_rank"
    head: str = "sigmoid"
    loss: str = "l1"                      # l1, mse, soft_rank or l1+soft_rank (losses.py)
    rank_tau: float = DEFAULT_RANK_TAU    # soft-rank temperature (standard deviations)
    rank_type_weight: float = DEFAULT_RANK_TYPE_WEIGHT  # soft_rank's per-type term
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
            "fallback_backbone", "patience")  # patience: when to stop, not what an epoch is
RANK_SETTINGS = ("rank_tau", "rank_type_weight")  # used only by the soft-rank losses


def unused_settings(cfg: FinetuneConfig) -> tuple[str, ...]:
    """The settings ``cfg``'s loss does not use (the soft-rank ones unless its loss is one
    of :data:`~embed.finetune.losses.RANK_LOSSES`): they do not change what is trained."""
    return () if cfg.loss in RANK_LOSSES else RANK_SETTINGS


def _check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")


def check_config(cfg: FinetuneConfig) -> None:
    """Check every setting that names something, and the numeric ranges.

    Raises:
        ConfigError: (a ValueError) naming the first bad setting and what it may be.
    """
    _check_preset(cfg.preset)
    choices = {"target": TARGETS, "head": HEADS, "loss": tuple(LOSSES), "tta": TTA_CHOICES,
               "val_tta": TTA_CHOICES}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name} must be one of {allowed}, got {getattr(cfg, name)!r}")
    if cfg.epochs < 1 or cfg.patience < 1 or cfg.patch_px < 8 or (
            cfg.batch_size is not None and cfg.batch_size < 2):
        raise ConfigError("need epochs >= 1, patience >= 1, batch size >= 2 and patch px >= 8")
    if not 0.0 <= cfg.cutmix_p <= 1.0:
        raise ConfigError(f"cutmix p must lie in [0, 1], got {cfg.cutmix_p}")
    if not (cfg.lr is None or cfg.lr > 0) or not cfg.weight_decay >= 0:
        raise ConfigError(f"need lr > 0 and weight decay >= 0, got lr {cfg.lr}, weight decay "
                          f"{cfg.weight_decay}")
    if not cfg.rank_tau > 0 or not cfg.rank_type_weight >= 0:
        raise ConfigError(f"need rank tau > 0 and rank type weight >= 0, got rank tau "
                          f"{cfg.rank_tau}, rank type weight {cfg.rank_type_weight}")
    if cfg.workers < 0 or cfg.eval_batch_size < 1:
        raise ConfigError(f"need workers >= 0 and eval batch size >= 1, got workers "
                          f"{cfg.workers}, eval batch size {cfg.eval_batch_size}")
    check_augment(cfg.augment)
    get_backbone(cfg.backbone)
    if cfg.fallback_backbone:
        get_backbone(cfg.fallback_backbone)
    check_name("pad mode", cfg.pad_mode, PAD_MODES)
    check_name("device", cfg.device, DEVICES)


#: batch size and learning rate where neither is given: on a CPU, and on a GPU (larger
#: batches, the learning rate scaled with them: the linear scaling rule)
BASE_BATCH, BASE_LR, GPU_BATCH = 32, 3e-4, 128


def with_batch_defaults(cfg: FinetuneConfig, device_type: str) -> FinetuneConfig:
    """``cfg`` with its batch size (None: :data:`BASE_BATCH` on a CPU, :data:`GPU_BATCH`
    on CUDA) and learning rate (None: :data:`BASE_LR` x batch size / BASE_BATCH) set."""
    batch = cfg.batch_size if cfg.batch_size is not None else (
        GPU_BATCH if device_type == "cuda" else BASE_BATCH)
    return replace(cfg, batch_size=batch,
                   lr=cfg.lr if cfg.lr is not None else BASE_LR * batch / BASE_BATCH)


def apply_preset(cfg: FinetuneConfig, explicit: set[str]) -> FinetuneConfig:
    """``cfg`` with its preset's values for every field not in ``explicit``.

    Raises:
        ConfigError: an unknown preset; the message lists the known ones.
    """
    _check_preset(cfg.preset)
    values = {k: v for k, v in PRESETS[cfg.preset].items() if k not in explicit}
    return replace(cfg, **values)


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
    patience: int = 3

    @classmethod
    def from_config(cls, cfg: FinetuneConfig) -> TrainSettings:
        """The training part of a run's config (batch size and learning rate resolved)."""
        return cls(cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight_decay, cfg.cutmix_p,
                   cfg.loss, cfg.val_tta, cfg.workers, cfg.seed, cfg.eval_batch_size,
                   cfg.keep_checkpoints, cfg.quiet, cfg.rank_tau, cfg.rank_type_weight,
                   cfg.patience)
