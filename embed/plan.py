"""The coordinator's plan of a stage-1 run: each slide's inputs read once, each backbone's
model built once, each backbone x slide's store group created (or reopened, its finished
chunks rechecked) and the chunks still to compute cut into work units."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace

from data.h5 import CanonicalH5
from data.store import BackboneItem, Crop, SlideWriter, open_slide
from embed.config import EmbedConfig
from embed.extract import FeatureExtractor
from embed.reading import SlideInputs, read_slide_inputs
from embed.stain import stain_settings
from embed.startup import RunClock
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


def plan_run(cfg: EmbedConfig, jobs: list[BackboneItem], executor, run_info: dict,
             clock: RunClock) -> list[tuple[EmbedConfig, SlidePlan]]:
    """Every slide's inputs read once, then per backbone its model (once per process) and
    every slide's group created or reopened: the plans, in (backbone, slide) order."""
    with CanonicalH5(cfg.h5) as h5:
        names = list(cfg.slides) or h5.train_slides + h5.test_slides
        for slide in names:
            h5.split_of(slide)  # unknown slide names fail before any slide is hashed
        slides = [read_slide_inputs(h5, s, cfg) for s in names]
    for job in jobs:  # crops in µm on a slide without a pixel size: refused before any model
        for inputs in slides:
            inputs.job_crops(job)
    clock.mark("slide inputs")
    max_chunks = cfg.chunks_per_task if executor.name != "inprocess" else None
    plans: list[tuple[EmbedConfig, SlidePlan]] = []
    for job in jobs:
        extractor, winfo = executor.planning_model(cfg, job)
        log.info("%s: weights %s %s (sha256 %s); runner %s", job.name, winfo.source,
                 winfo.path, winfo.sha256[:16], extractor.runner)
        clock.mark("models")
        job_cfg = replace(cfg, runner=extractor.runner)
        plans += [(job_cfg, plan_slide(inputs, job, extractor, job_cfg, winfo, run_info,
                                       max_chunks)) for inputs in slides]
        clock.mark("planning")
    return plans
