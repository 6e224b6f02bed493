"""Stage 1: embeddings of every spot, with TTA, into a resumable Zarr store.

``python -m embed.run --h5 out/her2st.h5 --store out/embeddings.zarr --backbones
efficientnet_lite0 --tta 8`` (``make embeddings``). For each backbone x slide: crop
patches (``data.patches``; in reader processes on a GPU, :mod:`embed.feed`), preprocess
them on the device, run the model over the dihedral views and write
``<store>/<backbone>/<slide>/features`` chunk by chunk (a
``--backbones`` item's options: ``+stages``, crops ``+448`` px or ``+110um``, stain levers
``+macenko`` and ``+hed`` stored as the group ``<backbone>-macenko-hed``). A
finished slide is skipped, an interrupted one resumes, a changed input or setting is
refused (``--overwrite`` recomputes).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from importlib.metadata import version
from pathlib import Path

import torch
from tqdm import tqdm

from data.check import preflight
from data.cli import config_dict, config_parser, entry_point, parse_list, resolve_config, run_stage
from data.cluster import CLUSTER_FLAGS
from data.errors import ConfigError, DataError, InterruptedRun
from data.lock import output_lock
from data.store import BackboneItem, is_url, parse_crop
from data.version import hespot_version
from embed.config import EmbedConfig, check_config, with_device_defaults
from embed.executors import make_executor, pinned
from embed.plan import SlidePlan, plan_run
from embed.runners import RUNNERS
from embed.startup import RunClock, peak_rss_mb
from embed.tta import TTA_CHOICES
from embed.units import WorkUnit

log = logging.getLogger("hespot")


def run(cfg: EmbedConfig, timing: dict | None = None) -> dict[str, dict[str, str]]:
    """Embed every requested backbone x slide. Returns {backbone: {slide: status}}.

    Settings, names and every slide's inputs (spot table, fingerprint, pixel size, crop
    size) are checked and read once, before any model is built; the store is locked
    against another run writing it (:func:`data.lock.output_lock`); a store this run
    created is removed again when the run is refused midway (a damaged image chunk or
    tile: the first run after fixing it starts over). Every slide's group
    is created (or reopened) before any unit runs; the units then go to the executor
    (:mod:`embed.executors`: in-process, or Dask workers). ``timing``, when given, is
    filled with ``spots`` and ``views`` computed, ``units_s``, the seconds from the
    first unit handed out to the last one finished (model loading on workers included,
    start-up and planning not), and :meth:`RunClock.timing`'s start-up and steady rate."""
    clock = RunClock()
    jobs = check_config(cfg)
    preflight(cfg.h5, list(cfg.slides) or None)
    clock.mark("checks")
    if is_url(cfg.store):
        log.warning("%s: no lock is taken on a store at a URL: do not start two runs on it "
                    "at once", cfg.store)
        lock = nullcontext()
    else:
        cfg = replace(cfg, store=str(Path(cfg.store).resolve()))
        lock = output_lock(cfg.store, "embeddings store")
    cfg = replace(cfg, h5=str(Path(cfg.h5).resolve()))
    created = not is_url(cfg.store) and not Path(cfg.store).exists()
    with lock:
        try:
            executor = make_executor(cfg)
            try:
                return _run(cfg, jobs, executor, {} if timing is None else timing, clock)
            finally:
                executor.close()
        except (DataError, ConfigError) as exc:  # refused midway (a damaged image chunk)
            # nothing is left under the name of a store this run created, unless the run
            # was interrupted from outside (a killed reader): its finished chunks resume
            if created and not isinstance(exc, InterruptedRun):
                shutil.rmtree(cfg.store, ignore_errors=True)
            raise


def _run(cfg: EmbedConfig, jobs: list[BackboneItem], executor, timing: dict,
         clock: RunClock) -> dict[str, dict[str, str]]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    choice = executor.device_choice(cfg)
    cfg = pinned(with_device_defaults(cfg, choice, executor.default_prefetch(choice)),
                 choice, executor.task_threads(cfg))
    log.info("device: %s; executor: %s", choice.describe(), executor.describe())
    log.info("config with the device's defaults: %s", json.dumps(config_dict(cfg)))
    run_info = {"hespot_version": hespot_version(), "torch_version": torch.__version__,
                "timm_version": version("timm"), "device": choice.describe(),
                "config": config_dict(cfg), "h5": str(cfg.h5)}
    clock.mark("device")
    plans = plan_run(cfg, jobs, executor, run_info, clock)
    results: dict[str, dict[str, str]] = {job.key: {} for job in jobs}
    owner: dict[str, SlidePlan] = {}
    tasks: list[tuple[EmbedConfig, WorkUnit]] = []
    for job_cfg, plan in plans:
        results[plan.job.key][plan.slide] = plan.status
        tasks += [(job_cfg, u) for u in plan.units]
        owner.update({u.key: plan for u in plan.units})
    left = {key: plan for key, plan in owner.items()}
    bar = tqdm(total=sum(u.n_spots for _, u in tasks), unit="spot", desc="embeddings",
               disable=cfg.quiet or not tasks)
    t0 = time.perf_counter()

    def finished(unit: WorkUnit) -> None:
        plan = left.pop(unit.key)
        if not any(p is plan for p in left.values()):
            log.info("%s / %s: %s at %.1f s (peak RSS %.0f MB)", plan.job.key, plan.slide,
                     plan.status, time.perf_counter() - t0, peak_rss_mb())

    def progress(spots: int) -> None:
        first = clock.first is None
        clock.batch(spots)
        if first:
            log.info("stage 1: %s", clock.describe())
        bar.update(spots)

    executor.run(tasks, finished, progress)
    bar.close()
    spots = sum(u.n_spots for _, u in tasks)
    timing.update(spots=spots, views=spots * cfg.tta, units_s=time.perf_counter() - t0,
                  **clock.timing(cfg.tta))
    if tasks:
        log.info("stage 1: %d spots x %d views in %.1f s (%.1f views/s, %s)", spots, cfg.tta,
                 timing["units_s"], timing["views"] / timing["units_s"], executor.describe())
    return results


def build_parser() -> argparse.ArgumentParser:
    p = config_parser("python -m embed.run", __doc__, EmbedConfig,
                      common=("h5", "store", "device", "precision", "threads", *CLUSTER_FLAGS,
                              "quiet"))
    p.add_argument("--backbones", type=parse_list,
                   help="comma-separated registry names, each optionally with +stages, "
                   "+<crop px>, +<crop µm>um, +macenko (stain normalisation) and +hed (HED "
                   "jitter of the TTA views; both stored as <name>-macenko-hed), e.g. "
                   "mobilenet_v2,efficientnet_lite0+stages+448,efficientnet_lite0+macenko+110um")
    p.add_argument("--slides", type=parse_list, help="comma-separated slides (default all)")
    p.add_argument("--tta", type=int, choices=TTA_CHOICES, help="dihedral views (default 8)")
    p.add_argument("--patch-px", dest="patch_px", type=int, help="crop side in px (224)")
    p.add_argument("--patch-um", dest="patch_um", type=float, help="crop side in µm")
    p.add_argument("--context", dest="contexts", type=lambda s: parse_list(s, parse_crop),
                   help="extra crop sides for every backbone, in px (448) or µm (110um), "
                   "resized to the model input")
    p.add_argument("--stages", action=argparse.BooleanOptionalAction,
                   help="also store mean+std pooled intermediate stages (every backbone)")
    p.add_argument("--batch-spots", dest="batch_spots", type=int,
                   help="spots per forward pass, x tta views (default: 4 on CPU, 64 on CUDA)")
    p.add_argument("--chunk-spots", dest="chunk_spots", type=int,
                   help="spots per stored chunk and window read; a killed run resumes at "
                   "the first unfinished chunk (default 64)")
    p.add_argument("--runner", choices=["auto", *RUNNERS],
                   help="how the forward runs: auto (jit on a CPU: a traced oneDNN graph, "
                   "checked against eager on its first batch; eager on CUDA), eager, jit, "
                   "compile (torch.compile)")
    p.add_argument("--prefetch", type=int,
                   help="with --readers 0: batches read ahead in a background thread; 0 "
                   "reads in the model's thread (default: 3 on a GPU or with spare CPU "
                   "cores, else 0)")
    p.add_argument("--readers", type=int,
                   help="reader processes cropping patches for the model (0: read in the "
                   "model's process; default: 0 on a CPU, half the cores up to 8 on CUDA)")
    p.add_argument("--weights", help="local weights file (safetensors or state dict)")
    p.add_argument("--pad-mode", dest="pad_mode", choices=["reflect", "constant", "edge"])
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction,
                   help="recompute every requested slide, finished or not, whatever its "
                   "stored settings")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction,
                   help="recheck finished chunks' checksums and compute damaged ones again "
                   "(default on)")
    p.add_argument("--chunks-per-task", dest="chunks_per_task", type=int,
                   help="with --workers/--scheduler: chunks of --chunk-spots spots per Dask "
                   "task (default 8)")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    # run() locks the store itself
    return run_stage(resolve_config(EmbedConfig, build_parser().parse_args(argv)), run, lock=None)


if __name__ == "__main__":
    raise SystemExit(main())
