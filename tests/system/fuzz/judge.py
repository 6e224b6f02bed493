"""The verdict on one case (the rule: :mod:`harness`), and the checks of what a command
that exits 0 wrote. A refusal is judged by the fault suite's own rule
(``tests.system.faults.refused``: exit 2, one ``hespot:`` line after hespot's logged lines only, no
traceback, nothing written), temporaries by ``tests.system.fault_outputs.temporaries``."""

from __future__ import annotations

import json
import logging
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from tests.system.fault_outputs import temporaries
from tests.system.faults import refused
from tests.system.fuzz.harness import MAX_RSS_GROWTH_MB, Case, Outcome, listing

#: verdicts that are failures, in the order they are looked for
FAILURES = ("hang", "traceback", "memory", "leftover", "unclear", "invalid")


def _h5_valid(folder: Path, out: str) -> str:
    from data.check import check_file

    quiet = logging.getLogger("tifffile")  # a damaged slide's warnings: not this process's
    level, quiet.level = quiet.level, logging.CRITICAL
    try:
        problems = check_file(str(folder / out), with_background=False).problems
    finally:
        quiet.setLevel(level)
    errors = [str(p) for p in problems if p.level == "error"]
    return f"the output fails hespot check: {errors[0][:300]}" if errors else ""


def _store_valid(folder: Path, out: str) -> str:
    """Every slide group of the written store is finished and finite."""
    from data.store import FeatureSpec, open_store, read_array

    store = open_store(folder / out)
    for backbone in store.group_keys():
        for slide in store[backbone].group_keys():
            X = read_array(store, str(folder / out), FeatureSpec(backbone), slide)
            if not np.isfinite(X).all():
                return f"{backbone}/{slide}: non-finite features"
    return ""


def _table_values(path: Path, skip: int) -> str:
    frame = pd.read_csv(path)
    values = frame.iloc[:, skip:].to_numpy(float) if len(frame.columns) > skip else None
    if values is None or not len(frame):
        return f"{path.name}: no values"
    if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
        return f"{path.name}: values outside [0, 1] or not finite"
    return ""


def _regress_valid(folder: Path, out: str) -> str:
    report = json.loads((folder / out / "report.json").read_text())
    if not isinstance(report.get("models"), dict) or not report["models"]:
        return "report.json without models"
    for csv in (folder / out / "predictions").glob("*/test.csv"):
        frame = pd.read_csv(csv)
        if not np.isfinite(frame.select_dtypes("number").to_numpy(float)).all():
            return f"{csv}: non-finite predictions"
    return ""


def _submit_valid(folder: Path, out: str) -> str:
    return _table_values(folder / out, 1)


def _predict_valid(folder: Path, out: str) -> str:
    frame = pd.read_csv(folder / out / "predictions.csv")
    types = [c for c in frame.columns if c not in ("slide", "spot_id", "x", "y", "ID")]
    values = frame[types].to_numpy(float)
    if not len(frame) or not np.isfinite(values).all():
        return "predictions.csv: no rows or non-finite values"
    return "" if (folder / out / "predictions.h5ad").is_file() else "no predictions.h5ad"


VALIDATORS: dict[str, Callable[[Path, str], str]] = {
    "none": lambda folder, out: "",
    "h5": _h5_valid,
    "store": _store_valid,
    "regress": _regress_valid,
    "submit": _submit_valid,
    "predict": _predict_valid,
}


def _check_listed(case: Case, outcome: Outcome) -> bool:
    """``hespot check``'s refusal: exit 1, the problems listed, the last line counting
    at least one error, no traceback."""
    last = (outcome.stdout.strip().splitlines() or [""])[-1]
    m = re.search(r": (\d+) errors, \d+ warnings$", last)
    return (case.argv[0] == "check" and outcome.rc == 1 and m is not None
            and int(m[1]) > 0 and "Traceback" not in outcome.stderr)


def _leftovers(case: Case, folder: Path, before: set[str], wrote: bool) -> list[str]:
    new = listing(folder) - before
    allowed = case.outputs if wrote else ()
    bad = [p for p in new if not any(p == o or p.startswith(o + "/") for o in allowed)]
    return sorted(set(bad) | (set(temporaries(folder)) - before))


def judge(case: Case, folder: Path, before: set[str], outcome: Outcome) -> tuple[str, str]:
    """(verdict, why): ``pass`` or one of :data:`FAILURES`."""
    err = outcome.stderr
    if outcome.rc is None:
        return "hang", f"still running after {case.timeout:.0f} s"
    if "Traceback" in err or outcome.rc not in (0, 1, 2) or "fuzz: " in err:
        return "traceback", f"exit {outcome.rc}: {err.strip()[-1500:]}"
    if outcome.rss_growth_mb > MAX_RSS_GROWTH_MB:
        return "memory", f"resident memory grew by {outcome.rss_growth_mb:.0f} MB"
    wrote = outcome.rc == 0
    left = _leftovers(case, folder, before, wrote)
    if left:
        return "leftover", f"exit {outcome.rc}, left {left[:5]}"
    if outcome.rc == 0:
        try:
            why = VALIDATORS[case.valid](folder, case.outputs[0]) if case.outputs else ""
        except Exception as exc:  # noqa: BLE001 - an output that does not read back
            why = f"{type(exc).__name__}: {exc}"[:400]
        return ("invalid", why) if why else ("pass", "")
    if _check_listed(case, outcome):
        return "pass", ""
    result = subprocess.CompletedProcess(case.argv, outcome.rc, outcome.stdout, err)
    outputs = [folder / o for o in case.outputs if o not in before] or [folder / "nothing"]
    last = (err.strip().splitlines() or [""])[-1]
    if not all(refused(result, o) for o in outputs):
        return "unclear", f"exit {outcome.rc}: {err.strip()[-600:]}"
    if not _names_a_file(last, folder):
        return "unclear", f"the message names no file of the case: {last[:300]}"
    return "pass", ""


def _names_a_file(line: str, folder: Path) -> bool:
    """Whether a refusal names a file of the case: one under its folder, or one its
    inputs name (a manifest's path to a file that is not there)."""
    if str(folder) in line:
        return True
    m = re.match(r"hespot: (?:error|warning): (.+?)(?:, slide .+?)?(?:, field .+?)?: expected",
                 line)
    if not m:
        return False
    texts = (p.read_bytes() for p in folder.rglob("*") if p.is_file() and p.suffix in
             (".csv", ".tsv", ".json", ".txt") and p.stat().st_size < 2**22)
    name = m[1].encode()
    return any(name in text or Path(m[1]).name.encode() in text for text in texts)

