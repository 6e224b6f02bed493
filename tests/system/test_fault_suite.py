"""The whole fault suite (issue 18), one test per case, each marked ``faults``: ``make
faults`` runs them (``pytest -m faults``); a plain ``pytest`` leaves them out
(``tests/conftest.py``) and runs their fast part (``test_faults.py``). What each kind of
case asks: :mod:`tests.system.faults`. The last line (``tests/system/conftest.py``):
``faults bad_inputs_refused=10/10 kills_survived=21/21 concurrent_safe=4/4``."""

from __future__ import annotations

import pytest

from tests.system.faults import (
    CONCURRENT,
    FRACTIONS,
    TWICE,
    bad_input_cases,
    bad_input_names,
    default_steps,
    kill_case,
    kill_points,
)

STEPS = default_steps()
KILLS = kill_points(STEPS, FRACTIONS)


@pytest.mark.faults("bad_inputs_refused")
@pytest.mark.parametrize("case", bad_input_names())
def test_bad_input_refused(case, fault_root, fault_base):
    """Exit 2 with one ``hespot: ...`` line, no traceback, nothing written."""
    assert bad_input_cases(fault_root, fault_base)[case](), f"{case} not refused cleanly"


@pytest.mark.faults("kills_survived")
@pytest.mark.parametrize("step, fraction", KILLS,
                         ids=[f"{s}-at-{round(f * 100)}pct" for s, f in KILLS])  # -k: no @%
def test_kill_survived(step, fraction, fault_steps):
    """SIGKILLed at ``fraction`` of its uninterrupted time: nothing it started runs on,
    nothing is partial under a final name; run again, it gives the uninterrupted run's
    outputs and leaves no temporary."""
    fault_steps.need([step])
    assert fault_steps.killed_then_rerun(step, fraction), \
        fault_steps.why[kill_case(step, fraction)]


@pytest.mark.faults("concurrent_safe")
@pytest.mark.parametrize("step", CONCURRENT)
def test_two_runs_at_once_on_one_output(step, fault_steps):
    """Not both write: one refuses naming the holder (or they run one after the other);
    the output then equals the uninterrupted run's."""
    fault_steps.need([step])
    assert fault_steps.concurrent(step)


@pytest.mark.faults("concurrent_safe")
@pytest.mark.parametrize("step", [s for s in TWICE if s in STEPS])
def test_two_runs_at_once_into_fresh_outputs(step, fault_steps):
    """Both succeed, each with the uninterrupted in-process run's outputs."""
    fault_steps.need([step])
    assert fault_steps.twice_fresh(step), fault_steps.why[f"{step} x2, fresh outputs"]
