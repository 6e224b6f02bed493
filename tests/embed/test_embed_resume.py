"""Resuming an interrupted stage-1 run (embed.run + data.store): after a crash, a reset of
trailing chunks, or a SIGKILL of the real command, a rerun finishes the slide and its
features equal an uninterrupted run's exactly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

import embed.worker
from data.errors import DataError
from data.store import read_features
from embed.config import EmbedConfig
from embed.extract import FeatureExtractor
from embed.run import run

ROOT = Path(__file__).resolve().parents[2]
BACKBONE = "tiny_random"
SLIDES = ("S_1", "S_2")
N_SPOTS = 49
BATCH = 4  # spots per batch and per stored chunk: 13 chunks per slide
TTA = 2  # resuming does not depend on the views; fewer are faster


def _cfg(h5, store, **kw) -> EmbedConfig:
    base = EmbedConfig(h5=str(h5), store=str(store), backbones=(BACKBONE,), slides=SLIDES,
                       tta=TTA, patch_px=64, batch_spots=BATCH, chunk_spots=BATCH, device="cpu",
                       precision="fp32", prefetch=2, quiet=True)
    return replace(base, **kw)


def _group(store, slide, mode="r"):
    return zarr.open_group(str(store), mode=mode)[f"{BACKBONE}/{slide}"]


def _assert_equal_to(store, reference):
    for slide in SLIDES:
        assert np.array_equal(read_features(store, BACKBONE, slide), reference[slide]), slide
        assert np.all(_group(store, slide)["done"][:] == 1)


@pytest.fixture(scope="module")
def h5(synthetic_h5, tmp_path_factory):
    """A private copy of the synthetic file (the SIGKILL test reads it from a subprocess)."""
    path = tmp_path_factory.mktemp("resume") / "synthetic.h5"
    shutil.copy(synthetic_h5, path)
    return path


@pytest.fixture(scope="module")
def reference(h5, tmp_path_factory):
    """Features of an uninterrupted run, and its store."""
    store = tmp_path_factory.mktemp("resume_ref") / "ref.zarr"
    assert run(_cfg(h5, store)) == {BACKBONE: {s: "written" for s in SLIDES}}
    feats = {s: read_features(store, BACKBONE, s) for s in SLIDES}
    for f in feats.values():
        assert f.shape[0] == N_SPOTS and np.all(np.isfinite(f))
    return store, feats


def test_crash_then_resume(h5, reference, tmp_path, monkeypatch):
    """The model raises after 5 chunks of S_1; the rerun resumes S_1 at chunk 5."""
    n_ok = 5
    store = tmp_path / "crash.zarr"
    _crash_after(monkeypatch, n_ok)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(_cfg(h5, store))
    monkeypatch.undo()

    g = _group(store, "S_1")
    done = g["done"][:]
    assert done.tolist() == [1] * n_ok + [0] * (len(done) - n_ok)
    rows = g["features"][:]
    assert np.all(np.isfinite(rows[:n_ok * BATCH]))
    assert np.all(np.isnan(rows[n_ok * BATCH:]))
    # every group is created before work starts (design.md); S_2's holds no finished chunk
    assert not zarr.open_group(str(store), mode="r")[f"{BACKBONE}/S_2/done"][:].any()
    with pytest.raises(DataError, match="interrupted run"):
        read_features(store, BACKBONE, "S_1")

    assert run(_cfg(h5, store)) == {BACKBONE: {"S_1": "resumed", "S_2": "written"}}
    _assert_equal_to(store, reference[1])


def test_reset_chunks_are_recomputed(h5, reference, tmp_path):
    """Chunks whose done flag is 0 are recomputed, whatever their rows hold (a run killed
    between writing a chunk's rows and its flag)."""
    store = tmp_path / "reset.zarr"
    shutil.copytree(reference[0], store)
    g = _group(store, "S_2", mode="a")
    n_chunks = g["done"].shape[0]
    start = n_chunks - 4
    g["done"][start:] = 0
    g["features"][start * BATCH:] = np.full((N_SPOTS - start * BATCH, g["features"].shape[1]),
                                            1e6, np.float32)
    assert run(_cfg(h5, store)) == {BACKBONE: {"S_1": "skipped", "S_2": "resumed"}}
    _assert_equal_to(store, reference[1])


def test_done_chunks_are_trusted(h5, reference, tmp_path):
    """Resume starts at the first chunk not done; chunks marked done are not recomputed."""
    store = tmp_path / "trusted.zarr"
    shutil.copytree(reference[0], store)
    g = _group(store, "S_1", mode="a")
    g["done"][-1] = 0
    g["features"][0:BATCH] = np.zeros((BATCH, g["features"].shape[1]), np.float32)
    assert run(_cfg(h5, store, slides=("S_1",))) == {BACKBONE: {"S_1": "resumed"}}
    feats = read_features(store, BACKBONE, "S_1")
    assert np.all(feats[:BATCH] == 0)
    assert np.array_equal(feats[BATCH:], reference[1]["S_1"][BATCH:])


def _done_count(store: Path, slide: str) -> int:
    folder = store / BACKBONE / slide / "done" / "c"
    try:
        return sum(name.isdigit() for name in os.listdir(folder))
    except FileNotFoundError:
        return 0


def test_sigkill_then_resume(h5, reference, tmp_path):
    """Kill the real command (SIGKILL) as soon as S_1 has a finished chunk; rerun it."""
    store = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "embed.run", "--h5", str(h5), "--store", str(store),
           "--backbones", BACKBONE, "--slides", ",".join(SLIDES), "--tta", str(TTA),
           "--patch-px", "64", "--batch-spots", str(BATCH), "--chunk-spots", str(BATCH),
           "--device", "cpu",
           "--precision", "fp32", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while _done_count(store, "S_1") < 1:
            if proc.poll() is not None:
                pytest.fail(f"embed.run ended before it could be killed (rc {proc.returncode}):"
                            f" {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("embed.run wrote no chunk within 60 s")
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    done = _group(store, "S_1")["done"][:]
    n_done = int(done.sum())
    assert n_done >= 1
    # flags are set in chunk order, so the done chunks are a prefix
    assert done.tolist() == [1] * n_done + [0] * (len(done) - n_done)
    # normally S_1 is unfinished and S_2 not begun; a very late kill (a loaded machine)
    # may have finished S_1: then S_2 is the unfinished one
    expected = {}
    for slide in SLIDES:
        g = zarr.open_group(str(store), mode="r")[BACKBONE]
        flags = g[slide]["done"][:] if slide in g else np.zeros(1)
        expected[slide] = ("skipped" if flags.all() else "resumed" if flags.any()
                           else "written")
    assert set(expected.values()) != {"skipped"}, "the kill came after the run finished"
    assert expected["S_1"] == "resumed" or expected["S_2"] != "skipped"

    assert run(_cfg(h5, store))[BACKBONE] == expected
    _assert_equal_to(store, reference[1])


def _crash_after(monkeypatch, n_ok):
    """Make the run's extractor raise after ``n_ok`` calls."""

    class Crashing(FeatureExtractor):
        calls = 0

        def launch(self, x):
            type(self).calls += 1
            if type(self).calls > n_ok:
                raise RuntimeError("simulated crash")
            return super().launch(x)

    monkeypatch.setattr(embed.worker, "FeatureExtractor", Crashing)


def test_resume_with_chunks_not_a_multiple_of_batches(h5, tmp_path, monkeypatch):
    """Chunks of 6 spots run as batches of 4 + 2: a crash inside a chunk loses only that
    chunk, and the resumed features equal an uninterrupted run's with the same settings."""
    cfg = dict(chunk_spots=6, slides=("S_1",))
    ref = tmp_path / "ref.zarr"
    run(_cfg(h5, ref, **cfg))
    store = tmp_path / "crash.zarr"
    _crash_after(monkeypatch, 5)  # chunks 0, 1 done; chunk 2 crashes after its first batch
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(_cfg(h5, store, **cfg))
    monkeypatch.undo()
    assert _group(store, "S_1")["done"][:].tolist()[:3] == [1, 1, 0]
    assert run(_cfg(h5, store, **cfg)) == {BACKBONE: {"S_1": "resumed"}}
    assert np.array_equal(read_features(store, BACKBONE, "S_1"),
                          read_features(ref, BACKBONE, "S_1"))


def test_group_without_finished_chunks_takes_new_settings(h5, tmp_path, monkeypatch):
    """A run that failed before its first chunk (e.g. a runner refused) leaves a group with
    nothing in it: a rerun with other settings replaces it without --overwrite."""
    store = tmp_path / "empty.zarr"
    _crash_after(monkeypatch, 0)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(_cfg(h5, store, slides=("S_1",)))
    monkeypatch.undo()
    assert not np.any(_group(store, "S_1")["done"][:])
    assert run(_cfg(h5, store, slides=("S_1",), runner="eager")) == {
        BACKBONE: {"S_1": "written"}}
    assert zarr.open_group(str(store), mode="r")[f"{BACKBONE}/S_1"].attrs[
        "settings"]["runner"] == "eager"
