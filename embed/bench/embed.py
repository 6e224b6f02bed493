"""Benchmark stage 1 on the sample: ``make bench-embed`` (not a test).

Measured in one run, same backbone, views and dtype, each in a fresh process:
(a) the limit: the backbone's raw forward throughput on random tensors (before and after
    (b) and (d), averaged);
(b) the whole pipeline (``embed.run``: window reading, preprocessing, TTA, the traced or
    eager forward, Zarr writes) over every slide, start-up included (the interpreter's
    and imports' not), with its start-up to the first batch and its steady rate after it;
(d) with ``--grid-h5``, the same on a whole slide (``make c2-grid``: a tissue grid of the
    bundled C2, 23,011 spots; on a CPU its first 512), and over the whole process;
(c) a naive loop as a notebook would write it: per spot, crop with PIL, build the 8 views,
    fp32, no background reading;
(e) the feeding capacity: spots/s that 1 and 2 reader processes hand to the device as
    uint8 with a model that costs nothing, beside the spots/s the model takes (a / views),
    on the whole slide and, with ``--feed-h5``, on a slide read in place (``make
    c2-tiff``: the same grid over C2 written as a pyramidal JPEG TIFF, as a scanner's
    slide is read: JPEG tiles decoded by the readers).
The last line is the machine-readable summary: (b)'s figures as before, then the whole
slide's (else the sample's) ``startup_s`` and ``steady_vs_limit``, ``model_spots_per_s``,
``feed1_spots_per_s``, ``feed2_spots_per_s`` (on ``--feed-h5`` where given) and, with
``--grid-h5``, the whole command's ``slide_views_per_s`` and ``slide_vs_limit``.
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
    add_count,
    bench_main,
    bench_parser,
    bench_setup,
    in_subprocess,
    limit_in_process,
)
from embed.bench.slide import (
    CPU_FEED_SPOTS,
    CPU_SLIDE_SPOTS,
    Workload,
    feed_rates,
    run_workload,
    slide_workload,
    write_workload,
)
from embed.config import EmbedConfig, default_batch_spots
from embed.device import DeviceChoice
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
    with tempfile.TemporaryDirectory() as tmp:  # the workloads' stores and slide copy
        base = replace(EmbedConfig(), backbones=(backbone.name,), tta=args.tta,
                       batch_spots=batch_spots, device=args.device, precision=args.precision,
                       runner=args.runner, weights=args.weights, quiet=True)
        sample = run_workload(f"sample ({len(slides)} slides)", replace(
            base, h5=args.h5, store=f"{tmp}/sample.zarr", slides=slides), args.threads)
        whole = slide_workload(args, base, choice, tmp) if args.grid_h5 else None
        after, _ = in_subprocess(limit_in_process, *limit_args, threads=args.threads)
        limit = (before + after) / 2
        out.write(f"(a) limit: {limit:.1f} views/s (random input, same runner, dtype and "
                  f"batch, fresh processes; {before:.1f} before the pipelines, {after:.1f} "
                  "after)\n")
        write_workload(out, "(b)", sample, limit)
        if whole is not None:
            write_workload(out, "(d)", whole, limit)
        naive = in_subprocess(naive_views_per_s, args.h5, slides[0], backbone.name,
                              args.naive_spots, base.patch_px, str(choice.device),
                              args.weights, threads=args.threads)
        out.write(f"(c) naive: {naive:.1f} views/s (PIL crop per spot, fp32 on "
                  f"{choice.device}, {args.naive_spots} spots, fresh process)\n")
        return summary(args, sample, whole or sample, limit, naive, choice, batch_spots, out)


def summary(args: argparse.Namespace, sample: Workload, whole: Workload, limit: float,
            naive: float, choice: DeviceChoice, batch_spots: int, out: TextIO) -> str:
    """The feeding capacity (e), then the last line: the sample's figures as before, then
    the whole slide's (the sample's without ``--grid-h5``) start-up, steady rate against
    the limit, and the model's spots/s beside the readers'."""
    model = limit / args.tta
    slide = args.grid_h5 or whole.h5  # the whole slide's file, not its first spots' copy
    for path in (slide, args.feed_h5) if args.feed_h5 else (slide,):
        feed = feed_rates(args, path, whole.patch_px, choice, batch_spots)
        out.write(f"(e) feed on {path}: 1 reader process {feed[1]:.0f} spots/s, 2: "
                  f"{feed[2]:.0f} ({feed[2] / feed[1]:.2f}x), handed to {choice.device} as "
                  f"uint8 with a model that costs nothing; the model takes {model:.1f} "
                  f"spots/s ({min(feed.values()) / model:.1f}x less)\n")
    line = (f"bench-embed views_per_s={sample.views_per_s:.1f} limit_views_per_s={limit:.1f} "
            f"naive_views_per_s={naive:.1f} vs_limit={sample.views_per_s / limit:.2f} "
            f"vs_naive={sample.views_per_s / naive:.2f} peak_rss_mb={sample.rss_mb:.0f} "
            f"startup_s={whole.timing['startup_s']:.1f} "
            f"steady_vs_limit={whole.steady_views_per_s / limit:.2f} "
            f"model_spots_per_s={model:.1f} feed1_spots_per_s={feed[1]:.0f} "
            f"feed2_spots_per_s={feed[2]:.0f}")
    if whole is not sample:
        line += (f" slide_views_per_s={whole.command_views_per_s:.1f} "
                 f"slide_vs_limit={whole.command_views_per_s / limit:.2f}")
    return line


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser("hespot bench-embed", __doc__, ("h5", "device", "precision", "threads"),
                     limit_seconds=20.0)
    p.add_argument("--batch-spots", type=int, default=None,
                   help="spots per batch (default: the pipeline's, 4 on CPU)")
    p.add_argument("--slides", default="", help="comma-separated (default: all)")
    p.add_argument("--naive-spots", type=int, default=24)
    p.add_argument("--weights", default=None,
                   help="local weights file for the backbone (e.g. UNI: --backbone uni)")
    p.add_argument("--grid-h5", default=None,
                   help="a whole slide's canonical file (make c2-grid: the tissue grid of "
                   "the bundled C2): stage 1 run on it whole, start-up and steady rate")
    p.add_argument("--feed-h5", default=None,
                   help="a slide read in place (make c2-tiff): the summary's feeding "
                   "capacity is measured on it (default: on the whole slide)")
    add_count(p, "--grid-spots", "its first N spots only", "all", CPU_SLIDE_SPOTS)
    add_count(p, "--feed-spots", "spots the readers' feeding capacity is measured over",
              "all of the workload", CPU_FEED_SPOTS)
    return p


#: ``main(argv) -> int``, as ``hespot`` calls it
main = bench_main(measure, build_parser)


if __name__ == "__main__":
    raise SystemExit(main())
