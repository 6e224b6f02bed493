"""A command's child processes (data.child): run to their end with stdin given, a user
error passed on as its one line, and ended with their parent however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from data.child import run_module, user_error

ROOT = Path(__file__).resolve().parents[2]


def test_a_module_runs_with_stdin_and_its_output_kept():
    proc = run_module("json.tool", ["--compact"], stdin='{"a": [1, 2]}')
    assert proc.returncode == 0 and proc.stdout.strip() == '{"a":[1,2]}'
    assert user_error(proc) is None


def test_a_refusal_is_its_one_line(tmp_path):
    proc = run_module("data.check", [str(tmp_path / "missing.h5")])
    assert proc.returncode == 2
    message = user_error(proc)
    assert message is not None and not message.startswith("hespot:")
    assert "missing.h5" in message and "\n" not in message
    failed = subprocess.CompletedProcess([], 1, "", "Traceback ...\nValueError: bug\n")
    assert user_error(failed) is None


def _state(pid: int) -> str | None:
    """The process's state letter (``Z`` a zombie), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_child_dies_with_its_parent(tmp_path):
    """A parent SIGKILLed while its child runs leaves no child running on."""
    pid_file = tmp_path / "child.pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); " \
              "time.sleep(60)"
    parent = subprocess.Popen(
        [sys.executable, "-c", "from data.child import run_module; "
         f"run_module('timeit', ['-n', '1', '-r', '1', {sleeper!r}])"],
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert _state(child) not in (None, "Z")
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _state(child) not in (None, "Z") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _state(child) in (None, "Z")
    finally:
        parent.kill()
        parent.wait()
