"""Dask for every stage: a cluster started for one run (``--workers N``) or an existing one
reached at ``--scheduler ADDRESS``, and a map of tasks onto it (:class:`TaskMap`).

Stage 1 hands its work units to it (``embed.executors``); stage 2 its LOSO folds
(``hespot regress``) and its recipe grid (``hespot tune``). Without either flag everything
runs in this process, as before. No torch here.

Worker processes of a cluster started here get ``threads_per_worker`` BLAS/OpenMP threads
(``OMP_NUM_THREADS``...; Dask's own default is 1), waiting passively when the workers'
threads outnumber the cores, and run one task at a time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any

from data.errors import ConfigError, DataError, Problem

log = logging.getLogger("hespot")

#: environment variables that fix a worker's BLAS and OpenMP thread pools
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")



@dataclass(frozen=True)
class ClusterSettings:
    """Where a stage that can use Dask runs; its config dataclass inherits these fields.

    ``workers`` > 0: a cluster of that many worker processes started on this machine for
    the run; ``threads_per_worker``: threads per worker (default: the in-process count);
    ``scheduler``: the address of an existing cluster. Neither: everything in process.
    """

    workers: int = 0
    threads_per_worker: int | None = None
    scheduler: str | None = None


#: the flags every stage that can use a cluster takes (data.cli.COMMON_FLAGS)
CLUSTER_FLAGS = tuple(f.name for f in fields(ClusterSettings))


def check_cluster(workers: int, scheduler: str | None, threads_per_worker: int | None) -> None:
    """The cluster flags make sense together.

    Raises:
        ConfigError: naming the flag.
    """
    if workers < 0:
        raise ConfigError(f"--workers must be 0 (in this process) or more, got {workers}")
    if workers and scheduler:
        raise ConfigError("--workers starts a local Dask cluster and --scheduler uses an "
                          "existing one: pass one of them")
    if threads_per_worker is not None:
        if threads_per_worker < 1:
            raise ConfigError(f"--threads-per-worker must be at least 1, got "
                              f"{threads_per_worker}")
        if not (workers or scheduler):
            raise ConfigError("--threads-per-worker needs --workers or --scheduler")


def usable_cores() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)


def _require_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError("--workers and --scheduler need dask.distributed: "
                          "pip install 'distributed'") from exc
    return distributed


def connect(scheduler: str):
    """A client of the cluster at ``scheduler``.

    Raises:
        DataError: no scheduler answers there.
    """
    distributed = _require_distributed()
    logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        return distributed.Client(scheduler, timeout="20s")
    except OSError as exc:
        raise DataError(Problem(scheduler, "", "--scheduler", "a running Dask scheduler",
                                f"none reached ({exc})", "start one (`dask scheduler`, then "
                                "`dask worker ADDRESS --nthreads 1`) or check the address")
                        ) from exc


def local_cluster(workers: int, threads: int, resources: dict | None = None,
                  cuda: bool = False):
    """A cluster of ``workers`` processes on this machine, each running one task at a time
    with ``threads`` BLAS/OpenMP threads; ``cuda``: one worker per GPU (dask-cuda)."""
    import dask
    distributed = _require_distributed()
    logging.getLogger("distributed").setLevel(logging.WARNING)
    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.update({v: str(threads) for v in THREAD_VARS})
    if workers * threads > usable_cores():
        # more threads than cores: OpenMP threads that spin while waiting take the cores
        # from the other workers' (measured: 2 workers x 2 threads on 2 cores, 29.9 views/s
        # spinning, 56.9 yielding; in-process 71)
        environ["OMP_WAIT_POLICY"] = "PASSIVE"
    common = {"threads_per_worker": 1, "dashboard_address": None,
              "silence_logs": logging.ERROR, "resources": resources}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        if cuda:
            from dask_cuda import LocalCUDACluster
            return LocalCUDACluster(n_workers=workers, **common)
        return distributed.LocalCluster(n_workers=workers, processes=True, **common)


def close(client, cluster) -> None:
    """Close the client, then the cluster this run started (if any)."""
    client.close()
    if cluster is not None:
        # a worker slow to exit (a traced oneDNN graph) is killed after the nanny's 4 s:
        # its work is written, the warning is noise
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
        cluster.close()


class TaskMap:
    """``map(fn, items, **shared)`` -> ``[fn(item, **shared) for item in items]``, in order:
    in this process (``client`` None) or as tasks on a Dask cluster, where ``shared``
    objects (e.g. every slide's features) are sent to each worker once."""

    def __init__(self, client=None) -> None:
        self.client = client

    def describe(self) -> str:
        if self.client is None:
            return "in-process"
        return f"dask, {len(self.client.scheduler_info().get('workers', {}))} workers"

    def map(self, fn: Callable, items: Sequence, **shared: Any) -> list:
        if self.client is None:
            return [fn(item, **shared) for item in items]
        # a fresh key each time (hash=False): the same object scattered again under its
        # content's key can race the release of the previous map's copy ("lost
        # dependencies", seen once in CI)
        sent = {k: self.client.scatter(v, broadcast=True, hash=False)
                for k, v in shared.items()}
        futures = self.client.map(fn, list(items), pure=False, **sent)
        try:
            return self.client.gather(futures)
        finally:
            self.client.cancel([f for f in futures if not f.done()])


@contextmanager
def task_map(workers: int = 0, scheduler: str | None = None,
             threads_per_worker: int | None = None) -> Iterator[TaskMap]:
    """The :class:`TaskMap` the flags ask for, its cluster closed at the end of the block.
    Local workers get ``threads_per_worker`` threads each, by default as many as this
    process's BLAS uses (the machine's cores): sums split over another number of threads
    can differ in their last bits, and a run on workers gives the in-process results."""
    check_cluster(workers, scheduler, threads_per_worker)
    if not (workers or scheduler):
        yield TaskMap()
        return
    if scheduler:
        client, cluster = connect(scheduler), None
    else:
        cluster = local_cluster(workers, threads_per_worker or usable_cores())
        client = _require_distributed().Client(cluster)
    try:
        yield TaskMap(client)
    finally:
        close(client, cluster)
