"""The fault suite's fast part (``make faults`` runs it whole, with kills at 20, 50 and
80 % of each step): every bad input refused, each step killed once at half its time and
run again to the uninterrupted outputs, two runs at once kept apart."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fault_suite  # noqa: E402


def test_fault_suite_fast_part(tmp_path):
    lines: list[str] = []
    counts = fault_suite.run_suite(tmp_path, fractions=(0.5,), log=lines.append)
    assert counts["bad_inputs_refused"][1] >= 10, counts
    assert all(n == m for n, m in counts.values()), "\n".join(lines)
    assert fault_suite.summary(counts).startswith("faults bad_inputs_refused=")
