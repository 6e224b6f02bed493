"""The fault suite's fast part (``make faults``, ``pytest -m faults``, runs it whole:
test_fault_suite.py, with kills at 20, 50 and 80 % of each step and every command that
writes, ``embed --workers 2`` included): every bad input refused; ``embed``, ``regress``,
``submit`` and the fastest others (``import-wsi``, ``fit``) killed once at half their time
and run again to the uninterrupted outputs; two runs at once kept apart. And the
temporaries a killed writer leaves are cleared by the next write; a report stopped between
two images leaves the previous page and every image it shows."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.atomic import _host, atomic_dir, atomic_write_text, remove_stale_temporaries
from tests.system import faults, processes
from tests.system.fault_outputs import missing_images

FAST_KILLS = ("embed", "regress", "submit", "import-wsi", "fit")


def test_fault_suite_fast_part(tmp_path):
    lines: list[str] = []
    counts = faults.run_suite(tmp_path, fractions=(0.5,), log=lines.append,
                                   steps=FAST_KILLS)
    assert counts["bad_inputs_refused"][1] >= 10, counts
    assert counts["kills_survived"][1] == len(FAST_KILLS), counts
    assert all(n == m for n, m in counts.values()), "\n".join(lines)
    assert faults.summary(counts).startswith("faults bad_inputs_refused=")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_temporaries_are_cleared_by_the_next_write(tmp_path):
    target = tmp_path / "report.json"
    dead, live = _dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; "
                                                "time.sleep(60)"])
    try:
        stale = tmp_path / f".report.json.{dead}-{_host()}.abc.tmp"
        running = tmp_path / f".report.json.{live.pid}-{_host()}.abc.tmp"
        elsewhere = tmp_path / f".report.json.{dead}-00000000.abc.tmp"
        other = tmp_path / f".other.json.{dead}-{_host()}.abc.tmp"
        for p in (stale, running, elsewhere, other):
            p.write_text("half")
        atomic_write_text(target, "{}")
        assert target.read_text() == "{}"
        assert not stale.exists()  # its writer is gone: removed
        assert running.exists() and elsewhere.exists() and other.exists()  # kept
    finally:
        live.kill()
        live.wait()


def test_a_folder_moved_aside_by_a_killed_writer_is_put_back(tmp_path):
    store = tmp_path / "model"
    work = tmp_path / f".model.{_dead_pid()}-{_host()}.xyz.tmp"
    (work / "previous").mkdir(parents=True)
    (work / "previous" / "model.json").write_text("old")
    (work / "model").mkdir()  # the new one, half written, never renamed
    assert remove_stale_temporaries(store) == [work]
    assert (store / "model.json").read_text() == "old" and not work.exists()
    with atomic_dir(store) as tmp:
        tmp.mkdir()
        (tmp / "model.json").write_text("new")
    assert (store / "model.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_report_stopped_midway_leaves_the_previous_page_whole(synthetic_h5, tmp_path,
                                                                 monkeypatch):
    """The report folder is replaced whole: stopped after its third new image (as by a
    kill), the previous index.html and every image it shows are there, unchanged."""
    from regress.report import page, plots

    out = tmp_path / "out"
    args = ["--h5", str(synthetic_h5), "--store", str(tmp_path / "none.zarr"), "--out",
            str(out), "--quiet"]
    assert page.main([*args, "--thumb-px", "64"]) == 0
    before = _files(out / "report")
    assert sum(name.startswith("img/") for name in before) >= 4
    save, saved = plots.save, []

    def stopped(fig, path, dpi=90):
        if len(saved) == 3:
            raise KeyboardInterrupt  # not caught by the page's sections, as a kill
        saved.append(path)
        return save(fig, path, dpi)

    monkeypatch.setattr(plots, "save", stopped)
    with pytest.raises(KeyboardInterrupt):
        page.main([*args, "--thumb-px", "128"])
    assert len(saved) == 3
    assert _files(out / "report") == before
    assert not missing_images(out / "report" / "index.html")
    assert [p.name for p in out.iterdir()] == ["report"]  # its new folder is gone
    monkeypatch.setattr(plots, "save", save)
    assert page.main([*args, "--thumb-px", "128"]) == 0
    after = _files(out / "report")
    assert after.keys() == before.keys() and after != before
    assert not missing_images(out / "report" / "index.html")


def test_a_grandchild_that_left_the_session_is_found_and_killed():
    """The kill cases' survivor check follows descendants listed before the kill (Dask's
    workers), not only the killed command's process group."""
    code = ("import subprocess, sys, time\n"
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
            " start_new_session=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    started: dict[int, str] = {}
    for _ in range(100):
        started = processes.descendants(proc.pid)
        if started:
            break
        time.sleep(0.05)
    assert len(started) == 1
    proc.kill()
    proc.wait()
    assert processes.survivors(proc.pid, started, wait_s=0.5) == list(started)
    assert processes.survivors(proc.pid, started, wait_s=0.5) == []  # killed by the first
