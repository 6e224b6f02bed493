"""Stage 1: embeddings of every spot, with TTA, into a resumable Zarr store.

``python -m embed.run --h5 out/her2st.h5 --store out/embeddings.zarr --backbones
efficientnet_lite0 --tta 8`` (``make embeddings``). For each backbone x slide: crop
patches (``data.patches``, in a background thread), preprocess, run the model over the
dihedral views and write ``<store>/<backbone>/<slide>/features`` chunk by chunk (a
``--backbones`` item's options: ``+stages``, crops ``+448`` px or ``+110um``, stain levers
``+macenko`` and ``+hed`` stored as the group ``<backbone>-macenko-hed``). A
finished slide is skipped, an interrupted one resumes, a changed input or setting is
refused (``--overwrite`` recomputes).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import torch
from tqdm import tqdm

from data.check import preflight
from data.cli import config_dict, config_parser, parse_list, resolve_config, run_cli, setup_logging
from data.cluster import CLUSTER_FLAGS
from data.errors import ConfigError, DataError
from data.h5 import CanonicalH5
from data.lock import output_lock
from data.store import BackboneItem, Crop, SlideWriter, is_url, open_slide, parse_crop
from embed.config import EmbedConfig, check_config, with_device_defaults
from embed.executors import make_executor, pinned
from embed.extract import FeatureExtractor
from embed.reading import SlideInputs, read_slide_inputs
from embed.runners import RUNNERS
from embed.stain import stain_settings
from embed.tta import TTA_CHOICES
from embed.units import WorkUnit, slide_units
from embed.weights import WeightsInfo

log = logging.getLogger("hespot")


def slide_settings(cfg: EmbedConfig, backbone, weights_sha: str, crops: Sequence[Crop],
                   fingerprint: str, n_spots: int, dtype: str,
                   stage_indices: Sequence[int], runner: str,
                   stain: Sequence[str] = ()) -> dict:
    """What determines the stored values; compared on resume. ``crops_um`` ([µm, px] of
    each crop given in µm) and ``stain`` are there only where the job has them, so groups
    written before they existed resume as they are."""
    settings = {"backbone": backbone.name, "timm_id": backbone.timm_id,
                "weights_sha256": weights_sha, "tta_views": cfg.tta,
                "crops_px": [c for c, um in crops if um is None],
                "input_size": backbone.input_size, "stage_indices": list(stage_indices),
                "pad_mode": cfg.pad_mode, "dtype": dtype, "input_fingerprint": fingerprint,
                "n_spots": n_spots, "batch_spots": cfg.batch_spots,
                "chunk_spots": cfg.chunk_spots, "runner": runner}
    if any(um is not None for _, um in crops):
        settings["crops_um"] = [[um, c] for c, um in crops if um is not None]
    if stain:
        settings["stain"] = stain_settings(tuple(stain))
    return settings


def open_writer(inputs: SlideInputs, extractor: FeatureExtractor, cfg: EmbedConfig,
                weights_info: WeightsInfo, run_info: dict, crops: Sequence[Crop],
                job: BackboneItem) -> SlideWriter:
    """Open (resume) or create the store group of one backbone x slide (``job.key``), with
    one array per crop x layer (``features``, ``stages``, ``features_448px``,
    ``features_110um``...)."""
    backbone = extractor.backbone
    meta = job.arrays(crops, inputs.primary_px, bool(extractor.stage_indices))
    dims = {}
    for name, array in meta.items():
        if array["layer"] == "stages":
            array["stage_indices"] = list(extractor.stage_indices)
        dims[name] = backbone.num_features if array["layer"] == "pooled" \
            else extractor.stage_dims()
    settings = slide_settings(cfg, backbone, weights_info.sha256, crops, inputs.fingerprint,
                              inputs.n_spots, extractor.choice.dtype_name,
                              extractor.stage_indices, extractor.runner, job.stain)
    px = inputs.pixel_size_um
    info = {**run_info, "weights_source": weights_info.source,
            "weights_path": weights_info.path, "pixel_size_um": px,
            "patch_um": [c * px for c, _ in crops] if px else None}
    return open_slide(cfg.store, job.key, inputs.slide, inputs.n_spots, dims,
                      cfg.chunk_spots, settings, info, meta, cfg.overwrite)


@dataclass(eq=False)
class SlidePlan:
    """What a run does to one backbone x slide: its units, and how it left the slide."""

    job: BackboneItem
    slide: str
    status: str                      # "skipped", "resumed" or "written"
    units: list[WorkUnit]


def plan_slide(inputs: SlideInputs, job: BackboneItem, extractor: FeatureExtractor,
               cfg: EmbedConfig, winfo: WeightsInfo, run_info: dict,
               max_chunks: int | None) -> SlidePlan:
    """Create (or reopen) the slide's group, recheck its finished chunks' checksums
    (``cfg.verify``; damaged ones are computed again) and cut the chunks still to compute
    into units of at most ``max_chunks``."""
    crops = inputs.job_crops(job)
    writer = open_writer(inputs, extractor, cfg, winfo, run_info, crops, job)
    if cfg.verify and not cfg.overwrite:
        damaged = writer.damaged_chunks()
        if damaged:
            log.warning("%s: %s / %s: %d damaged chunk(s) (%s), computed again",
                        cfg.store, job.key, inputs.slide, len(damaged),
                        ", ".join(f"{c} in {a}" for c, a in list(damaged.items())[:4]))
            writer.reset(damaged)
    missing = writer.missing_chunks()
    if not len(missing):
        status = "skipped"
        log.info("%s / %s: complete, skipped", job.key, inputs.slide)
    elif len(missing) < writer.n_chunks:
        status = "resumed"
        log.info("%s / %s: resuming, %d of %d chunks to compute", job.key, inputs.slide,
                 len(missing), writer.n_chunks)
    else:
        status = "written"
    units = slide_units(job, inputs.slide, inputs.table.x, inputs.table.y, missing,
                        cfg.chunk_spots, tuple(c for c, _ in crops), inputs.primary_px,
                        max_chunks, tuple(um for _, um in crops))
    return SlidePlan(job, inputs.slide, status, units)


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(cfg: EmbedConfig, timing: dict | None = None) -> dict[str, dict[str, str]]:
    """Embed every requested backbone x slide. Returns {backbone: {slide: status}}.

    Settings, names and every slide's inputs (spot table, fingerprint, pixel size, crop
    size) are checked and read once, before any model is built; the store is locked
    against another run writing it (:func:`data.lock.output_lock`); a store this run
    created is removed again when the run is refused midway (a damaged image chunk or
    tile: the first run after fixing it starts over). Every slide's group
    is created (or reopened) before any unit runs; the units then go to the executor
    (:mod:`embed.executors`: in-process, or Dask workers). ``timing``, when given, is
    filled with ``spots`` and ``views`` computed and ``units_s``, the seconds from the
    first unit handed out to the last one finished (model loading on workers included,
    start-up and planning not)."""
    jobs = check_config(cfg)
    preflight(cfg.h5, list(cfg.slides) or None)
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
                return _run(cfg, jobs, executor, {} if timing is None else timing)
            finally:
                executor.close()
        except (DataError, ConfigError):  # refused midway (a damaged image chunk or tile)
            if created:  # nothing is left under the name of a store this run created
                shutil.rmtree(cfg.store, ignore_errors=True)
            raise


def _run(cfg: EmbedConfig, jobs: list[BackboneItem], executor, timing: dict
         ) -> dict[str, dict[str, str]]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    choice = executor.device_choice(cfg)
    cfg = pinned(with_device_defaults(cfg, choice, executor.default_prefetch(choice)),
                 choice, executor.task_threads(cfg))
    log.info("device: %s; executor: %s", choice.describe(), executor.describe())
    log.info("config: %s", json.dumps(config_dict(cfg)))
    run_info = {"hespot_version": version("hespot"), "torch_version": torch.__version__,
                "timm_version": version("timm"), "device": choice.describe(),
                "config": config_dict(cfg), "h5": str(cfg.h5)}
    with CanonicalH5(cfg.h5) as h5:
        names = list(cfg.slides) or h5.train_slides + h5.test_slides
        for slide in names:
            h5.split_of(slide)  # unknown slide names fail before any slide is hashed
        slides = [read_slide_inputs(h5, s, cfg) for s in names]
    for job in jobs:  # crops in µm on a slide without a pixel size: refused before any model
        for inputs in slides:
            inputs.job_crops(job)
    max_chunks = cfg.chunks_per_task if executor.name != "inprocess" else None
    plans: list[tuple[EmbedConfig, SlidePlan]] = []
    for job in jobs:
        extractor, winfo = executor.planning_model(cfg, job)
        log.info("%s: weights %s %s (sha256 %s); runner %s", job.name, winfo.source,
                 winfo.path, winfo.sha256[:16], extractor.runner)
        job_cfg = replace(cfg, runner=extractor.runner)
        plans += [(job_cfg, plan_slide(inputs, job, extractor, job_cfg, winfo, run_info,
                                       max_chunks)) for inputs in slides]
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

    executor.run(tasks, finished, bar.update)
    bar.close()
    spots = sum(u.n_spots for _, u in tasks)
    timing.update(spots=spots, views=spots * cfg.tta, units_s=time.perf_counter() - t0)
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
                   help="batches read ahead in a background thread; 0 reads in the model's "
                   "thread (default: 3 on a GPU or with spare CPU cores, else 0)")
    p.add_argument("--readers", type=int,
                   help="threads reading chunks at once (default: 1 on a CPU, 4 on CUDA)")
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


def _main(argv: Sequence[str] | None = None) -> int:
    cfg = resolve_config(EmbedConfig, build_parser().parse_args(argv))
    setup_logging(cfg.quiet)
    if not is_url(cfg.store):
        Path(cfg.store).parent.mkdir(parents=True, exist_ok=True)
    run(cfg)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
