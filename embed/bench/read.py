"""Benchmark stage 1's reader alone beside the model: ``make bench-read`` (not a test).

For each ``--h5`` (the sample's canonical file, whose pixels it holds; the big slide's,
which references a pyramidal TIFF read in place), the patches/s of the reading side of
stage 1 in the model's process: crop the spots chunk by chunk (one window read per
chunk, :class:`data.patches.PatchCropper`), then preprocess them for the model (on a CPU;
a GPU does that itself); then, per ``--readers`` count, the patches/s cropped by that
many reader processes and handed over as uint8 (:mod:`embed.feed`). Then the model's own
limit on random input (spots/s, the same views, runner,
dtype and batch as ``make embeddings``), in a fresh process. Reading keeps up when its
patches/s exceed the model's spots/s. The last line is the machine-readable summary.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import TextIO

import numpy as np
import torch

from data.cli import parse_list
from data.h5 import CanonicalH5
from data.patches import PatchCropper
from data.store import BackboneItem
from embed.backbones import Backbone, get_backbone
from embed.bench.common import (
    bench_main,
    bench_parser,
    bench_setup,
    in_subprocess,
    limit_in_process,
)
from embed.config import EmbedConfig, default_batch_spots
from embed.extract import preprocess
from embed.startup import peak_rss_mb
from embed.units import slide_units
from embed.worker import unit_batches


def reader_patches_per_s(h5_path: str, backbone: Backbone, crop_px: int, n_spots: int,
                         chunk_spots: int) -> tuple[float, float, int, str]:
    """(patches/s cropped, patches/s cropped + preprocessed, spots read, reader name) over
    the first ``n_spots`` spots of the file's slides, in spot-table order."""
    with CanonicalH5(h5_path) as h5:
        slides = h5.train_slides + h5.test_slides
        crop_s = prep_s = 0.0
        done, reader = 0, ""
        for slide in slides:
            table = h5.spots(slide)
            reader = h5.image(slide).reader
            cropper = PatchCropper(h5, slide, crop_px, out_px=backbone.input_size)
            for s in range(0, len(table), chunk_spots):
                idx = slice(s, min(len(table), s + chunk_spots, s + n_spots - done))
                t0 = time.perf_counter()
                patches = cropper.crop(table.x[idx], table.y[idx])
                t1 = time.perf_counter()
                preprocess(patches, backbone)
                crop_s += t1 - t0
                prep_s += time.perf_counter() - t1
                done += len(patches)
                if done >= n_spots:
                    break
            if done >= n_spots:
                break
    return done / crop_s, done / (crop_s + prep_s), done, reader


def feed_spots_per_s(h5_path: str, backbone_name: str, crop_px: int, n_spots: int,
                     readers: int, device: str = "cpu", batch_spots: int = 64) -> float:
    """Feeding capacity with a model that costs nothing: spots/s handed to ``device`` as
    uint8 patches by ``readers`` reader processes (0: cropped in this process), as stage
    1 feeds its model (:func:`embed.worker.unit_batches`; on CUDA through pinned memory
    and a copy that does not wait), over the first ``n_spots`` spots of the file's slides
    (one unit per slide; the readers' start included)."""
    backbone = get_backbone(backbone_name)
    cfg = replace(EmbedConfig(), patch_px=crop_px, batch_spots=batch_spots, readers=readers)
    job, cuda = BackboneItem(backbone.name), device.startswith("cuda")
    done, t0 = 0, time.perf_counter()
    with CanonicalH5(h5_path) as h5:
        for slide in h5.train_slides + h5.test_slides:
            table = h5.positions(slide)
            take = min(len(table), n_spots - done)
            chunks = np.arange(-(-take // cfg.chunk_spots))
            for unit in slide_units(job, slide, table.x[:take], table.y[:take], chunks,
                                    cfg.chunk_spots, (crop_px,), crop_px):
                for *_, patches in unit_batches(h5, unit, cfg, backbone, readers, pin=cuda):
                    for p in patches:
                        p.to(device, non_blocking=True)
                done += unit.n_spots
            if done >= n_spots:
                break
    if cuda:
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def measure(args: argparse.Namespace, out: TextIO) -> str:
    """Run the benchmark ``args`` ask for, writing each figure to ``out``; the summary
    line."""
    backbone, choice = bench_setup(args)
    batch = default_batch_spots(choice)
    figures = []
    for path in args.h5:
        crop, full, n, reader = reader_patches_per_s(path, backbone, args.patch_px,
                                                     args.spots, EmbedConfig.chunk_spots)
        out.write(f"reader {path} ({reader}): {crop:.0f} patches/s cropped, {full:.0f} "
                  f"patches/s cropped + preprocessed ({n} spots, {args.patch_px} px)\n")
        figures.append(full)
        for r in args.readers:
            rate = in_subprocess(feed_spots_per_s, path, backbone.name, args.patch_px,
                                 args.spots, r, str(choice.device), threads=args.threads)
            out.write(f"  --readers {r}: {rate:.0f} patches/s cropped by {r} reader "
                      f"process{'es' if r != 1 else ''}, handed over as uint8 (fresh "
                      f"process; preprocessing is the device's)\n")
    views, runner = in_subprocess(limit_in_process, backbone.name, None, args.tta, batch,
                                  args.device, args.precision, args.runner,
                                  args.limit_seconds, threads=args.threads)
    spots = views / args.tta
    out.write(f"model {backbone.name}: {views:.1f} views/s = {spots:.1f} spots/s at "
              f"{args.tta} views ({choice.describe()}, runner {runner}, {batch} spots/batch)"
              f"\n")
    pairs = " ".join(f"reader{i}_patches_per_s={v:.0f}" for i, v in enumerate(figures))
    return (f"bench-read {pairs} model_spots_per_s={spots:.1f} "
            f"reader_over_model={min(figures) / spots:.1f} peak_rss_mb={peak_rss_mb():.0f}")


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser("hespot bench-read", __doc__, ("device", "precision", "threads"),
                     limit_seconds=10.0)
    p.add_argument("--h5", action="append", required=True, help="canonical file (repeat)")
    p.add_argument("--patch-px", type=int, default=EmbedConfig.patch_px)
    p.add_argument("--spots", type=int, default=2000, help="spots read per file")
    p.add_argument("--readers", type=lambda v: parse_list(v, int), default=(1, 2),
                   help="reader process counts to measure, e.g. 1,2,4 (--readers of embed)")
    return p


#: ``main(argv) -> int``, as ``hespot`` calls it
main = bench_main(measure, build_parser)


if __name__ == "__main__":
    raise SystemExit(main())
