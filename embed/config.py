"""Settings of stage 1: :class:`EmbedConfig` (defaults < --config JSON < flags), the
``--backbones`` items it names (:class:`data.store.BackboneItem`, their backbones checked
against the registry), their checks, and the defaults that depend on the device (spots per
batch, batches read ahead)."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from data.cli import DEFAULT_H5, DEFAULT_STORE
from data.cluster import ClusterSettings, check_cluster, usable_cores
from data.errors import ConfigError, DataError, Problem
from data.patches import PAD_MODES
from data.store import BackboneItem
from embed.backbones import DEFAULT_BACKBONE, get_backbone
from embed.device import DeviceChoice
from embed.runners import RUNNERS
from embed.tta import TTA_CHOICES


@dataclass(frozen=True)
class EmbedConfig(ClusterSettings):
    """Settings of a stage-1 run (defaults < --config JSON < flags)."""

    h5: str = DEFAULT_H5
    store: str = DEFAULT_STORE
    backbones: tuple[str, ...] = (DEFAULT_BACKBONE,)
    slides: tuple[str, ...] = ()          # empty: every train and test slide
    tta: int = 8
    patch_px: int = 224                   # primary crop side (pixels)
    patch_um: float | None = None         # or in µm where the pixel size is known
    contexts: tuple[int | str, ...] = ()  # extra crop sides for every backbone: px (448)
                                          # or µm ("110um")
    stages: bool = False                  # intermediate stages for every backbone
    batch_spots: int | None = None        # spots per forward pass (x tta views); None:
                                          # 4 on a CPU (fastest, least memory), 64 on CUDA
    chunk_spots: int = 64                 # spots per stored chunk and per window read
    runner: str = "auto"                  # forward runner (embed.runners): jit on a CPU
    weights: str | None = None            # local weights file (one backbone)
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    pad_mode: str = "reflect"
    prefetch: int | None = None           # with readers 0: batches read ahead in a thread;
                                          # 0: read in the model's thread; None: auto
    readers: int | None = None            # reader processes (0: read in the model's
                                          # process); None: 0 on a CPU, several on CUDA
    overwrite: bool = False
    verify: bool = True                   # check finished chunks' checksums on resume
    chunks_per_task: int = 8              # chunks per Dask task (x chunk_spots spots)
    quiet: bool = False


def parse_item(text: str, stages: bool = False, contexts: tuple[int | str, ...] = ()
               ) -> BackboneItem:
    """A ``--backbones`` item (:meth:`BackboneItem.parse`), its backbone looked up first.

    Raises:
        ConfigError: an unknown backbone (the message lists the known ones) or option.
    """
    return BackboneItem.parse(text, stages, contexts, check_name=get_backbone)


def check_config(cfg: EmbedConfig) -> list[BackboneItem]:
    """Every setting and name of ``cfg`` checked before any work; the parsed backbone jobs.

    Raises:
        ConfigError: naming the setting, what is allowed and how to fix the call.
        DataError: the ``--weights`` file does not exist.
    """
    if cfg.tta not in TTA_CHOICES:
        raise ConfigError(f"--tta must be one of {TTA_CHOICES}, got {cfg.tta}")
    check_cluster(cfg.workers, cfg.scheduler, cfg.threads_per_worker)
    for field in ("batch_spots", "chunk_spots", "chunks_per_task"):
        if getattr(cfg, field) is not None and getattr(cfg, field) < 1:
            raise ConfigError(f"--{field.replace('_', '-')} must be at least 1")
    if cfg.readers is not None and cfg.readers < 0:
        raise ConfigError(f"--readers must be 0 (read in the model's process) or more, got "
                          f"{cfg.readers}")
    if cfg.runner not in ("auto", *RUNNERS):
        raise ConfigError(f"unknown runner {cfg.runner!r}; known: auto, {', '.join(RUNNERS)}")
    if cfg.pad_mode not in PAD_MODES:
        raise ConfigError(f"--pad-mode must be one of {PAD_MODES}, got {cfg.pad_mode!r}")
    if cfg.weights and len(cfg.backbones) != 1:
        raise ConfigError("--weights applies to exactly one backbone")
    if not cfg.backbones:
        raise ConfigError("--backbones is empty: name at least one backbone")
    if cfg.patch_um is not None and not cfg.patch_um > 0:
        raise ConfigError(f"--patch-um must be positive, got {cfg.patch_um:g}")
    if cfg.patch_um is None and cfg.patch_px < 1:
        raise ConfigError(f"--patch-px must be at least 1, got {cfg.patch_px}")
    if cfg.weights and not Path(cfg.weights).is_file():
        raise DataError(Problem(cfg.weights, "", "--weights", "a weights file",
                                "no such file", "check the path"))
    jobs = [parse_item(b, cfg.stages, cfg.contexts) for b in cfg.backbones]
    keys = [job.key for job in jobs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ConfigError(f"--backbones items {list(cfg.backbones)} store to the same group "
                          f"{', '.join(twice)} twice: give each backbone (and stain variant) "
                          "once, with all its options in one item")
    for job in jobs:
        if any(c < 1 for c in job.contexts):
            raise ConfigError(f"crop sizes must be at least 1 px, got {list(job.contexts)} "
                              f"for {job.name} (--context, +<px> in --backbones)")
        if any(not c > 0 for c in job.contexts_um):
            raise ConfigError(f"crop sizes in µm must be positive, got "
                              f"{list(job.contexts_um)} for {job.name} (+<µm>um in --backbones)")
        if "hed" in job.stain and cfg.tta < 2:
            raise ConfigError(f"{job.key}: +hed jitters the TTA views after the first; it "
                              "needs --tta 2, 4 or 8")
    return jobs


def default_prefetch(choice: DeviceChoice) -> int:
    """Batches read ahead in a background thread: 3 while a GPU computes; 0 (read between
    forward passes) on a CPU whose every core runs the model, where a reader thread can
    only take time from the model's threads: on the 2-core machine, 6 alternating runs of
    each, 219 views/s reading in the model's thread vs 210 with a reader thread (issue 4's
    note)."""
    if choice.device.type != "cpu":
        return 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 3 if torch.get_num_threads() < (cores or 1) else 0


def default_readers(choice: DeviceChoice) -> int:
    """Reader processes (:mod:`embed.feed`): none on a CPU, whose cores run the model (the
    patches are read between forward passes, or by a thread where cores are spare: on the
    2-core machine reading is 20x ahead of the model and a reader process only takes
    time from it; see README); on CUDA half the cores, at most 8, where an H200 runs
    ~2,200 efficientnet_lite0 spots/s (8 views) and one reader process crops ~1,200."""
    if choice.device.type != "cuda":
        return 0
    return max(1, min(8, usable_cores() // 2))


def default_batch_spots(choice: DeviceChoice) -> int:
    """Spots per forward pass. On the 2-core CPU, 4 spots (32 views with 8-view TTA) ran
    as fast as bigger batches and kept peak RSS flat at ~1.3 GB over the sample (8: ~2 GB,
    growing; 32: 5 GB; make bench-embed); a GPU wants bigger batches: 128 spots (1,024
    views at 8 views, two stored chunks read at once)."""
    return 128 if choice.device.type == "cuda" else 4


def with_device_defaults(cfg: EmbedConfig, choice: DeviceChoice,
                         prefetch: int | None = None) -> EmbedConfig:
    """``cfg`` with ``batch_spots`` and ``prefetch`` filled in for the device when unset
    (``prefetch``: the executor's default, else :func:`default_prefetch`)."""
    if cfg.batch_spots is None:
        cfg = replace(cfg, batch_spots=default_batch_spots(choice))
    if cfg.prefetch is None:
        cfg = replace(cfg, prefetch=default_prefetch(choice) if prefetch is None else prefetch)
    if cfg.readers is None:
        cfg = replace(cfg, readers=default_readers(choice))
    return cfg
