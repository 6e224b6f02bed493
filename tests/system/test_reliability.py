"""Issue 18's observations, each refused in seconds with one message naming the file,
slide and field (exit 2, no traceback, nothing written): a NaN spot coordinate, a train
slide missing a cell-type column, a weights file that is not weights, two runs writing one
store (and a stale lock from a killed run, taken over); a full disk or a read-only output
named, the previous output kept."""

from __future__ import annotations

import argparse
import errno
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import embed.run
import regress.run
from data.atomic import atomic_dir, atomic_write_text
from data.errors import DataError
from data.lock import lock_path, output_lock
from embed.weights import WeightsError, read_state_dict


def _one_error(capsys, rc, *needles) -> str:
    assert rc == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("hespot: ") == 1, err
    for n in needles:
        assert str(n) in err, f"{n!r} not in {err!r}"
    return err


def _edited(synthetic_h5, tmp_path, edit) -> str:
    path = tmp_path / "edited.h5"
    shutil.copy(synthetic_h5, path)
    with h5py.File(path, "r+") as f:
        key = "spots/Train/S_2"
        table = edit(f[key][()])
        del f[key]
        f[key] = table
    return str(path)


def _embed(h5, store, *args) -> int:
    return embed.run.main(["--h5", str(h5), "--store", str(store), "--backbones",
                           "tiny_random", "--patch-px", "32", "--tta", "1", "--quiet", *args])


def test_nan_coordinate_is_refused_before_stage_1(synthetic_h5, tmp_path, capsys):
    def nan_x(t):
        t["x"][3] = np.nan
        return t

    h5 = _edited(synthetic_h5, tmp_path, nan_x)
    store = tmp_path / "e.zarr"
    _one_error(capsys, _embed(h5, store), h5, "slide S_2", "field x", "NaN")
    assert not store.exists()


def test_missing_cell_type_is_refused_before_stage_1(synthetic_h5, tmp_path, capsys):
    def drop_one(t):
        names = [n for n in t.dtype.names if n != t.dtype.names[-1]]
        return np.asarray(t[names]).astype([(n, t.dtype[n]) for n in names])

    h5 = _edited(synthetic_h5, tmp_path, drop_one)
    store = tmp_path / "e.zarr"
    _one_error(capsys, _embed(h5, store), h5, "cell types")
    assert not store.exists()
    out = tmp_path / "out"
    _one_error(capsys, regress.run.main(["--h5", h5, "--store", str(store), "--out", str(out),
                                         "--quiet"]), h5, "cell types")


@pytest.mark.parametrize("kind", ["pickle", "junk", "truncated", "safetensors"])
def test_weights_that_are_not_weights(tmp_path, kind):
    path = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pt")
    if kind == "pickle":  # a pickle of an object: loading it would run code
        torch.save(argparse.Namespace(x=1), path)
    elif kind == "truncated":
        torch.save({"w": torch.zeros(10_000)}, path)
        path.write_bytes(path.read_bytes()[:20_000])
    else:
        path.write_bytes(b"not weights " * 50)
    with pytest.raises(WeightsError) as exc:
        read_state_dict(path)
    assert str(path) in str(exc.value)
    assert "weights_only=False" not in str(exc.value)


def test_weights_that_are_not_weights_on_the_command_line(synthetic_h5, tmp_path, capsys):
    bad = tmp_path / "uni.pt"
    torch.save(argparse.Namespace(x=1), bad)
    rc = embed.run.main(["--h5", str(synthetic_h5), "--store", str(tmp_path / "e.zarr"),
                         "--backbones", "efficientnet_lite0", "--weights", str(bad),
                         "--quiet"])
    err = _one_error(capsys, rc, bad)
    assert "weights_only=False" not in err


def _write_lock(store, pid: int) -> None:
    lock_path(store).write_text(json.dumps({"pid": pid, "host": socket.gethostname(),
                                            "started": "earlier", "command": "hespot embed"}))


def test_second_run_on_a_store_is_refused_naming_the_holder(synthetic_h5, tmp_path, capsys):
    store = tmp_path / "e.zarr"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        _write_lock(store, holder.pid)
        _one_error(capsys, _embed(synthetic_h5, store), lock_path(store),
                   f"held by pid {holder.pid}", "wait for that run")
        assert not store.exists()
    finally:
        holder.kill()
        holder.wait()


def test_stale_lock_of_a_killed_run_is_taken_over(synthetic_h5, tmp_path, caplog):
    store = tmp_path / "e.zarr"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_lock(store, gone.pid)
    assert _embed(synthetic_h5, store, "--slides", "S_1") == 0
    assert "taking over the lock" in caplog.text
    assert not lock_path(store).exists()  # released at the end


def test_lock_is_held_during_the_run_and_nested_use_is_allowed(tmp_path):
    out = tmp_path / "out"
    with output_lock(out, "output folder") as path:
        assert json.loads(path.read_text())["pid"] > 0
        with output_lock(out, "output folder"):  # the same process: a nested step
            pass
        assert path.exists()
    assert not path.exists()
    assert not out.exists()  # created for the lock only, removed again


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_is_named_and_leaves_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "out" / "report.json"
    atomic_write_text(target, "old")
    monkeypatch.setattr(Path, "write_bytes", _enospc)
    with pytest.raises(DataError, match="No space left on device") as exc:
        atomic_write_text(target, "new")
    assert str(target) in str(exc.value) and "free space" in str(exc.value)
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]  # no temporary


def test_read_only_output_folder_is_named(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr("data.atomic.tempfile.mkstemp", read_only)
    monkeypatch.setattr("data.atomic.tempfile.mkdtemp", read_only)
    with pytest.raises(DataError, match="Read-only file system"):
        atomic_write_text(tmp_path / "x.csv", "a")
    with pytest.raises(DataError, match="Read-only file system"):
        with atomic_dir(tmp_path / "store.zarr"):
            pass


def test_submit_on_a_full_disk_exits_2_and_keeps_the_submission(synthetic_h5, tiny_regressed,
                                                                 tmp_path, monkeypatch, capsys):
    import regress.submit

    out = tmp_path / "out"
    shutil.copytree(tiny_regressed, out)
    argv = ["--h5", str(synthetic_h5), "--out", str(out), "--quiet"]
    assert regress.submit.main(argv) == 0
    before = (out / "submission.csv").read_bytes()
    capsys.readouterr()
    monkeypatch.setattr(Path, "write_bytes", _enospc)
    _one_error(capsys, regress.submit.main(argv), "submission.csv", "No space left")
    monkeypatch.undo()
    assert (out / "submission.csv").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".submission")]


@pytest.mark.parametrize("kind", ["junk", "truncated", "pickle"])
def test_damaged_checkpoint_is_named_without_unpickling(tmp_path, kind):
    """A fine-tune checkpoint that is not (or no longer) a checkpoint of tensors: a
    DataError naming the file, never torch's advice to run it with weights_only=False."""
    import pickle

    import torch

    from embed.finetune.checkpoints import load_checkpoint

    path = tmp_path / "epoch_003.pt"
    if kind == "junk":
        path.write_bytes(b"not a checkpoint" * 10)
    elif kind == "truncated":
        torch.save({"model": {"w": torch.ones(1000)}, "settings": {}}, path)
        path.write_bytes(path.read_bytes()[:500])
    else:
        path.write_bytes(pickle.dumps(Path("x")))
    with pytest.raises(DataError) as err:
        load_checkpoint(path, {})
    assert str(path) in str(err.value) and "weights_only" not in str(err.value)
