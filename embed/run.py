"""Stage 1: embeddings of every spot, with TTA, into a resumable Zarr store.

``python -m embed.run --h5 out/her2st.h5 --store out/embeddings.zarr --backbones
efficientnet_lite0 --tta 8`` (``make embeddings``). For each backbone x slide: crop
patches (``data.patches``, in a background thread), preprocess, run the model over the
dihedral views and write ``<store>/<backbone>/<slide>/features`` chunk by chunk. A
finished slide is skipped, an interrupted one resumes, a changed input or setting is
refused (``--overwrite`` recomputes).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import resource
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.cli import (
    DEFAULT_H5,
    DEFAULT_STORE,
    config_dict,
    config_parser,
    parse_list,
    resolve_config,
    run_cli,
    setup_logging,
)
from data.errors import ConfigError
from data.h5 import CanonicalH5
from data.patches import PatchCropper, resolve_patch_px
from data.store import array_name, open_slide
from embed.backbones import DEFAULT_BACKBONE, get_backbone
from embed.device import select_device
from embed.extract import FeatureExtractor, preprocess
from embed.runners import RUNNERS
from embed.tta import TTA_CHOICES
from embed.weights import build_model

log = logging.getLogger("hespot")


@dataclass(frozen=True)
class BackboneJob:
    """One backbone and its options, from a ``--backbones`` item
    ``name[+stages][+<crop px>...]``, e.g. ``efficientnet_lite0+stages+448``."""

    name: str
    stages: bool = False
    contexts: tuple[int, ...] = ()

    @classmethod
    def parse(cls, text: str, stages: bool = False, contexts: tuple[int, ...] = ()
              ) -> BackboneJob:
        name, *opts = text.strip().split("+")
        get_backbone(name)  # unknown names fail before any work
        extra = []
        for o in opts:
            if o == "stages":
                stages = True
            elif o.isdigit():
                extra.append(int(o))
            else:
                raise ConfigError(f"backbone option {o!r} in {text!r}: expected 'stages' or a "
                                 "crop size in px, e.g. efficientnet_lite0+stages+448")
        return cls(name, stages, tuple(dict.fromkeys((*contexts, *extra))))


@dataclass(frozen=True)
class EmbedConfig:
    """Settings of a stage-1 run (defaults < --config JSON < flags)."""

    h5: str = DEFAULT_H5
    store: str = DEFAULT_STORE
    backbones: tuple[str, ...] = (DEFAULT_BACKBONE,)
    slides: tuple[str, ...] = ()          # empty: every train and test slide
    tta: int = 8
    patch_px: int = 224                   # primary crop side (pixels)
    patch_um: float | None = None         # or in µm where the pixel size is known
    contexts: tuple[int, ...] = ()        # extra crop sides (px) for every backbone
    stages: bool = False                  # intermediate stages for every backbone
    batch_spots: int | None = None        # spots per forward pass (x tta views); None:
                                          # 4 on a CPU (fastest, least memory), 64 on CUDA
    chunk_spots: int = 64                 # spots per stored chunk and per window read
    runner: str = "auto"                  # forward runner (embed.runners): jit on a CPU
    weights: str | None = None            # local weights file (one backbone)
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    pad_mode: str = "reflect"
    prefetch: int | None = None           # batches read ahead in a background thread;
                                          # 0: read in the model's thread; None: auto
    overwrite: bool = False
    quiet: bool = False


def _batches(h5: CanonicalH5, slide: str, crops: Sequence[int], start_chunk: int,
             cfg: EmbedConfig, backbone) -> Iterator:
    """(chunk index, last batch of the chunk?, [preprocessed (b, 3, in, in) per crop]).

    From ``start_chunk`` on, the patches of each stored chunk (``cfg.chunk_spots`` spots)
    are cropped with one window read and handed out in model batches of
    ``cfg.batch_spots``."""
    table = h5.spots(slide)
    croppers = [PatchCropper(h5, slide, c, cfg.pad_mode) for c in crops]
    for chunk, g in enumerate(range(start_chunk * cfg.chunk_spots, len(table),
                                    cfg.chunk_spots), start=start_chunk):
        gidx = np.arange(g, min(g + cfg.chunk_spots, len(table)))
        patches = [cr.crop(table.x[gidx], table.y[gidx]) for cr in croppers]
        for s in range(0, len(gidx), cfg.batch_spots):
            inputs = [preprocess(p[s:s + cfg.batch_spots], backbone) for p in patches]
            yield chunk, s + cfg.batch_spots >= len(gidx), inputs


def prefetch(iterator: Iterator, depth: int) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead; re-raise its errors.
    ``depth`` 0: run it in the caller's thread."""
    if depth <= 0:
        yield from iterator
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in iterator:
                if stop.is_set():
                    return
                q.put(item)
        except BaseException as exc:  # handed to the consumer, re-raised there
            q.put(exc)
        q.put(done)

    thread = threading.Thread(target=work, daemon=True, name="patch-reader")
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass


def slide_settings(cfg: EmbedConfig, backbone, weights_sha: str, crops: Sequence[int],
                   fingerprint: str, n_spots: int, dtype: str,
                   stage_indices: Sequence[int], runner: str) -> dict:
    """What determines the stored values; compared on resume."""
    return {"backbone": backbone.name, "timm_id": backbone.timm_id,
            "weights_sha256": weights_sha, "tta_views": cfg.tta, "crops_px": list(crops),
            "input_size": backbone.input_size, "stage_indices": list(stage_indices),
            "pad_mode": cfg.pad_mode, "dtype": dtype, "input_fingerprint": fingerprint,
            "n_spots": n_spots, "batch_spots": cfg.batch_spots,
            "chunk_spots": cfg.chunk_spots, "runner": runner}


def embed_slide(h5: CanonicalH5, slide: str, extractor: FeatureExtractor, cfg: EmbedConfig,
                weights_info, run_info: dict, contexts: Sequence[int] = ()) -> str:
    """Embed one slide; returns "skipped", "resumed" or "written"."""
    backbone = extractor.backbone
    primary = resolve_patch_px(cfg.patch_px, cfg.patch_um, h5.pixel_size_um(slide),
                               f"{h5.path}, slide {slide}")
    crops = [primary] + [c for c in contexts if c != primary]
    n = len(h5.spots(slide))
    dims, meta = {}, {}
    for c in crops:
        dims[array_name("pooled", c, primary)] = backbone.num_features
        meta[array_name("pooled", c, primary)] = {"layer": "pooled", "crop_px": c}
        if extractor.stage_indices:
            dims[array_name("stages", c, primary)] = extractor.stage_dims()
            meta[array_name("stages", c, primary)] = {
                "layer": "stages", "crop_px": c, "stage_indices": list(extractor.stage_indices)}
    settings = slide_settings(cfg, backbone, weights_info.sha256, crops,
                              h5.fingerprint(slide), n, extractor.choice.dtype_name,
                              extractor.stage_indices, extractor.runner)
    info = {**run_info, "weights_source": weights_info.source,
            "weights_path": weights_info.path, "h5": str(h5.path),
            "pixel_size_um": h5.pixel_size_um(slide),
            "patch_um": [c * h5.pixel_size_um(slide) for c in crops]
            if h5.pixel_size_um(slide) else None}
    writer = open_slide(cfg.store, backbone.name, slide, n, dims, cfg.chunk_spots,
                        settings, info, meta, cfg.overwrite)
    start = writer.first_incomplete()
    if start == writer.n_chunks:
        log.info("%s / %s: complete, skipped", backbone.name, slide)
        return "skipped"
    status = "resumed" if start else "written"
    if start:
        log.info("%s / %s: resuming at chunk %d of %d", backbone.name, slide, start,
                 writer.n_chunks)
    bar = tqdm(total=n, initial=min(n, start * cfg.chunk_spots), unit="spot",
               desc=f"{backbone.name} {slide}", disable=cfg.quiet, leave=False)
    pending: list[dict[str, np.ndarray]] = []
    for chunk, last, inputs in prefetch(_batches(h5, slide, crops, start, cfg, backbone),
                                        cfg.prefetch):
        arrays = {}
        for c, x in zip(crops, inputs, strict=True):
            feats = extractor(x)
            arrays[array_name("pooled", c, primary)] = feats["pooled"]
            if "stages" in feats:
                arrays[array_name("stages", c, primary)] = feats["stages"]
        pending.append(arrays)
        bar.update(len(inputs[0]))
        if last:
            writer.write_chunk(chunk, {k: np.concatenate([a[k] for a in pending])
                                       for k in pending[0]})
            pending = []
    bar.close()
    return status


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def default_prefetch(choice) -> int:
    """Batches read ahead in a background thread: 3 while a GPU computes; 0 (read between
    forward passes) on a CPU whose every core runs the model, where a reader thread can
    only take time from the model's threads: on the 2-core machine, 6 alternating runs of
    each, 219 views/s reading in the model's thread vs 210 with a reader thread (issue 4's
    note)."""
    if choice.device.type != "cpu":
        return 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 3 if torch.get_num_threads() < (cores or 1) else 0


def default_batch_spots(choice) -> int:
    """Spots per forward pass. On the 2-core CPU, 4 spots (32 views with 8-view TTA) ran
    as fast as bigger batches and kept peak RSS flat at ~1.3 GB over the sample (8: ~2 GB,
    growing; 32: 5 GB; make bench-embed); a GPU wants bigger batches."""
    return 64 if choice.device.type == "cuda" else 4


def run(cfg: EmbedConfig) -> dict[str, dict[str, str]]:
    """Embed every requested backbone x slide. Returns {backbone: {slide: status}}."""
    if cfg.tta not in TTA_CHOICES:
        raise ConfigError(f"--tta must be one of {TTA_CHOICES}")
    for field in ("batch_spots", "chunk_spots"):
        if getattr(cfg, field) is not None and getattr(cfg, field) < 1:
            raise ConfigError(f"--{field.replace('_', '-')} must be at least 1")
    if cfg.weights and len(cfg.backbones) != 1:
        raise ConfigError("--weights applies to exactly one backbone")
    jobs = [BackboneJob.parse(b, cfg.stages, cfg.contexts) for b in cfg.backbones]
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    choice = select_device(cfg.device, cfg.precision)
    if cfg.batch_spots is None:
        cfg = replace(cfg, batch_spots=default_batch_spots(choice))
    if cfg.prefetch is None:
        cfg = replace(cfg, prefetch=default_prefetch(choice))
    log.info("device: %s", choice.describe())
    log.info("config: %s", json.dumps(config_dict(cfg)))
    run_info = {"hespot_version": version("hespot"), "torch_version": torch.__version__,
                "timm_version": version("timm"), "device": choice.describe(),
                "config": config_dict(cfg)}
    results: dict[str, dict[str, str]] = {}
    with CanonicalH5(cfg.h5) as h5:
        slides = list(cfg.slides) or h5.train_slides + h5.test_slides
        for slide in slides:
            h5.split_of(slide)  # unknown slide names fail before any model is built
        for job in jobs:
            name = job.name
            backbone = get_backbone(name)
            model, winfo = build_model(backbone, cfg.weights)
            log.info("%s: weights %s %s (sha256 %s)", name, winfo.source, winfo.path,
                     winfo.sha256[:16])
            stage_idx = backbone.stage_indices if job.stages else ()
            extractor = FeatureExtractor(model, backbone, choice, cfg.tta, stage_idx,
                                         cfg.runner, cfg.batch_spots)
            log.info("%s: runner %s", name, extractor.runner)
            results[name] = {}
            for slide in tqdm(slides, desc=name, unit="slide", disable=cfg.quiet):
                t0 = time.perf_counter()
                results[name][slide] = embed_slide(h5, slide, extractor, cfg, winfo, run_info,
                                                   job.contexts)
                log.info("%s / %s: %s in %.1f s (peak RSS %.0f MB)", name, slide,
                         results[name][slide], time.perf_counter() - t0, peak_rss_mb())
    return results


def build_parser() -> argparse.ArgumentParser:
    p = config_parser("python -m embed.run", __doc__, EmbedConfig,
                      common=("h5", "store", "device", "precision", "threads", "quiet"))
    p.add_argument("--backbones", type=parse_list,
                   help="comma-separated registry names, each optionally with +stages and "
                   "+<crop px>, e.g. mobilenet_v2,efficientnet_lite0+stages+448")
    p.add_argument("--slides", type=parse_list, help="comma-separated slides (default all)")
    p.add_argument("--tta", type=int, choices=TTA_CHOICES, help="dihedral views (default 8)")
    p.add_argument("--patch-px", dest="patch_px", type=int, help="crop side in px (224)")
    p.add_argument("--patch-um", dest="patch_um", type=float, help="crop side in µm")
    p.add_argument("--context", dest="contexts", type=lambda s: parse_list(s, int),
                   help="extra crop sides in px for every backbone, e.g. 448 (resized to "
                   "the model input)")
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
    p.add_argument("--weights", help="local weights file (safetensors or state dict)")
    p.add_argument("--pad-mode", dest="pad_mode", choices=["reflect", "constant", "edge"])
    p.add_argument("--overwrite", action=argparse.BooleanOptionalAction,
                   help="recompute every requested slide, finished or not, whatever its "
                   "stored settings")
    return p


def _main(argv: Sequence[str] | None = None) -> int:
    cfg = resolve_config(EmbedConfig, build_parser().parse_args(argv))
    setup_logging(cfg.quiet)
    Path(cfg.store).parent.mkdir(parents=True, exist_ok=True)
    run(cfg)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
