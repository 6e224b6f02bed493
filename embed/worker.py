"""The task of stage 1: compute one :class:`~embed.units.WorkUnit` and write its chunks.

The same function runs in the coordinator's process (the in-process executor) and on Dask
workers. Models and open slide files are kept per process (:class:`ProcessCache`), so a
worker loads each backbone once, not once per task.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import numpy as np
import torch

from data.h5 import CanonicalH5
from data.patches import PatchCropper
from data.store import BackboneItem, slide_writer
from embed.backbones import Backbone, get_backbone
from embed.config import EmbedConfig
from embed.device import select_device
from embed.extract import FeatureExtractor, Pending
from embed.feed import UnitChunks, can_start_readers, reader_failures, unit_groups
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


def group_chunks(cfg: EmbedConfig) -> int:
    """Chunks read at once: 1 while a model batch fits in a chunk (batches never span two
    chunks, as ever); else as many whole chunks as a batch holds (a GPU's bigger batches)."""
    return max(1, cfg.batch_spots // cfg.chunk_spots)


def unit_batches(h5: CanonicalH5, unit: WorkUnit, cfg: EmbedConfig, backbone: Backbone,
                 readers: int = 0, stain: MacenkoFit | None = None, pin: bool = False
                 ) -> Iterator[tuple[int, int, bool, list[torch.Tensor]]]:
    """(first chunk of the group, chunks in the group, last batch of the group?, [uint8
    (b, s, s, 3) per crop side]), in order; ``stain``: the slide's Macenko fit
    (``+macenko``), applied to every patch where it is read.

    Each group of :func:`group_chunks` chunks is cropped with one window read per band
    (from the coarsest pyramid level that keeps the model's input resolution) by
    ``readers`` reader processes (0: in this process, through ``h5``;
    :func:`embed.feed.unit_groups`), and handed out in model batches of
    ``cfg.batch_spots``; ``pin``: in pinned memory (a GPU copies from it without waiting)."""
    data = UnitChunks(str(h5.path), unit, cfg.chunk_spots, group_chunks(cfg), cfg.pad_mode,
                      backbone.input_size, stain)
    for group in unit_groups(data, h5, readers, pin):
        n = len(group.patches[0])
        for s in range(0, n, cfg.batch_spots):
            yield (group.first_chunk, group.n_chunks, s + cfg.batch_spots >= n,
                   [p[s:s + cfg.batch_spots] for p in group.patches])


class ChunkSink:
    """The features of a group's batches, kept until the group's last batch, then written
    chunk by chunk (each marked done after its rows: :meth:`SlideWriter.write_chunk`)."""

    def __init__(self, writer, unit: WorkUnit, chunk_spots: int,
                 progress: Callable[[int], None] | None = None) -> None:
        self.writer, self.unit, self.chunk_spots, self.progress = (
            writer, unit, chunk_spots, progress)
        self.pending: list[dict[str, np.ndarray]] = []

    def add(self, where: tuple[int, int, bool], launched: list[Pending]) -> None:
        """Collect one batch's features (one launched forward per crop side) and write
        its group once ``where`` = (first chunk, chunks, last batch?) says it is whole."""
        first, count, last = where
        feats = [FeatureExtractor.collect(p) for p in launched]
        arrays = {name: feats[i][layer] for layer in feats[0]
                  for name, i in self.unit.array_names(layer)}
        self.pending.append(arrays)
        if self.progress:
            self.progress(len(next(iter(feats[0].values()))))
        if not last:
            return
        rows = {k: np.concatenate([a[k] for a in self.pending]) for k in self.pending[0]}
        self.pending = []
        for c in range(count):
            part = slice(c * self.chunk_spots, (c + 1) * self.chunk_spots)
            self.writer.write_chunk(first + c, {k: v[part] for k, v in rows.items()})


def run_unit(unit: WorkUnit, cfg: EmbedConfig, cache: ProcessCache | None = None,
             progress: Callable[[int], None] | None = None) -> int:
    """Compute ``unit`` and write its chunks (each marked done after its rows); returns
    the spots written. ``cfg`` is the coordinator's, with device, precision, runner and
    batch size already resolved; ``progress(n)`` is called after every model batch.

    Each batch is launched before the previous one is collected: on a GPU its patches are
    copied and preprocessed and its forward queued while the previous one runs, so the
    device does not wait for the host (on a CPU the two steps are one)."""
    cache = WORKER_CACHE if cache is None else cache
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    extractor, _ = cache.extractor(cfg, unit.job)
    sink = ChunkSink(slide_writer(cfg.store, unit.job.key, unit.slide), unit,
                     cfg.chunk_spots, progress)
    in_process = cfg.readers <= 0 or not can_start_readers()
    batches = unit_batches(cache.h5(cfg.h5), unit, cfg, extractor.backbone, cfg.readers,
                           cache.stain(cfg, unit), extractor.choice.device.type == "cuda")
    pending = None  # launched, not yet collected
    with reader_failures(cfg.h5, unit), closing(batches):  # closing: readers stop at once
        try:
            for first, count, last, patches in prefetch(batches, cfg.prefetch if in_process
                                                        else 0):
                launched = ((first, count, last),
                            [extractor.launch(extractor.prepare(p)) for p in patches])
                done, pending = pending, None
                if done is not None:
                    sink.add(*done)
                pending = launched
        except BaseException:
            if pending is not None:  # launched before the failure, and whole: kept
                sink.add(*pending)
            raise
        if pending is not None:
            sink.add(*pending)
    return unit.n_spots
