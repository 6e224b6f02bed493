"""Stage 1 beyond one process (embed.executors): Dask workers writing one store give the
in-process run's features bit for bit, with a local cluster, an existing cluster reached
at --scheduler, a worker killed mid task, and a store at an fsspec URL; damaged chunks are
named and computed again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

import embed.run
from data.errors import DataError
from data.store import FeatureSpec, open_store, read_array, read_features
from embed.units import chunk_runs

pytest.importorskip("distributed")

ARGS = ["--backbones", "tiny_random", "--patch-px", "64", "--tta", "2", "--chunk-spots",
        "8", "--quiet"]
SLIDES = ("S_1", "S_2", "S_3", "S_4")


def _embed(h5: Path, store, *extra: str) -> None:
    assert embed.run.main(["--h5", str(h5), "--store", str(store), *ARGS, *extra]) == 0


def _features(store) -> dict[str, np.ndarray]:
    return {s: read_features(store, "tiny_random", s) for s in SLIDES}


@pytest.fixture(scope="module")
def reference(synthetic_h5, tmp_path_factory) -> dict[str, np.ndarray]:
    store = tmp_path_factory.mktemp("dask_ref") / "ref.zarr"
    _embed(synthetic_h5, store)
    return _features(store)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_chunk_runs_cut_consecutive_chunks():
    assert list(chunk_runs(np.array([0, 1, 2, 5, 6, 9]), 2)) == [(0, 2), (2, 1), (5, 2), (9, 1)]
    assert list(chunk_runs(np.array([3, 4, 5]))) == [(3, 3)]
    assert list(chunk_runs(np.array([], int))) == []


def test_local_cluster_gives_the_in_process_features(synthetic_h5, reference, tmp_path):
    store = tmp_path / "w2.zarr"
    _embed(synthetic_h5, store, "--workers", "2", "--chunks-per-task", "2")
    assert _same(_features(store), reference)


def test_store_at_an_fsspec_url(synthetic_h5, reference):
    url = "memory://hespot-test/e.zarr"
    _embed(synthetic_h5, url)
    store = open_store(url)
    got = {s: read_array(store, url, FeatureSpec("tiny_random"), s) for s in SLIDES}
    assert _same(got, reference)


def test_existing_cluster_at_scheduler_address(synthetic_h5, reference, tmp_path):
    """The README's example: `dask scheduler` and two `dask worker` processes started by
    hand, then `hespot embed --scheduler ADDRESS`."""
    dask = Path(sys.executable).with_name("dask")
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    procs = [subprocess.Popen([str(dask), "scheduler", "--scheduler-file",
                               str(scheduler_file), "--port", "0", "--dashboard-address",
                               ":0"], env=env, stderr=subprocess.PIPE, text=True)]
    try:
        for _ in range(200):
            if scheduler_file.exists() and '"address"' in scheduler_file.read_text():
                break
            time.sleep(0.1)
        address = re.search(r'"address": "([^"]+)"', scheduler_file.read_text()).group(1)
        procs += [subprocess.Popen([str(dask), "worker", address, "--nthreads", "1",
                                    "--no-dashboard"], env=env, stderr=subprocess.DEVNULL)
                  for _ in range(2)]
        store = tmp_path / "sched.zarr"
        _embed(synthetic_h5, store, "--scheduler", address, "--chunks-per-task", "2")
        assert _same(_features(store), reference)
    finally:
        for p in procs[::-1]:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_worker_killed_mid_task_is_retried(synthetic_h5, reference, tmp_path):
    """The first embedding task to start kills its worker process (SIGKILL, 0.2 s in);
    Dask starts a new worker and runs the task again: the features are unchanged."""
    from distributed import Client, LocalCluster
    from distributed.diagnostics.plugin import WorkerPlugin

    marker = tmp_path / "killed"

    class KillFirstTask(WorkerPlugin):
        def transition(self, key, start, finish, **kwargs):
            if finish == "executing" and str(key).startswith("embed-"):
                try:
                    fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:
                    return
                os.close(fd)
                threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGKILL)).start()

    with LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None,
                      processes=True) as cluster, Client(cluster) as client:
        client.register_plugin(KillFirstTask())
        store = tmp_path / "killed.zarr"
        _embed(synthetic_h5, store, "--scheduler", cluster.scheduler_address,
               "--chunks-per-task", "2")
    assert marker.exists(), "no task was killed"
    assert _same(_features(store), reference)


def _damage(store: Path, slide: str, chunk: int) -> None:
    path = store / "tiny_random" / slide / "features" / "c" / str(chunk) / "0"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_chunk_is_named_then_recomputed(synthetic_h5, reference, tmp_path, caplog):
    store = tmp_path / "damaged.zarr"
    _embed(synthetic_h5, store)
    codecs = zarr.open_group(str(store), mode="r")["tiny_random/S_2/features"].metadata.codecs
    assert any(type(c).__name__ == "Crc32cCodec" for c in codecs)
    _damage(store, "S_2", 3)
    with pytest.raises(DataError, match=r"S_2.*damaged chunk\(s\) 3 .*recomputes"):
        read_features(store, "tiny_random", "S_2")
    _embed(synthetic_h5, store)  # a resume: rechecks the finished chunks, computes 3 again
    assert "damaged chunk" in caplog.text
    assert _same(_features(store), reference)


def test_no_verify_skips_the_check(synthetic_h5, tmp_path):
    store = tmp_path / "noverify.zarr"
    _embed(synthetic_h5, store)
    _damage(store, "S_1", 0)
    _embed(synthetic_h5, store, "--no-verify")  # trusts the done flags
    with pytest.raises(DataError, match="damaged"):
        read_features(store, "tiny_random", "S_1")


def test_several_reader_processes_give_the_same_features(synthetic_h5, reference, tmp_path):
    """--readers 3 (how a GPU is fed): chunks read by three reader processes at once,
    handed over in order."""
    store = tmp_path / "readers.zarr"
    _embed(synthetic_h5, store, "--readers", "3", "--prefetch", "2")
    assert _same(_features(store), reference)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a CPU-only coordinator")
def test_a_cpu_coordinator_plans_for_gpu_workers():
    """Without the workers' GPU the coordinator builds the model on its CPU but records
    the workers' device, dtype and runner (eager on CUDA) in the slide settings."""
    from data.store import BackboneItem
    from embed.config import EmbedConfig
    from embed.executors import DaskExecutor

    cfg = EmbedConfig(device="cuda", precision="bf16", runner="auto", batch_spots=4)
    extractor, winfo = DaskExecutor.planning_model(None, cfg, BackboneItem("tiny_random"))
    assert extractor.choice.device.type == "cuda" and extractor.choice.dtype_name == "bfloat16"
    assert extractor.runner == "eager" and winfo.sha256
    assert "on the workers" in extractor.choice.describe()


@pytest.mark.slow
def test_workers_give_the_in_process_features_on_the_sample(her2st_h5, tmp_path):
    """The real sample (C2, efficientnet_lite0 with its real weights and traced runner):
    two Dask workers write the in-process features bit for bit."""
    args = ["--h5", str(her2st_h5), "--backbones", "efficientnet_lite0", "--tta", "1",
            "--slides", "C2", "--quiet"]
    stores = [tmp_path / "inproc.zarr", tmp_path / "workers.zarr"]
    assert embed.run.main([*args, "--store", str(stores[0])]) == 0
    assert embed.run.main([*args, "--store", str(stores[1]), "--workers", "2",
                           "--chunks-per-task", "1"]) == 0
    a, b = (read_features(s, "efficientnet_lite0", "C2") for s in stores)
    assert a.shape == (187, 1280) and np.array_equal(a, b)
