"""What the benchmarks share: torch threads, measurements in a fresh process, the
backbone's limit on random input, the parser with the benchmarks' common flags, and the
set-up every benchmark starts with (logging, threads, backbone, device)."""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TextIO

import torch

from data.cli import DEFAULT_H5, Parser, add_common, entry_point, setup_logging
from embed.backbones import DEFAULT_BACKBONE, Backbone, get_backbone
from embed.device import DeviceChoice, select_device
from embed.extract import FeatureExtractor
from embed.weights import build_model


def set_threads(threads: int | None) -> None:
    """``threads`` torch intra-op threads; None or 0: torch's own choice."""
    if threads:
        torch.set_num_threads(threads)


def in_subprocess(fn, *args, threads: int | None = None):
    """``fn(*args)`` in a freshly spawned interpreter, with ``threads`` torch threads
    (default: torch's own choice). A process that dies (killed, out of memory) raises
    ``BrokenProcessPool`` here (a ``multiprocessing.Pool`` would wait for it forever)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx, initializer=set_threads,
                             initargs=(threads,)) as pool:
        return pool.submit(fn, *args).result()


def limit_views_per_s(extractor: FeatureExtractor, batch_spots: int, seconds: float) -> float:
    """Forward throughput (views/s) on random preprocessed inputs, TTA included."""
    size = extractor.backbone.input_size
    x = torch.randn(batch_spots, 3, size, size)
    extractor(x)  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        extractor(x)
        n += 1
    return n * batch_spots * extractor.n_views / (time.perf_counter() - t0)


def limit_in_process(backbone_name: str, weights: str | None, tta: int, batch_spots: int,
                     device: str, precision: str, runner: str,
                     seconds: float) -> tuple[float, str]:
    """(:func:`limit_views_per_s`, the runner used), measured in a fresh process (see
    :func:`in_subprocess`) like the pipeline: nothing else of the benchmark's is resident
    beside either measurement (a parent holding the traced model measured ~6 % slower
    pipelines in alternating runs)."""
    backbone = get_backbone(backbone_name)
    model, _ = build_model(backbone, weights)
    extractor = FeatureExtractor(model, backbone, select_device(device, precision), tta,
                                 runner=runner, batch_spots=batch_spots)
    return limit_views_per_s(extractor, batch_spots, seconds), extractor.runner


def bench_parser(prog: str, description: str | None, common: Sequence[str],
                 limit_seconds: float | None = None) -> argparse.ArgumentParser:
    """A benchmark's parser: the shared flags ``common`` (keys of
    :data:`data.cli.COMMON_FLAGS`; ``--h5`` defaults to the sample's file, ``--device`` and
    ``--precision`` to auto) and ``--backbone``; with ``limit_seconds``, also ``--tta``,
    ``--limit-seconds`` (that default) and ``--runner``, for the model's limit."""
    p = Parser(prog=prog, description=description,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, *common)
    p.set_defaults(**{k: v for k, v in (("h5", DEFAULT_H5), ("device", "auto"),
                                        ("precision", "auto")) if k in common})
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
    if limit_seconds is not None:
        p.add_argument("--tta", type=int, default=8)
        p.add_argument("--limit-seconds", type=float, default=limit_seconds)
        p.add_argument("--runner", default="auto", help="forward runner (embed.runners)")
    return p


def add_count(parser: argparse.ArgumentParser, flag: str, what: str, on_gpu: object,
              on_cpu: object) -> None:
    """An int flag ``flag`` whose default (None) depends on the device: ``on_gpu`` on a
    GPU, ``on_cpu`` on a CPU (the measuring function resolves it)."""
    parser.add_argument(flag, type=int, default=None,
                        help=f"{what} (default: {on_gpu} on a GPU, {on_cpu} on a CPU)")


def bench_setup(args: argparse.Namespace, precision: str | None = None
                ) -> tuple[Backbone, DeviceChoice]:
    """Quiet logging, ``args.threads`` torch threads; the backbone ``args.backbone`` and
    the device ``args.device`` with ``precision`` (default ``args.precision``). Unknown
    names and devices fail here, before any work."""
    setup_logging(quiet=True)
    set_threads(getattr(args, "threads", None))
    backbone = get_backbone(args.backbone)
    return backbone, select_device(args.device, precision or args.precision)


def bench_main(measure: Callable[[argparse.Namespace, TextIO], str],
               build_parser: Callable[[], argparse.ArgumentParser]
               ) -> Callable[[Sequence[str] | None], int]:
    """A benchmark's ``main(argv) -> int``: parse ``argv``, run ``measure(args, stdout)``
    (which writes what it measured, line by line) and print the summary line it returns,
    last; a bad setting or input is one line on stderr and exit code 2
    (:func:`data.cli.entry_point`)."""
    def body(argv: Sequence[str] | None) -> int:
        line = measure(build_parser().parse_args(argv), sys.stdout)
        sys.stdout.write(line + "\n")
        return 0

    main = entry_point(body)
    main.__doc__ = f"{build_parser().prog}: the figures, then the summary line."
    return main
