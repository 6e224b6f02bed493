"""Where stage-1 work units run: a registry of executors.

- ``inprocess`` (the default): the units one after the other in this process, the
  patch reader in a background thread; today's path, speed and memory.
- ``dask``: on a ``dask.distributed`` cluster, either a ``LocalCluster`` of ``--workers N``
  processes started and stopped by the run (``LocalCUDACluster``, one worker per GPU,
  where ``dask-cuda`` is installed and GPUs are seen), or an existing cluster at
  ``--scheduler ADDRESS`` (``dask scheduler`` + ``dask worker``, dask-jobqueue on SLURM,
  Kubernetes). Each worker runs one task at a time with ``--threads-per-worker`` torch
  threads (default: as many as in-process, so the features are the same bit for bit)
  and loads each model once (:data:`embed.worker.WORKER_CACHE`); tasks on GPU
  workers ask for ``resources={"GPU": 1}``. A worker that dies mid task is replaced and
  its task run again (Dask's ``allowed-failures``): chunks are written whole and marked
  done after their rows, so the result is the same.

An executor gives the device its tasks will run on (:meth:`device_choice`: asked of the
workers on a remote cluster, which must agree) and runs a list of units,
calling back as each one finishes.
"""

from __future__ import annotations

import importlib.util
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch

from data import cluster as dask_cluster
from data.errors import ConfigError, DataError, Problem
from data.store import BackboneItem
from embed.config import EmbedConfig
from embed.device import DeviceChoice, select_device
from embed.runners import resolve_runner
from embed.units import WorkUnit
from embed.worker import ProcessCache, run_unit

log = logging.getLogger("hespot")

Done = Callable[[WorkUnit], None]


def precision_name(choice: DeviceChoice) -> str:
    """The ``--precision`` value that selects ``choice``'s dtype again."""
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[choice.dtype_name]


class InProcessExecutor:
    """The units one after the other in this process."""

    name = "inprocess"

    def __init__(self, cfg: EmbedConfig) -> None:
        self.cache = ProcessCache(max_models=1)

    def describe(self) -> str:
        return "in-process"

    def device_choice(self, cfg: EmbedConfig) -> DeviceChoice:
        return select_device(cfg.device, cfg.precision)

    def task_threads(self, cfg: EmbedConfig) -> int | None:
        return cfg.threads

    def default_prefetch(self, choice: DeviceChoice) -> int | None:
        return None  # embed.config.default_prefetch

    def planning_model(self, cfg: EmbedConfig, job: BackboneItem):
        """The model the coordinator plans with: here the one the units then run."""
        return self.cache.extractor(cfg, job)

    def run(self, tasks: Sequence[tuple[EmbedConfig, WorkUnit]], done: Done,
            progress: Callable[[int], None] | None = None) -> None:
        for cfg, unit in tasks:
            run_unit(unit, cfg, self.cache, progress)
            done(unit)

    def close(self) -> None:
        self.cache.close()


def _device_of(device: str, precision: str) -> tuple[str, str, str]:
    """On a worker: the device, precision and description ``select_device`` gives there."""
    choice = select_device(device, precision)
    return choice.device.type, precision_name(choice), choice.describe()


def _local_threads(cfg: EmbedConfig) -> int:
    return cfg.threads_per_worker or cfg.threads or torch.get_num_threads()


def _release() -> None:
    """On a worker: drop the models and files this run left in the process cache."""
    from embed.worker import WORKER_CACHE
    WORKER_CACHE.close()


class DaskExecutor:
    """The units as tasks on a Dask cluster: started here (``--workers N``) or reached at
    ``--scheduler ADDRESS``."""

    name = "dask"

    def __init__(self, cfg: EmbedConfig) -> None:
        self.cluster = None
        if cfg.scheduler:
            self.client = dask_cluster.connect(cfg.scheduler)
            return
        gpus = torch.cuda.device_count() if cfg.device != "cpu" else 0
        cuda = bool(gpus) and importlib.util.find_spec("dask_cuda") is not None
        if gpus > 1 and not cuda:
            log.warning("dask: %d GPUs but dask-cuda is not installed, so every worker "
                        "uses the first GPU (pip install dask-cuda)", gpus)
        workers = min(cfg.workers, gpus) if cuda else cfg.workers
        log.info("dask: %s, %d workers x %d torch threads",
                 "LocalCUDACluster (one worker per GPU)" if cuda else "LocalCluster",
                 workers, _local_threads(cfg))
        self.cluster = dask_cluster.local_cluster(workers, _local_threads(cfg),
                                                  {"GPU": 1} if gpus else None, cuda)
        from distributed import Client
        self.client = Client(self.cluster)

    def describe(self) -> str:
        info = self.client.scheduler_info()
        where = "local cluster" if self.cluster else f"scheduler {info.get('address')}"
        return f"dask {where}, {len(info.get('workers', {}))} workers"

    def device_choice(self, cfg: EmbedConfig) -> DeviceChoice:
        """What ``--device``/``--precision`` give on the workers (all must agree)."""
        if self.cluster is None:
            self.client.wait_for_workers(1, timeout=60)
        found = self.client.run(_device_of, cfg.device, cfg.precision)
        kinds = {(d, p) for d, p, _ in found.values()}
        if len(kinds) != 1:
            listed = "; ".join(f"{w}: {text}" for w, (_, _, text) in sorted(found.items()))
            raise ConfigError(f"the Dask workers differ in device or precision ({listed}): "
                              "the features would differ; pass --device and --precision, "
                              "or use workers of one kind")
        device, precision = kinds.pop()
        return DeviceChoice(torch.device(device),
                            select_device("cpu", precision).dtype, channels_last=True)

    def task_threads(self, cfg: EmbedConfig) -> int | None:
        """Torch threads per task: ``--threads-per-worker``, else as many as this process
        runs the model with in-process (``--threads``, else torch's default). The features'
        last bits depend on the thread count (oneDNN splits sums by threads: 1 vs 2
        threads differ by ~1e-5), so by default a Dask run gives the in-process features
        bit for bit; fewer threads per worker trade that for less contention. On a
        cluster reached at ``--scheduler``, by default each worker's torch default (its
        machine's cores: start workers with ``--nthreads 1``)."""
        if self.cluster is None:
            return cfg.threads_per_worker
        return _local_threads(cfg)

    def default_prefetch(self, choice: DeviceChoice) -> int | None:
        """0 on CPU workers (the workers are the parallelism; a reader thread would take
        cores from their models), 3 on GPU workers."""
        return 0 if choice.device.type == "cpu" else 3

    def planning_model(self, cfg: EmbedConfig, job: BackboneItem):
        """The model the coordinator plans with (weights checked, feature widths, runner),
        built here once and dropped: the workers build their own. A coordinator without
        the workers' GPU builds it on its CPU, with the workers' dtype and runner."""
        if cfg.device != "cuda" or torch.cuda.is_available():
            return ProcessCache().extractor(cfg, job)
        extractor, winfo = ProcessCache().extractor(replace(cfg, device="cpu"), job)
        cpu = select_device("cpu", cfg.precision)
        extractor.choice = DeviceChoice(torch.device("cuda"), cpu.dtype,  # never run here
                                        cpu.channels_last)
        extractor.runner = resolve_runner(cfg.runner, extractor.choice, extractor.model)
        return extractor, winfo

    def _resources(self, cfg: EmbedConfig, choice_device: str) -> dict | None:
        if choice_device != "cuda":
            return None
        workers = self.client.scheduler_info().get("workers", {}).values()
        if any("GPU" in w.get("resources", {}) for w in workers):
            return {"GPU": 1}
        log.warning("dask: no worker declares a GPU resource, so a GPU may run several "
                    "tasks at once; start workers with `dask worker ADDRESS --resources "
                    "GPU=1 --nthreads 1`")
        return None

    def run(self, tasks: Sequence[tuple[EmbedConfig, WorkUnit]], done: Done,
            progress: Callable[[int], None] | None = None) -> None:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker
        if not tasks:
            return
        cfg = tasks[0][0]
        resources = self._resources(cfg, cfg.device)
        token = uuid.uuid4().hex[:8]
        futures = {self.client.submit(run_unit, u, c, key=f"{u.key}-{token}", pure=False,
                                      resources=resources): u for c, u in tasks}
        try:
            for future in as_completed(futures):
                unit = futures[future]
                try:
                    future.result()
                except KilledWorker as exc:
                    raise DataError(Problem(
                        cfg.store, unit.slide, f"{unit.job.key}, chunks {unit.first_chunk}"
                        f"..{unit.first_chunk + unit.n_chunks - 1}",
                        "a task that finishes", f"its workers died repeatedly ({exc})",
                        "see the workers' logs (memory? a GPU fault?); rerun: finished "
                        "chunks are kept")) from exc
                if progress:
                    progress(unit.n_spots)
                done(unit)
        finally:  # after an error: stop what is still queued or running
            self.client.cancel([f for f in futures if not f.done()])

    def close(self) -> None:
        try:  # models and open files dropped: a worker holding a traced graph is slow to exit
            self.client.run(_release, wait=True)
        except Exception:  # noqa: BLE001 - closing after a failure: best effort
            log.debug("dask: workers did not release their caches", exc_info=True)
        dask_cluster.close(self.client, self.cluster)


EXECUTORS: dict[str, type] = {"inprocess": InProcessExecutor, "dask": DaskExecutor}


def executor_name(cfg: EmbedConfig) -> str:
    """``dask`` with ``--workers`` or ``--scheduler``, else ``inprocess``."""
    return "dask" if cfg.workers or cfg.scheduler else "inprocess"


def make_executor(cfg: EmbedConfig):
    """The executor ``cfg`` asks for (close it when done)."""
    return EXECUTORS[executor_name(cfg)](cfg)


def pinned(cfg: EmbedConfig, choice: DeviceChoice, threads: int | None) -> EmbedConfig:
    """``cfg`` as tasks get it: device and precision fixed to ``choice`` (a worker picks
    the same again) and ``threads`` torch threads."""
    return replace(cfg, device=choice.device.type, precision=precision_name(choice),
                   threads=threads)
