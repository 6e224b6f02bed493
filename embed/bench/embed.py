"""Benchmark stage 1 on the sample: ``make bench-embed`` (not a test).

Measured in one run, same backbone, views and dtype, each in a fresh process:
(a) the limit: the backbone's raw forward throughput on random tensors (before and after
    (b), averaged);
(b) the whole pipeline (``embed.run``: window reading, preprocessing, TTA, the traced or
    eager forward, Zarr writes) over every slide, start-up included;
(c) a naive loop as a notebook would write it: per spot, crop with PIL, build the 8 views,
    fp32, no background reading.
The last line is the machine-readable summary.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from dataclasses import replace
from typing import TextIO

import numpy as np
import torch
from PIL import Image

from data.h5 import CanonicalH5
from embed.backbones import get_backbone
from embed.bench.common import (
    bench_main,
    bench_parser,
    bench_setup,
    in_subprocess,
    limit_in_process,
)
from embed.config import EmbedConfig, default_batch_spots, default_prefetch
from embed.run import peak_rss_mb, run
from embed.weights import build_model

log = logging.getLogger("hespot")


def naive_views_per_s(h5_path: str, slide: str, backbone_name: str, n_spots: int,
                      patch: int, device: str = "cpu",
                      weights: str | None = None) -> float:
    """Per spot: PIL crop, 8 views, fp32 NCHW, one forward per spot on ``device``.

    Run in a fresh process (see :func:`in_subprocess`): a notebook has neither our
    allocator settings nor our threads."""
    backbone = get_backbone(backbone_name)
    model, _ = build_model(backbone, weights)
    with CanonicalH5(h5_path) as h5:
        image = Image.fromarray(h5.h5[f"images/{h5.split_of(slide)}/{slide}"][()])
        table = h5.spots(slide)
    mean = torch.tensor(backbone.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.std, device=device).view(1, 3, 1, 1)
    model = model.float().eval().to(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(n_spots):
            x, y = int(table.x[i]), int(table.y[i])
            crop = image.crop((x - patch // 2, y - patch // 2, x + patch - patch // 2,
                               y + patch - patch // 2)).resize((backbone.input_size,) * 2)
            arr = np.asarray(crop, dtype=np.float32) / 255.0
            views = [np.rot90(arr, k) for k in range(4)]
            views += [np.rot90(arr[:, ::-1], k) for k in range(4)]
            batch = torch.from_numpy(np.stack(views).copy()).permute(0, 3, 1, 2).to(device)
            model((batch - mean) / std).mean(0).cpu()
    return n_spots * 8 / (time.perf_counter() - t0)


def pipeline_seconds(cfg: EmbedConfig) -> tuple[float, float]:
    """(wall seconds of ``embed.run.run(cfg)``, peak RSS in MB of the process).

    Run in a fresh process (see :func:`in_subprocess`), as ``make embeddings`` runs: it pays
    its own start-up (weights, tracing) and its RSS is its own."""
    t0 = time.perf_counter()
    run(cfg)
    return time.perf_counter() - t0, peak_rss_mb()


def measure(args: argparse.Namespace, out: TextIO) -> str:
    """Run the benchmark ``args`` ask for, writing each figure to ``out``; the summary
    line."""
    backbone, choice = bench_setup(args)
    batch_spots = args.batch_spots or default_batch_spots(choice)
    # the limit is taken before and after the pipeline and averaged: this machine's speed
    # drifts by ~10 % over a minute, and a ratio of two numbers taken at different times
    # would carry that drift
    limit_args = (backbone.name, args.weights, args.tta, batch_spots, args.device,
                  args.precision, args.runner, args.limit_seconds / 2)
    before, runner = in_subprocess(limit_in_process, *limit_args, threads=args.threads)
    out.write(f"device: {choice.describe()}, threads {torch.get_num_threads()}, "
              f"backbone {backbone.name}, {args.tta} views, {batch_spots} spots/batch, "
              f"runner {runner}\n")
    with CanonicalH5(args.h5) as h5:
        slides = tuple(s for s in args.slides.split(",") if s) or tuple(
            h5.train_slides + h5.test_slides)
        n_views = sum(len(h5.spots(s)) for s in slides) * args.tta
        first = slides[0]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(EmbedConfig(), h5=args.h5, store=f"{tmp}/bench.zarr",
                      backbones=(backbone.name,), slides=slides, tta=args.tta,
                      batch_spots=batch_spots, device=args.device,
                      precision=args.precision, runner=args.runner, weights=args.weights,
                      quiet=True)
        seconds, rss = in_subprocess(pipeline_seconds, cfg, threads=args.threads)
        reading = ("patches read in the model's thread" if default_prefetch(choice) == 0
                   else "patches read in a background thread")
        pipeline = n_views / seconds
    after, _ = in_subprocess(limit_in_process, *limit_args, threads=args.threads)
    limit = (before + after) / 2
    out.write(f"(a) limit: {limit:.1f} views/s (random input, same runner, dtype and batch, "
              f"fresh processes; {before:.1f} before the pipeline, {after:.1f} after)\n")
    out.write(f"(b) pipeline: {pipeline:.1f} views/s over {len(slides)} slides "
              f"({n_views} views, fresh process, {reading}), "
              f"its peak RSS {rss:.0f} MB\n")
    naive = in_subprocess(naive_views_per_s, args.h5, first, backbone.name, args.naive_spots,
                          cfg.patch_px, str(choice.device), args.weights, threads=args.threads)
    out.write(f"(c) naive: {naive:.1f} views/s (PIL crop per spot, fp32 on {choice.device}, "
              f"{args.naive_spots} spots, fresh process)\n")
    return (f"bench-embed views_per_s={pipeline:.1f} limit_views_per_s={limit:.1f} "
            f"naive_views_per_s={naive:.1f} vs_limit={pipeline / limit:.2f} "
            f"vs_naive={pipeline / naive:.2f} peak_rss_mb={rss:.0f}")


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser("hespot bench-embed", __doc__, ("h5", "device", "precision", "threads"),
                     limit_seconds=20.0)
    p.add_argument("--batch-spots", type=int, default=None,
                   help="spots per batch (default: the pipeline's, 4 on CPU)")
    p.add_argument("--slides", default="", help="comma-separated (default: all)")
    p.add_argument("--naive-spots", type=int, default=24)
    p.add_argument("--weights", default=None,
                   help="local weights file for the backbone (e.g. UNI: --backbone uni)")
    return p


#: ``main(argv) -> int``, as ``hespot`` calls it
main = bench_main(measure, build_parser)


if __name__ == "__main__":
    raise SystemExit(main())
