"""``make fuzz``'s quick run in ``make test`` (issue 28): a few hundred generated
corruptions across every kind of input, each run through the command that reads it, none
breaking the rule; and the rule itself: a traceback, a hang, a leftover, a refusal in
several lines or naming no file, and an invalid output are each caught."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from tests.system.fuzz.harness import Case, Outcome, listing, run_forked  # noqa: E402
from tests.system.fuzz.judge import judge  # noqa: E402

pytestmark = pytest.mark.fuzz


def test_a_quick_fuzz_run_breaks_no_rule(tmp_path):
    """200 cases, seed 1, over the ten kinds of input (make fuzz: 2,000 or more)."""
    proc = subprocess.run([sys.executable, "-m", "tests.system.fuzz.fuzz", "--cases", "200",
                           "--seed", "1", "--failures", str(tmp_path / "failures")], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    m = re.fullmatch(r"fuzz cases=(\d+) passed=(\d+) tracebacks=0 hangs=0 leftovers=0", last)
    assert proc.returncode == 0 and m and m[1] == m[2] and int(m[1]) >= 200, \
        proc.stdout[-4000:] + proc.stderr[-2000:]
    kinds = re.findall(r"^  (\w+) +cases=\d+", proc.stdout, re.M)
    assert len(kinds) >= 7, proc.stdout[-2000:]


def _case(argv, outputs=("out.h5",), valid="h5", timeout=60.0) -> Case:
    return Case("test", 0, 0, tuple(argv), outputs, valid, ("none",), timeout)


def _judged(tmp_path, case: Case, prepare=None) -> tuple[str, str]:
    folder = tmp_path / "case"
    folder.mkdir()
    if prepare:
        prepare(folder)
    before = listing(folder)
    outcome = run_forked(case, folder, (tmp_path / "out.txt", tmp_path / "err.txt"))
    return judge(case, folder, before, outcome)


def test_the_rule_passes_a_refusal_naming_the_file(tmp_path):
    verdict, why = _judged(tmp_path, _case(["check", "{case}/missing.h5"], ()))
    assert verdict == "pass", why


def test_the_rule_catches_a_traceback_and_a_crash(tmp_path):
    case = _case(["check", "{case}/in.h5"], ())
    folder = tmp_path / "case"
    folder.mkdir()
    traceback = Outcome(1, "", "Traceback (most recent call last):\nKeyError: 'x'\n", 0.1)
    crash = Outcome(-11, "", "", 0.1)
    assert judge(case, folder, set(), traceback)[0] == "traceback"
    assert judge(case, folder, set(), crash)[0] == "traceback"


def test_the_rule_catches_a_hang(tmp_path, synthetic_h5):
    """A command past its time limit is killed with its process group: a hang."""
    case = _case(["check", str(synthetic_h5)], (), "none", timeout=0.01)
    assert _judged(tmp_path, case)[0] == "hang"


@pytest.mark.parametrize("stderr, left, verdict", [
    ("hespot: error: {case}/in.h5: expected x; found y. Fix: z\n", [], "pass"),
    ("hespot: error: somewhere else: expected x\n", [], "unclear"),
    ("hespot: error: {case}/in.h5: a\nerror: {case}/in.h5: b\n", [], "unclear"),
    ("UserWarning: noise\nhespot: error: {case}/in.h5: a\n", [], "unclear"),
    ("hespot: error: {case}/in.h5: a\n", [".out.h5.123-abcd.tmp.h5"], "leftover"),
    ("hespot: error: {case}/in.h5: a\n", ["out.h5"], "leftover"),
])
def test_the_rule_on_refusals(tmp_path, stderr, left, verdict):
    case = _case(["check", "{case}/in.h5"])
    folder = tmp_path / "case"
    folder.mkdir()
    for name in left:
        (folder / name).write_text("half")
    outcome = Outcome(2, "", stderr.replace("{case}", str(folder)), 0.1)
    assert judge(case, folder, set(), outcome)[0] == verdict


def test_the_rule_checks_what_exit_0_wrote(tmp_path):
    case = _case(["import-table"])
    folder = tmp_path / "case"
    folder.mkdir()
    (folder / "out.h5").write_bytes(b"not hdf5")
    assert judge(case, folder, set(), Outcome(0, "", "", 0.1))[0] == "invalid"
