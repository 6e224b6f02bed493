"""Benchmark fine-tuning throughput: ``hespot bench-finetune`` (also ``python -m
embed.bench.finetune``, ``make bench-finetune``; not a test).

In one run, on real patches of the canonical file: the training step (forward, L1 loss,
backward, AdamW step; channels_last) of the fine-tuning model in fp32 and under bf16
autocast, same batch, same backbone, and the rate of the augmentation's worker half on one
core (what each DataLoader worker delivers; the whole albumentations pipeline's beside it).
The last line is the machine-readable summary, with the bf16/fp32 ratio, and the whole
training loop's rate (one epoch of :func:`embed.finetune.epoch.train_epoch`: persistent
workers, the device's flips, colour and CutMix, copies, steps) beside the fp32 step's.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable
from typing import TextIO

import numpy as np
import torch

from data.cluster import usable_cores
from data.h5 import CanonicalH5
from data.patches import crop_patches
from embed.bench.common import add_count, bench_main, bench_parser, bench_setup
from embed.device import DeviceChoice, cpu_has_bf16
from embed.finetune.augment import WINNING_AUGMENT, build_train_transform, build_worker_transform
from embed.finetune.batch_augment import DEVICE_PARTS, BatchAugment
from embed.finetune.config import FinetuneConfig, TrainSettings
from embed.finetune.data import SlidePatches, SpotDataset
from embed.finetune.epoch import Optimisation, TrainBatches, train_epoch, train_step
from embed.finetune.model import SpotRegressor
from embed.weights import build_model

#: images of the whole loop's epoch on a CPU (a GPU runs every training spot)
CPU_LOOP_SPOTS = 96

def train_images_per_s(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                       choice: DeviceChoice, steps: int, warmup: int = 1) -> float:
    """Training steps per second x batch size, after ``warmup`` untimed steps.

    Args:
        model: copied, then trained on the copy; x: float (B, 3, S, S); y: float (B, T).
    """
    model = copy.deepcopy(model).to(choice.device).train()
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    x, y = x.to(choice.device), y.to(choice.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(choice.device.type, enabled=choice.dtype == torch.float16)
    loss_fn = torch.nn.L1Loss()

    def step() -> None:
        train_step(model, x, y, opt, scaler, loss_fn, choice)

    for _ in range(warmup):
        step()
    if choice.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if choice.device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(x) / (time.perf_counter() - t0)


def augment_images_per_s(patches: np.ndarray, transform: Callable,
                         seconds: float = 3.0) -> float:
    """An albumentations pipeline's rate (images/s) in this process (one core).

    Args:
        patches: uint8 (n, S, S, 3), cycled through for ``seconds``.
    """
    t = transform
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        t(image=patches[n % len(patches)])
        n += 1
    return n / (time.perf_counter() - t0)


def loop_images_per_s(model: torch.nn.Module, patches: np.ndarray, Y: np.ndarray,
                      backbone, choice: DeviceChoice, batch_size: int, workers: int
                      ) -> float:
    """One epoch of the real training loop (:func:`embed.finetune.epoch.train_epoch`: the
    DataLoader and its ``workers`` running the winning pipeline's worker half, the copy
    to the device, flips, colour and CutMix there, the step, the schedule) over
    ``patches`` (uint8 (n, S, S, 3)) and targets ``Y`` (float32 (n, n_types)), in
    images/s, the workers' start included.

    Args:
        model: copied, then trained on the copy."""
    model = copy.deepcopy(model).to(choice.device)
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    st = TrainSettings(epochs=1, batch_size=batch_size, lr=1e-4, weight_decay=1e-2,
                       cutmix_p=0.5, loss="l1", val_tta=1, workers=workers, seed=0,
                       quiet=True)
    train = SpotDataset(patches, Y, build_worker_transform(WINNING_AUGMENT, patches.shape[1],
                                                           seed=0))
    augment = BatchAugment(DEVICE_PARTS, backbone.mean, backbone.std)
    optim = Optimisation.build(model, st, len(train), choice)
    t0 = time.perf_counter()
    batches = TrainBatches.build(train, augment, st, choice)
    _, images = train_epoch(model, batches, optim, choice, st, "bench", 0)
    if choice.device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0)


def measure(args: argparse.Namespace, out: TextIO) -> str:
    """Run the benchmark ``args`` ask for, writing each figure to ``out``; the summary
    line."""
    backbone, base = bench_setup(args, precision="fp32")
    with CanonicalH5(args.h5) as h5:
        slide = h5.train_slides[0]
        idx = np.arange(min(args.batch_size, len(h5.spots(slide))))
        patches = crop_patches(h5, slide, args.patch_px, idx)
        Y = h5.spots(slide).Y[idx]
    encoder, _ = build_model(backbone)
    torch.manual_seed(0)
    model = SpotRegressor(encoder, encoder.num_features, Y.shape[1])
    aug = build_train_transform((), backbone.mean, backbone.std, args.patch_px)
    x = torch.stack([aug(image=q)["image"] for q in patches])
    y = torch.from_numpy(Y).float()
    native = base.device.type == "cuda" or cpu_has_bf16()
    out.write(f"device: {base.describe()}, threads {torch.get_num_threads()}, backbone "
              f"{backbone.name}, batch {len(x)} x {args.patch_px} px, {args.steps} timed steps"
              f" per precision{'' if native else ' (this CPU has no native bf16)'}\n")
    rates = {}
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        choice = DeviceChoice(base.device, dtype, base.channels_last)
        rates[name] = train_images_per_s(model, x, y, choice, args.steps, args.warmup)
        out.write(f"{name}: {rates[name]:.2f} training images/s\n")
    whole = augment_images_per_s(patches, build_train_transform(
        WINNING_AUGMENT, backbone.mean, backbone.std, args.patch_px, seed=0))
    aug_rate = augment_images_per_s(patches, build_worker_transform(
        WINNING_AUGMENT, args.patch_px, seed=0))
    out.write(f"augmentation, one process: the workers' half {aug_rate:.1f} images/s (the "
              f"whole albumentations pipeline {whole:.1f})\n")
    loop, n_loop, workers = whole_loop(args, model, backbone, base)
    out.write(f"whole loop (one epoch of {n_loop} images, {workers} workers, fp32): "
              f"{loop:.2f} images/s ({loop / rates['fp32']:.2f} of the fp32 step)\n")
    return (f"bench-finetune backbone={backbone.name} batch={len(x)} px={args.patch_px} "
            f"threads={torch.get_num_threads()} fp32_images_per_s={rates['fp32']:.2f} "
            f"bf16_images_per_s={rates['bf16']:.2f} "
            f"bf16_vs_fp32={rates['bf16'] / rates['fp32']:.2f} "
            f"augment_images_per_s={aug_rate:.1f} loop_images_per_s={loop:.2f} "
            f"loop_vs_step={loop / rates['fp32']:.2f}")


def whole_loop(args: argparse.Namespace, model: torch.nn.Module, backbone,
               base: DeviceChoice) -> tuple[float, int, int]:
    """(:func:`loop_images_per_s` in fp32, images, workers) over the first training
    slides' spots: ``--loop-spots`` of them (default: every one on a GPU,
    :data:`CPU_LOOP_SPOTS` on a CPU), ``--workers`` workers (default: 14 on a GPU, as
    issue 27 ran, else the fine-tuning default)."""
    cuda = base.device.type == "cuda"
    workers = args.workers if args.workers is not None else (
        min(14, usable_cores()) if cuda else FinetuneConfig.workers)
    with CanonicalH5(args.h5) as h5:
        data = SlidePatches.load(h5, h5.train_slides, args.patch_px)
        patches, Y = data.stack(h5.train_slides, "spot_rank")
    n = args.loop_spots or (len(patches) if cuda else CPU_LOOP_SPOTS)
    fp32 = DeviceChoice(base.device, None, base.channels_last)
    return (loop_images_per_s(model, patches[:n], Y[:n], backbone, fp32, args.batch_size,
                              workers), min(n, len(patches)), workers)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``hespot bench-finetune``."""
    p = bench_parser("hespot bench-finetune", __doc__, ("h5", "device", "threads"))
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--patch-px", type=int, default=224)
    p.add_argument("--steps", type=int, default=3, help="timed steps per precision")
    p.add_argument("--warmup", type=int, default=1)
    add_count(p, "--workers", "DataLoader workers of the whole loop", 14,
              f"the fine-tuning default, {FinetuneConfig.workers},")
    add_count(p, "--loop-spots", "images of the whole loop's epoch", "every training spot",
              CPU_LOOP_SPOTS)
    return p


#: ``main(argv) -> int``, as ``hespot`` calls it
main = bench_main(measure, build_parser)


if __name__ == "__main__":
    raise SystemExit(main())
