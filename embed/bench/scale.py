"""Benchmark stage 1's executors on the sample: ``make bench-scale`` (not a test).

In one run, each in a fresh process: stage 1 in-process, with ``--workers 1`` and with
``--workers 2`` (a Dask LocalCluster started and stopped by the run), same backbone,
views and slides, each into its own store; then whether the three stores hold the same
features bit for bit. Throughput is views per second of the work phase (from the first
unit handed out to the last one written, the workers' model loading included); the
start-up (imports, cluster, planning) is printed beside it. The last line is
``bench-scale inproc_views_per_s=<a> workers1_views_per_s=<b> workers2_views_per_s=<c>
same_features=<true|false>``.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from data.cli import parse_list, setup_logging
from data.store import FeatureSpec, open_store, read_array
from embed.bench.common import bench_main, bench_parser
from embed.bench.once import fresh_run

log = logging.getLogger("hespot")

VARIANTS = {"inproc": 0, "workers1": 1, "workers2": 2}


def same_features(stores: Sequence[str], backbone: str, slides: Sequence[str]) -> bool:
    """Whether every store holds bit-identical ``features`` of every slide."""
    first = [read_array(open_store(stores[0]), stores[0], FeatureSpec(backbone), s)
             for s in slides]
    for other in stores[1:]:
        store = open_store(other)
        if not all(np.array_equal(a, read_array(store, other, FeatureSpec(backbone), s))
                   for a, s in zip(first, slides, strict=True)):
            return False
    return True


def measure(args: argparse.Namespace, out: TextIO) -> str:
    """Run the benchmark ``args`` ask for, writing each figure to ``out``; the summary
    line."""
    setup_logging(quiet=True)
    from data.h5 import CanonicalH5
    with CanonicalH5(args.h5) as h5:
        slides = list(args.slides) or h5.train_slides + h5.test_slides
    figures, stores = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for name, workers in VARIANTS.items():
            store = str(Path(tmp) / f"{name}.zarr")
            stores.append(store)
            cfg = {"h5": str(args.h5), "store": store, "backbones": [args.backbone],
                   "slides": slides, "tta": args.tta, "device": args.device,
                   "precision": args.precision, "workers": workers,
                   "chunks_per_task": args.chunks_per_task, "quiet": True}
            timing, wall = fresh_run(cfg)
            figures[name] = timing["views"] / timing["units_s"]
            out.write(f"{name:9s} {figures[name]:7.1f} views/s over {timing['views']} views "
                      f"({timing['units_s']:.1f} s of work; {wall:.1f} s with start-up, "
                      f"{timing['views'] / wall:.1f} views/s)\n")
            out.flush()
        same = same_features(stores, args.backbone, slides)
    rates = " ".join(f"{name}_views_per_s={v:.1f}" for name, v in figures.items())
    return f"bench-scale {rates} same_features={str(same).lower()}"


def build_parser() -> argparse.ArgumentParser:
    p = bench_parser("hespot bench-scale", __doc__, ("h5", "device", "precision"))
    p.add_argument("--tta", type=int, default=8)
    p.add_argument("--slides", type=parse_list, default=(),
                   help="comma-separated (default: all)")
    p.add_argument("--chunks-per-task", type=int, default=2,
                   help="chunks of 64 spots per Dask task (the sample's slides are "
                   "about 3 chunks: 2 spreads them over both workers)")
    return p


#: ``main(argv) -> int``, as ``hespot`` calls it
main = bench_main(measure, build_parser)


if __name__ == "__main__":
    raise SystemExit(main())
