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
import resource
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.check import preflight
from data.cli import config_dict, config_parser, parse_list, resolve_config, run_cli, setup_logging
from data.h5 import CanonicalH5
from data.lock import output_lock
from data.store import SlideWriter, array_name, open_slide
from embed.backbones import get_backbone
from embed.config import EmbedConfig, check_config, with_device_defaults
from embed.device import select_device
from embed.extract import FeatureExtractor
from embed.reading import SlideInputs, patch_batches, prefetch, read_slide_inputs
from embed.runners import RUNNERS
from embed.tta import TTA_CHOICES
from embed.weights import WeightsInfo, build_model

log = logging.getLogger("hespot")


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


def open_writer(inputs: SlideInputs, extractor: FeatureExtractor, cfg: EmbedConfig,
                 weights_info: WeightsInfo, run_info: dict, crops: Sequence[int]
                 ) -> SlideWriter:
    """Open (resume) or create the store group of one backbone x slide, with one array per
    crop x layer (``features``, ``stages``, ``features_448px``...)."""
    backbone, primary = extractor.backbone, inputs.primary_px
    dims, meta = {}, {}
    for c in crops:
        dims[array_name("pooled", c, primary)] = backbone.num_features
        meta[array_name("pooled", c, primary)] = {"layer": "pooled", "crop_px": c}
        if extractor.stage_indices:
            dims[array_name("stages", c, primary)] = extractor.stage_dims()
            meta[array_name("stages", c, primary)] = {
                "layer": "stages", "crop_px": c, "stage_indices": list(extractor.stage_indices)}
    settings = slide_settings(cfg, backbone, weights_info.sha256, crops, inputs.fingerprint,
                              inputs.n_spots, extractor.choice.dtype_name,
                              extractor.stage_indices, extractor.runner)
    px = inputs.pixel_size_um
    info = {**run_info, "weights_source": weights_info.source,
            "weights_path": weights_info.path, "pixel_size_um": px,
            "patch_um": [c * px for c in crops] if px else None}
    return open_slide(cfg.store, backbone.name, inputs.slide, inputs.n_spots, dims,
                      cfg.chunk_spots, settings, info, meta, cfg.overwrite)


def embed_slide(h5: CanonicalH5, inputs: SlideInputs, extractor: FeatureExtractor,
                cfg: EmbedConfig, weights_info: WeightsInfo, run_info: dict,
                contexts: Sequence[int] = ()) -> str:
    """Embed one slide; returns "skipped", "resumed" or "written"."""
    backbone, slide, n = extractor.backbone, inputs.slide, inputs.n_spots
    crops = inputs.crops(contexts)
    writer = open_writer(inputs, extractor, cfg, weights_info, run_info, crops)
    start = writer.first_incomplete()
    if start == writer.n_chunks:
        log.info("%s / %s: complete, skipped", backbone.name, slide)
        return "skipped"
    if start:
        log.info("%s / %s: resuming at chunk %d of %d", backbone.name, slide, start,
                 writer.n_chunks)
    bar = tqdm(total=n, initial=min(n, start * cfg.chunk_spots), unit="spot",
               desc=f"{backbone.name} {slide}", disable=cfg.quiet, leave=False)
    pending: list[dict[str, np.ndarray]] = []
    batches = patch_batches(h5, inputs, crops, start, cfg, backbone)
    for chunk, last, batch in prefetch(batches, cfg.prefetch):
        arrays = {}
        for c, x in zip(crops, batch, strict=True):
            feats = extractor(x)
            arrays[array_name("pooled", c, inputs.primary_px)] = feats["pooled"]
            if "stages" in feats:
                arrays[array_name("stages", c, inputs.primary_px)] = feats["stages"]
        pending.append(arrays)
        bar.update(len(batch[0]))
        if last:
            writer.write_chunk(chunk, {k: np.concatenate([a[k] for a in pending])
                                       for k in pending[0]})
            pending = []
    bar.close()
    return "resumed" if start else "written"


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(cfg: EmbedConfig) -> dict[str, dict[str, str]]:
    """Embed every requested backbone x slide. Returns {backbone: {slide: status}}.

    Settings, names and every slide's inputs (spot table, fingerprint, pixel size, crop
    size) are checked and read once, before any model is built; the store is locked
    against another run writing it (:func:`data.lock.output_lock`)."""
    jobs = check_config(cfg)
    preflight(cfg.h5, list(cfg.slides) or None)
    with output_lock(cfg.store, "embeddings store"):
        return _run(cfg, jobs)


def _run(cfg: EmbedConfig, jobs: list) -> dict[str, dict[str, str]]:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    choice = select_device(cfg.device, cfg.precision)
    cfg = with_device_defaults(cfg, choice)
    log.info("device: %s", choice.describe())
    log.info("config: %s", json.dumps(config_dict(cfg)))
    run_info = {"hespot_version": version("hespot"), "torch_version": torch.__version__,
                "timm_version": version("timm"), "device": choice.describe(),
                "config": config_dict(cfg), "h5": str(cfg.h5)}
    results: dict[str, dict[str, str]] = {}
    with CanonicalH5(cfg.h5) as h5:
        names = list(cfg.slides) or h5.train_slides + h5.test_slides
        for slide in names:
            h5.split_of(slide)  # unknown slide names fail before any slide is hashed
        slides = [read_slide_inputs(h5, s, cfg) for s in names]
        for job in jobs:
            backbone = get_backbone(job.name)
            model, winfo = build_model(backbone, cfg.weights)
            log.info("%s: weights %s %s (sha256 %s)", job.name, winfo.source, winfo.path,
                     winfo.sha256[:16])
            stage_idx = backbone.stage_indices if job.stages else ()
            extractor = FeatureExtractor(model, backbone, choice, cfg.tta, stage_idx,
                                         cfg.runner, cfg.batch_spots)
            log.info("%s: runner %s", job.name, extractor.runner)
            results[job.name] = {}
            for inputs in tqdm(slides, desc=job.name, unit="slide", disable=cfg.quiet):
                t0 = time.perf_counter()
                status = embed_slide(h5, inputs, extractor, cfg, winfo, run_info, job.contexts)
                results[job.name][inputs.slide] = status
                log.info("%s / %s: %s in %.1f s (peak RSS %.0f MB)", job.name, inputs.slide,
                         status, time.perf_counter() - t0, peak_rss_mb())
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
