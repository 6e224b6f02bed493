"""The maps of a stage-2 run's test slides (``submit``): the chosen abundance model's
test predictions, their intervals and the slides' OOD verdicts, read from what
``hespot regress`` wrote (:mod:`regress.abundance_run`), beside the submitted rank scores.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import DataError, Problem
from regress.abundance_run import OOD_ID, abundance_id
from regress.bundle_meta import SAFE_NAME, StructureError, check_calibration, finite_number
from regress.intervals import Calibration, intervals
from regress.ood import warning_line
from regress.outputs.maps import Maps
from regress.results import read_predictions

log = logging.getLogger("hespot")


def units(simplex: bool) -> str:
    """What one abundance is, in words."""
    if simplex:
        return ("proportion of the spot: each spot's abundances sum to 1, on the training "
                "targets' scale")
    return "the training targets' scale (non-negative; the training rows do not sum to 1)"


def aligned(out: Path, model_id: str, frame: pd.DataFrame, columns: Sequence[str]
            ) -> np.ndarray:
    """float (len(frame), len(columns)): ``predictions/<model_id>/test.csv`` in the rows
    of ``frame`` (matched on slide and row).

    Raises:
        DataError: a spot of ``frame`` that the file does not hold.
    """
    found = read_predictions(out, model_id, "test")
    found["slide"] = found["slide"].astype(str)
    label = str(out / "predictions" / model_id / "test.csv")
    missing = [c for c in columns if c not in found.columns]
    if missing or found.duplicated(["slide", "row"]).any():
        raise DataError(Problem(label, "", "columns" if missing else "rows",
                                f"columns slide, row, {', '.join(columns)[:200]}, one row a spot",
                                f"missing {missing[:5]}" if missing else "repeated spots",
                                "run `make regress` again"))
    keys = frame[["slide", "row"]].astype({"slide": str})
    merged = keys.merge(found, on=["slide", "row"], how="left")
    if merged[list(columns)].isna().any().any():
        raise DataError(Problem(label, "",
                                "rows", f"every test spot ({len(frame)})",
                                f"{int(merged[list(columns)[0]].isna().sum())} missing",
                                "run `make regress` again"))
    return merged[list(columns)].to_numpy(float)


def warn_flagged(slides: Mapping[str, Mapping]) -> None:
    """One warning line per flagged slide."""
    for slide, result in slides.items():
        if result.get("ood_flagged"):
            log.warning(warning_line(slide, result))


def _verdict(v: object) -> bool:
    """One slide's OOD verdict as :func:`regress.ood.verdict` makes it."""
    return isinstance(v, dict) and finite_number(v.get("ood_score")) and finite_number(
        v.get("ood_threshold")) and isinstance(v.get("ood_flagged"), bool) and isinstance(
        v.get("flagged_spots"), int) and not isinstance(v.get("flagged_spots"), bool)


def check_section(out: Path, section: object, n_types: int) -> None:
    """``report.json``'s abundance section as ``hespot regress`` writes it: the chosen
    model, the calibration (bins x cell types), simplex, the test slides' OOD verdicts.

    Raises:
        DataError: naming report.json and the first field that is not.
    """
    try:
        if not isinstance(section, dict):
            raise StructureError("abundance", "an object", section)
        chosen, ood = section.get("chosen"), section.get("ood")
        test = ood.get("test") if isinstance(ood, dict) else None
        if not (isinstance(chosen, str) and SAFE_NAME.fullmatch(chosen)):
            raise StructureError("abundance.chosen", "a model name", chosen)
        if not isinstance(section.get("simplex"), bool):
            raise StructureError("abundance.simplex", "true or false", section.get("simplex"))
        check_calibration(section.get("calibration"), n_types)
        if not (isinstance(test, dict) and all(_verdict(v) for v in test.values())):
            raise StructureError("abundance.ood.test", "each test slide's OOD verdict", test)
    except StructureError as exc:
        raise DataError(Problem(str(out / "report.json"), "", exc.field, exc.expected,
                                exc.found, "run `hespot regress` again")) from exc


def run_maps(out: Path, report: Mapping, frame: pd.DataFrame, rank_score: np.ndarray,
             cell_types: Sequence[str], per_type: np.ndarray | None = None) -> Maps:
    """The maps of the test spots in ``frame``'s rows (slide, row, ...): abundances of
    the chosen model, intervals, OOD scores and verdicts; rank scores only, and one log
    line saying so, when ``report.json`` has no abundance section."""
    section = report.get("abundance")
    if not section:
        log.info("report.json has no abundance model: the maps hold rank scores only (run "
                 "`hespot regress` again for abundances)")
        return Maps(frame, cell_types, rank_score, per_type=per_type)
    check_section(out, section, len(cell_types))
    A = aligned(out, abundance_id(section["chosen"]), frame, cell_types)
    lower, upper = intervals(A, Calibration.from_dict(section["calibration"]))
    ood = aligned(out, OOD_ID, frame, ["ood_score"])[:, 0]
    slides = {s: v for s, v in section["ood"]["test"].items()
              if s in set(frame["slide"].astype(str))}
    warn_flagged(slides)
    return Maps(frame, cell_types, rank_score, A, lower, upper, per_type, ood, slides,
                units(section["simplex"]))
