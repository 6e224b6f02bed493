"""The task of stage 1: compute one :class:`~embed.units.WorkUnit` and write its chunks.

The same function runs in the coordinator's process (the in-process executor) and on Dask
workers. Models and open slide files are kept per process (:class:`ProcessCache`), so a
worker loads each backbone once, not once per task.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from data.h5 import CanonicalH5
from data.patches import PatchCropper
from data.store import BackboneItem, slide_writer
from embed.backbones import Backbone, get_backbone
from embed.config import EmbedConfig
from embed.device import select_device
from embed.extract import FeatureExtractor, preprocess
from embed.reading import prefetch
from embed.stain import MacenkoFit, fit_macenko
from embed.units import WorkUnit
from embed.weights import WeightsInfo, build_model

log = logging.getLogger("hespot")

#: spots whose primary patches a slide's Macenko fit looks at, evenly spaced in slide order
STAIN_SAMPLE_SPOTS = 64


def fit_slide_stain(h5: CanonicalH5, slide: str, primary_px: int, pad_mode: str
                    ) -> MacenkoFit:
    """The slide's Macenko stains from the primary patches (level 0) of up to
    :data:`STAIN_SAMPLE_SPOTS` spots evenly spaced in slide order: the same sample, so the
    same fit, in every process."""
    pos = h5.positions(slide)
    n = len(pos)
    idx = np.unique(np.linspace(0, n - 1, min(n, STAIN_SAMPLE_SPOTS)).round().astype(int))
    patches = PatchCropper(h5, slide, primary_px, pad_mode).crop(pos.x[idx], pos.y[idx])
    fit = fit_macenko(patches, f"{h5.path}, slide {slide}")
    if not fit.identity:
        log.debug("%s: Macenko stains (H, E) %s, 99th-percentile concentrations %s", slide,
                  fit.he.T.round(3).tolist(), fit.max_c.round(3).tolist())
    return fit


class ProcessCache:
    """Models (feature extractors), open HDF5 files and slides' Macenko fits of one process.

    Args:
        max_models: extractors kept; the least recently used is dropped beyond it (a
            worker given units of several backbones keeps the last ones).
    """

    def __init__(self, max_models: int = 1) -> None:
        self.max_models = max_models
        self._models: OrderedDict[tuple, tuple[FeatureExtractor, WeightsInfo]] = OrderedDict()
        self._files: dict[tuple, CanonicalH5] = {}
        self._stains: dict[tuple, MacenkoFit] = {}

    def extractor(self, cfg: EmbedConfig, job: BackboneItem) -> tuple[FeatureExtractor,
                                                                     WeightsInfo]:
        """The extractor of ``job`` under ``cfg`` (device, precision, runner, TTA, batch),
        built at the first call. ``cfg.runner`` may be the one asked for ("auto") or the
        one it resolved to: both find the same extractor."""
        hed = "hed" in job.stain
        base = (job.name, job.stages, hed, cfg.weights, cfg.device, cfg.precision, cfg.tta,
                cfg.batch_spots)
        for key, value in self._models.items():
            if key[0] == base and cfg.runner in key[1:]:
                self._models.move_to_end(key)
                return value
        while len(self._models) >= self.max_models:
            self._models.popitem(last=False)
        backbone = get_backbone(job.name)
        model, winfo = build_model(backbone, cfg.weights)
        stage_idx = backbone.stage_indices if job.stages else ()
        extractor = FeatureExtractor(model, backbone, select_device(cfg.device, cfg.precision),
                                     cfg.tta, stage_idx, cfg.runner, cfg.batch_spots, hed)
        self._models[(base, cfg.runner, extractor.runner)] = extractor, winfo
        return extractor, winfo

    def h5(self, path: str) -> CanonicalH5:
        """The canonical file at ``path``, opened once (again if it changed on disk)."""
        st = os.stat(path)
        key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
        if key not in self._files:
            for old in self._files.values():
                old.close()
            self._files = {key: CanonicalH5(path)}
        return self._files[key]

    def stain(self, cfg: EmbedConfig, unit: WorkUnit) -> MacenkoFit | None:
        """The Macenko fit of ``unit``'s slide (:func:`fit_slide_stain`, once per process
        and slide), or None where its job has no ``+macenko``."""
        if "macenko" not in unit.job.stain:
            return None
        h5 = self.h5(cfg.h5)
        key = (str(h5.path), unit.slide, unit.primary_px, cfg.pad_mode)
        if key not in self._stains:
            self._stains[key] = fit_slide_stain(h5, unit.slide, unit.primary_px, cfg.pad_mode)
        return self._stains[key]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        self._models.clear()
        self._stains.clear()


#: the cache of a worker process (Dask pickles run_unit by reference: one per process)
WORKER_CACHE = ProcessCache(max_models=2)


def _chunk_reader(h5_path: str, h5: CanonicalH5 | None, unit: WorkUnit, cfg: EmbedConfig,
                  backbone: Backbone, stain: MacenkoFit | None = None
                  ) -> Callable[[int], list]:
    """``read(i)``: the model batches of the unit's ``i``-th chunk, as
    (chunk, last batch of the chunk?, [preprocessed float32 (b, 3, in, in) per crop side
    (:attr:`WorkUnit.sides`)]), the patches stain-normalised by ``stain`` when given.

    With ``h5`` the reads go through it (one reader thread); without, each calling thread
    opens the file once for itself (several reader threads: slide images keep caches that
    are not shared between threads)."""
    local = threading.local()
    files: list[CanonicalH5] = []

    def croppers() -> list[PatchCropper]:
        if not hasattr(local, "croppers"):
            f = h5
            if f is None:
                f = CanonicalH5(h5_path)
                files.append(f)
            local.croppers = [PatchCropper(f, unit.slide, c, cfg.pad_mode,
                                           out_px=backbone.input_size) for c in unit.sides]
        return local.croppers

    def read(i: int) -> list:
        rows = slice(i * cfg.chunk_spots, min((i + 1) * cfg.chunk_spots, unit.n_spots))
        patches = [cr.crop(unit.x[rows], unit.y[rows]) for cr in croppers()]
        if stain is not None:
            patches = [stain.apply(p) for p in patches]
        n = len(patches[0])
        return [(unit.first_chunk + i, s + cfg.batch_spots >= n,
                 [preprocess(p[s:s + cfg.batch_spots], backbone) for p in patches])
                for s in range(0, n, cfg.batch_spots)]

    read.files = files  # type: ignore[attr-defined]  # closed by unit_batches
    return read


def unit_batches(h5: CanonicalH5, unit: WorkUnit, cfg: EmbedConfig, backbone: Backbone,
                 readers: int = 1, stain: MacenkoFit | None = None
                 ) -> Iterator[tuple[int, bool, list[torch.Tensor]]]:
    """(chunk, last batch of the chunk?, [preprocessed float32 (b, 3, in, in) per crop
    side]), chunk after chunk in order; ``stain``: the slide's Macenko fit (``+macenko``),
    applied to every uint8 patch before preprocessing.

    The patches of each chunk (``cfg.chunk_spots`` spots) are cropped with one window
    read (from the coarsest pyramid level that keeps the model's input resolution) and
    handed out in model batches of ``cfg.batch_spots``. ``readers`` > 1: that many threads
    read chunks ahead at once (a GPU outruns one reader), still handed out in order."""
    read = _chunk_reader(str(h5.path), h5 if readers <= 1 else None, unit, cfg, backbone,
                         stain)
    try:
        if readers <= 1:
            for i in range(unit.n_chunks):
                yield from read(i)
            return
        with ThreadPoolExecutor(readers, thread_name_prefix="chunk-reader") as pool:
            ahead: deque = deque()
            for i in range(unit.n_chunks):
                ahead.append(pool.submit(read, i))
                if len(ahead) > 2 * readers:
                    yield from ahead.popleft().result()
            while ahead:
                yield from ahead.popleft().result()
    finally:
        for f in read.files:
            f.close()


def run_unit(unit: WorkUnit, cfg: EmbedConfig, cache: ProcessCache | None = None,
             progress: Callable[[int], None] | None = None) -> int:
    """Compute ``unit`` and write its chunks (each marked done after its rows); returns
    the spots written. ``cfg`` is the coordinator's, with device, precision, runner and
    batch size already resolved; ``progress(n)`` is called after every model batch."""
    cache = WORKER_CACHE if cache is None else cache
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    extractor, _ = cache.extractor(cfg, unit.job)
    backbone = extractor.backbone
    writer = slide_writer(cfg.store, unit.job.key, unit.slide)
    pending: list[dict[str, np.ndarray]] = []
    batches = unit_batches(cache.h5(cfg.h5), unit, cfg, backbone, cfg.readers,
                           cache.stain(cfg, unit))
    for chunk, last, batch in prefetch(batches, cfg.prefetch):
        feats = [extractor(x) for x in batch]  # one forward per crop side
        arrays = {name: feats[i][layer] for layer in feats[0]
                  for name, i in unit.array_names(layer)}
        pending.append(arrays)
        if progress:
            progress(len(batch[0]))
        if last:
            writer.write_chunk(chunk, {k: np.concatenate([a[k] for a in pending])
                                       for k in pending[0]})
            pending = []
    return unit.n_spots
