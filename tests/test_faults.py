"""The fault suite's fast part (``make faults`` runs it whole, with kills at 20, 50 and
80 % of each step and every command that writes): every bad input refused; ``embed``,
``regress``, ``submit`` and the fastest others (``import-wsi``, ``fit``) killed once at
half their time and run again to the uninterrupted outputs; two runs at once kept apart.
And the temporaries a killed writer leaves are cleared by the next write."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fault_suite  # noqa: E402

from data.atomic import (  # noqa: E402
    _host,
    atomic_dir,
    atomic_write_text,
    remove_stale_temporaries,
)

FAST_KILLS = ("embed", "regress", "submit", "import-wsi", "fit")


def test_fault_suite_fast_part(tmp_path):
    lines: list[str] = []
    counts = fault_suite.run_suite(tmp_path, fractions=(0.5,), log=lines.append,
                                   steps=FAST_KILLS)
    assert counts["bad_inputs_refused"][1] >= 10, counts
    assert counts["kills_survived"][1] == len(FAST_KILLS), counts
    assert all(n == m for n, m in counts.values()), "\n".join(lines)
    assert fault_suite.summary(counts).startswith("faults bad_inputs_refused=")


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
