"""Stage 1 fed by reader processes (embed.feed): the features are the in-process reader's
bit for bit (synthetic fixture; the sample's C2 as a slow test), whole chunks are read at
once for batches bigger than a chunk, and a reader process killed mid-run fails the run
in one line naming it, after which the same command resumes to the same features."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import zarr

from data.store import read_features
from embed.config import EmbedConfig
from embed.run import run

ROOT = Path(__file__).resolve().parents[2]
BACKBONE = "tiny_random"
SLIDES = ("S_1", "S_2")


def _cfg(h5, store, **kw) -> EmbedConfig:
    base = EmbedConfig(h5=str(h5), store=str(store), backbones=(f"{BACKBONE}+stages+96",),
                       slides=SLIDES, tta=2, patch_px=64, batch_spots=4, chunk_spots=8,
                       device="cpu", precision="fp32", quiet=True)
    return replace(base, **kw)


def _arrays(store, slides=SLIDES, key=BACKBONE) -> dict[tuple[str, str], np.ndarray]:
    root = zarr.open_group(str(store), mode="r")[key]
    return {(s, a): root[s][a][:] for s in slides
            for a in ("features", "stages", "features_96px", "stages_96px")}


@pytest.fixture(scope="module")
def in_process(synthetic_h5, tmp_path_factory):
    store = tmp_path_factory.mktemp("feed_ref") / "ref.zarr"
    run(_cfg(synthetic_h5, store, readers=0))
    return store, _arrays(store)


def test_reader_processes_give_the_in_process_features(synthetic_h5, in_process, tmp_path):
    store = tmp_path / "readers.zarr"
    run(_cfg(synthetic_h5, store, readers=2))
    assert not multiprocessing.active_children()  # every reader ended with its unit
    got = _arrays(store)
    assert got.keys() == in_process[1].keys()
    for key, want in in_process[1].items():
        assert np.array_equal(got[key], want), key


def test_batches_of_whole_chunks(synthetic_h5, tmp_path):
    """--batch-spots 16 over chunks of 8 (a GPU's batches): two chunks read at once, each
    written and marked done; reader processes and the in-process reader agree."""
    stores = [tmp_path / "a.zarr", tmp_path / "b.zarr"]
    for store, readers in zip(stores, (0, 1), strict=True):
        run(_cfg(synthetic_h5, store, batch_spots=16, readers=readers))
        done = zarr.open_group(str(store), mode="r")[f"{BACKBONE}/S_1/done"][:]
        assert done.tolist() == [1] * 7  # 49 spots: 6 chunks of 8, the 7th of 1
    a, b = (_arrays(s) for s in stores)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_readers_end_when_the_groups_are_left_midway(synthetic_h5):
    """A run that stops reading a unit midway (an error, Ctrl-C) leaves no reader behind."""
    from data.h5 import CanonicalH5
    from data.store import BackboneItem
    from embed.feed import UnitChunks, unit_groups
    from embed.units import slide_units

    with CanonicalH5(synthetic_h5) as h5:
        t = h5.positions("S_1")
        (unit,) = slide_units(BackboneItem(BACKBONE), "S_1", t.x, t.y,
                              np.arange(-(-len(t.x) // 8)), 8, (64,), 64)
        groups = unit_groups(UnitChunks(str(h5.path), unit, 8, 1, "reflect", 64), h5, 2)
        first = next(groups)
        assert first.first_chunk == 0 and first.patches[0].shape[1:] == (64, 64, 3)
        assert len(multiprocessing.active_children()) == 2
        groups.close()
    assert not multiprocessing.active_children()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _done(store: Path) -> int:
    total = 0
    for slide in SLIDES:
        folder = store / BACKBONE / slide / "done" / "c"
        total += sum(n.isdigit() for n in os.listdir(folder)) if folder.is_dir() else 0
    return total


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_a_killed_reader_fails_the_run_in_one_line_and_the_rerun_resumes(synthetic_h5,
                                                                          tmp_path):
    store = tmp_path / "killed.zarr"
    cmd = [sys.executable, "-m", "embed.run", "--h5", str(synthetic_h5), "--store",
           str(store), "--backbones", BACKBONE, "--slides", ",".join(SLIDES), "--tta", "2",
           "--patch-px", "64", "--batch-spots", "1", "--chunk-spots", "1", "--readers",
           "1", "--device", "cpu", "--precision", "fp32", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    killed = None
    try:
        deadline = time.monotonic() + 240
        while killed is None:
            assert proc.poll() is None, "the run ended before a reader could be killed"
            assert time.monotonic() < deadline, "no reader process within 240 s"
            if _done(store) >= 1:
                for pid in _children(proc.pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                        killed = pid
                        break
                    except ProcessLookupError:
                        continue
            time.sleep(0.005)
        err = proc.communicate(timeout=120)[1].decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("hespot: ") and f"reader process {killed}" in last, last
    assert "chunks" in last and "run the same command again" in last, last
    # the rerun resumes: finished chunks kept, the rest computed, as an uninterrupted run
    assert run(_cfg(synthetic_h5, store, backbones=(BACKBONE,), batch_spots=1,
                    chunk_spots=1, readers=0))[BACKBONE] in (
        {"S_1": "resumed", "S_2": "written"}, {"S_1": "skipped", "S_2": "resumed"},
        {"S_1": "resumed", "S_2": "resumed"})
    ref = tmp_path / "ref.zarr"
    run(_cfg(synthetic_h5, ref, backbones=(BACKBONE,), batch_spots=1, chunk_spots=1,
             readers=0))
    for slide in SLIDES:
        assert np.array_equal(read_features(store, BACKBONE, slide),
                              read_features(ref, BACKBONE, slide)), slide


@pytest.mark.slow
def test_reader_processes_on_the_sample_c2(her2st_h5, tmp_path):
    """The real sample (C2, efficientnet_lite0, its real weights and traced runner, 448 px
    crops resized on the device): two reader processes give the in-process features bit
    for bit."""
    base = EmbedConfig(h5=str(her2st_h5), backbones=("efficientnet_lite0+448",),
                       slides=("C2",), tta=1, quiet=True)
    stores = [tmp_path / "inproc.zarr", tmp_path / "readers.zarr"]
    for store, readers in zip(stores, (0, 2), strict=True):
        run(replace(base, store=str(store), readers=readers))
    for name in ("features", "features_448px"):
        x, y = (zarr.open_group(str(s), mode="r")[f"efficientnet_lite0/C2/{name}"][:]
                for s in stores)
        assert x.shape[0] == 187 and np.array_equal(x, y), name


def test_a_reader_error_is_raised_in_the_run_as_it_was(synthetic_h5, tmp_path, monkeypatch):
    """A bad read in a reader process (a damaged tile, say) stops the run with that
    process's own DataError, naming file, slide and field; what an earlier run finished
    is kept."""
    from data.errors import DataError, Problem
    from data.patches import PatchCropper

    crop = PatchCropper.crop

    def damaged(self, x, y, out=None):
        if self.slide == "S_2":
            raise DataError(Problem(str(synthetic_h5), "S_2", "image", "a readable tile",
                                    "a damaged tile", "import the slide again"))
        return crop(self, x, y, out)

    store = tmp_path / "damaged.zarr"
    run(_cfg(synthetic_h5, store, slides=("S_1",), readers=2))
    before = _arrays(store, slides=("S_1",))
    monkeypatch.setattr(PatchCropper, "crop", damaged)
    with pytest.raises(DataError, match="S_2.*a damaged tile"):
        run(_cfg(synthetic_h5, store, readers=2))
    after = _arrays(store, slides=("S_1",))
    assert all(np.array_equal(after[k], before[k]) for k in before)
