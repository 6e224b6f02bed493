"""bench-embed's workloads beyond the model's limit: stage 1 run whole in a fresh process
(the sample, and a whole slide: the tissue grid of the bundled C2, ``make c2-grid``), with
its start-up and steady rate, and the feeding capacity of 1 and 2 reader processes with a
model that costs nothing (:func:`embed.bench.read.feed_spots_per_s`)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

from data.h5 import CanonicalH5, write_first_spots
from embed.bench.common import in_subprocess
from embed.bench.read import feed_spots_per_s
from embed.config import EmbedConfig
from embed.device import DeviceChoice
from embed.run import run
from embed.startup import peak_rss_mb

#: spots of the whole-slide workload run through the model on a CPU (a GPU runs them all:
#: the grid's 23,011 spots at 8 views are 12-23 min of a 2-core CPU's model)
CPU_SLIDE_SPOTS = 512
#: spots the feeding capacity is measured over on a CPU (a GPU: all)
CPU_FEED_SPOTS = 16384


@dataclass(frozen=True)
class Workload:
    """One stage-1 run (of the canonical file ``h5``, ``patch_px`` crops) and what it
    took: views/s of ``run`` (start-up included, the interpreter's and imports' not), of
    the whole process, and after the first batch."""

    name: str
    views: int
    seconds: float
    timing: dict
    rss_mb: float
    h5: str
    patch_px: int

    @property
    def views_per_s(self) -> float:
        return self.views / self.seconds

    @property
    def command_views_per_s(self) -> float:
        """Views over the whole process's time (interpreter start to the last chunk)."""
        return self.views / self.timing["run_s"]

    @property
    def steady_views_per_s(self) -> float:
        return self.timing["steady_views_per_s"] or self.views_per_s


def pipeline_run(cfg: EmbedConfig) -> tuple[float, float, dict]:
    """(wall seconds of ``embed.run.run(cfg)``, peak RSS in MB of the process, its timing).

    Run in a fresh process (:func:`embed.bench.common.in_subprocess`), as ``make
    embeddings`` runs: it pays its own start-up (imports, weights, tracing) and its RSS is
    its own."""
    timing: dict = {}
    t0 = time.perf_counter()
    run(cfg, timing)
    return time.perf_counter() - t0, peak_rss_mb(), timing


def run_workload(name: str, cfg: EmbedConfig, threads: int | None) -> Workload:
    """``cfg`` run whole in a fresh process."""
    seconds, rss, timing = in_subprocess(pipeline_run, cfg, threads=threads)
    return Workload(name, timing["views"], seconds, timing, rss, cfg.h5, cfg.patch_px)


def slide_workload(args: argparse.Namespace, base: EmbedConfig, choice: DeviceChoice,
                   tmp: str) -> Workload:
    """The whole slide (``args.grid_h5``), every spot on a GPU; on a CPU its first
    ``--grid-spots`` (default :data:`CPU_SLIDE_SPOTS`), copied with the same image."""
    path = args.grid_h5
    limit = args.grid_spots or (None if choice.device.type == "cuda" else CPU_SLIDE_SPOTS)
    if limit:
        path = str(write_first_spots(args.grid_h5, Path(tmp) / "slide.h5", limit))
    cfg = replace(base, h5=path, store=f"{tmp}/slide.zarr", slides=())
    return run_workload("whole slide", cfg, args.threads)


def feed_rates(args: argparse.Namespace, path: str, patch_px: int, choice: DeviceChoice,
               batch_spots: int) -> dict[int, float]:
    """{reader processes: spots/s handed over}, 1 and 2 readers, each in a fresh process,
    over ``path``'s first ``--feed-spots`` spots (default: all on a GPU, else
    :data:`CPU_FEED_SPOTS`)."""
    with CanonicalH5(path) as h5:
        total = sum(h5.n_spots(s) for s in h5.train_slides + h5.test_slides)
    cap = args.feed_spots or (total if choice.device.type == "cuda" else CPU_FEED_SPOTS)
    return {r: in_subprocess(feed_spots_per_s, path, args.backbone, patch_px,
                             min(cap, total), r, str(choice.device), batch_spots,
                             threads=args.threads) for r in (1, 2)}


def write_workload(out: TextIO, label: str, w: Workload, limit: float) -> None:
    """One line per workload: rate, start-up, steady rate, each against the limit."""
    t = w.timing
    phases = ", ".join(f"{k} {v:.1f}" for k, v in t["phases"].items())
    out.write(f"{label} {w.name}: {w.views_per_s:.1f} views/s over {w.views} views "
              f"({w.views_per_s / limit:.2f} of the limit; whole process "
              f"{w.command_views_per_s:.1f}, {w.command_views_per_s / limit:.2f}); start-up "
              f"{t['startup_s']:.1f} s to the first batch ({phases}); steady "
              f"{w.steady_views_per_s:.1f} views/s ({w.steady_views_per_s / limit:.2f}); "
              f"peak RSS {w.rss_mb:.0f} MB\n")
