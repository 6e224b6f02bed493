"""submit.py's pieces: the submission checks, IDs, ensemble weights, model choice (and the
one ranking of models it uses, regress.results.rank_models).
(Runs of ``regress.submit.main`` on real predictions: test_regress_pipeline.py.)"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from data.errors import DataError
from data.h5 import CanonicalH5
from regress.results import rank_models
from regress.submit import best_model, check_submission, combine, ensemble_weights, expected_ids
from regress.targets import rank_scale

TYPES = ["C1", "C2", "C3"]
IDS = [f"S_7_{i}" for i in range(6)]


def _valid() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.concat([pd.DataFrame({"ID": IDS}),
                      pd.DataFrame(rng.random((len(IDS), len(TYPES))), columns=TYPES)], axis=1)


def _check(df: pd.DataFrame):
    return check_submission(df, IDS, TYPES, "submission.csv")


def test_valid_submission_passes():
    assert _check(_valid()) == []


def test_rejects_missing_ids():
    problems = _check(_valid().drop(index=2))
    assert [p.field for p in problems] == ["ID"]
    assert "1 missing" in problems[0].found and "S_7_2" in problems[0].found
    assert problems[0].file == "submission.csv"


def test_rejects_unexpected_ids():
    df = _valid()
    df.loc[0, "ID"] = "S_8_0"
    found = " ".join(p.found for p in _check(df))
    assert "1 missing" in found and "1 unexpected" in found and "S_8_0" in found


def test_rejects_duplicate_ids():
    df = _valid()
    problems = _check(pd.concat([df, df.iloc[[4]]], ignore_index=True))
    assert [p.field for p in problems] == ["ID"]
    assert "1 duplicated" in problems[0].found and "S_7_4" in problems[0].found


def test_rejects_nan():
    df = _valid()
    df.loc[3, "C2"] = np.nan
    problems = _check(df)
    assert [p.field for p in problems] == ["values"]
    assert problems[0].found == "1 NaN"


def test_rejects_values_outside_unit_interval():
    df = _valid()
    df.loc[1, "C3"] = 1.5
    problems = _check(df)
    assert [p.field for p in problems] == ["values"]
    assert "1.5" in problems[0].found


def test_rejects_missing_column():
    problems = _check(_valid().drop(columns=["C2"]))
    assert [p.field for p in problems] == ["columns"]
    assert "missing ['C2']" in problems[0].found


def test_rejects_extra_column():
    df = _valid()
    df["C4"] = 0.5
    problems = _check(df)
    assert [p.field for p in problems] == ["columns"]
    assert "extra ['C4']" in problems[0].found


def test_rejects_columns_in_another_order():
    problems = _check(_valid()[["ID", "C2", "C1", "C3"]])
    assert [p.field for p in problems] == ["columns"]
    assert problems[0].found == "another order"


def test_rejects_missing_id_column():
    problems = _check(_valid().rename(columns={"ID": "id"}))
    assert [p.field for p in problems] == ["columns"]


def test_every_problem_is_reported():
    df = _valid().drop(index=0)
    df.loc[2, "C1"] = np.nan
    df = df.rename(columns={"C3": "c3"})
    assert sorted(p.field for p in _check(df)) == ["ID", "columns", "values"]


def test_expected_ids_every_test_row_in_order(synthetic_h5):
    with CanonicalH5(synthetic_h5) as h5:
        ids = expected_ids(h5)
        n = len(h5.spots("S_4"))
    assert ids == [f"S_4_{i}" for i in range(n)]


def _report(**spot):
    """Entries ``name: spot`` (mean per-type 0) or ``name: (spot, type)``."""
    return {"models": {name: {"kind": name.split("-")[0], "target": name.split("-")[1],
                              "mean": {"spot": s, "type": 0.0} if not isinstance(s, tuple)
                              else {"spot": s[0], "type": s[1]}}
                       for name, s in spot.items()}}


def test_ensemble_weights_from_gain_over_constant():
    report = _report(**{"constant-spot_rank": 0.2, "ridge-spot_rank": 0.5,
                        "lgbm-spot_rank": 0.3, "constant-raw": 0.4, "lgbm-raw": 0.1,
                        "lgbm-type_rank": 0.1})
    np.testing.assert_allclose(ensemble_weights(report, ["ridge-spot_rank", "lgbm-spot_rank"]),
                               [0.75, 0.25])
    # each model is compared with the constant of its own target; below it: no gain
    np.testing.assert_allclose(ensemble_weights(report, ["ridge-spot_rank", "lgbm-raw"]),
                               [1.0, 0.0])
    # no constant of that target: baseline 0
    np.testing.assert_allclose(ensemble_weights(report, ["ridge-spot_rank", "lgbm-type_rank"]),
                               [0.75, 0.25])
    # no gain anywhere: equal weights
    bad = _report(**{"constant-spot_rank": 0.6, "ridge-spot_rank": 0.5,
                     "lgbm-spot_rank": 0.3})
    np.testing.assert_allclose(ensemble_weights(bad, ["ridge-spot_rank", "lgbm-spot_rank"]),
                               [0.5, 0.5])
    with pytest.raises(DataError, match="no such model"):
        ensemble_weights(report, ["svm-spot_rank"])


def test_best_model_skips_the_constant():
    report = _report(**{"constant-spot_rank": 0.9, "ridge-spot_rank": 0.5,
                        "lgbm-spot_rank": 0.6})
    assert best_model(report) == "lgbm-spot_rank"
    with pytest.raises(DataError, match="at least one fitted model"):
        best_model(_report(**{"constant-spot_rank": 0.9}))


def test_rank_models_orders_by_spot_then_type_then_name():
    report = _report(**{"ridge-spot_rank": (0.5, 0.1), "lgbm-spot_rank": (0.5, 0.3),
                        "lgbm-raw": (0.5, 0.3), "constant-spot_rank": (0.6, 0.0),
                        "ridge-raw": (0.2, 0.9), "ridge-type_rank": (float("nan"), 0.5)})
    want = ["constant-spot_rank", "lgbm-raw", "lgbm-spot_rank", "ridge-spot_rank",
            "ridge-raw", "ridge-type_rank"]   # ties: per type, then name; NaN last
    assert rank_models(report) == want
    assert rank_models(report, include_constant=False) == want[1:]
    # the order does not depend on the order of report.json's entries
    shuffled = {"models": dict(reversed(report["models"].items()))}
    assert rank_models(shuffled) == want
    assert best_model(shuffled) == best_model(report) == "lgbm-raw"
    assert rank_models({"models": {}}) == [] and rank_models({}) == []


def test_combine_one_model_clips_and_ensemble_ranks():
    a = pd.DataFrame([[-0.2, 0.5, 1.3], [0.1, 0.3, 0.2]], columns=TYPES)
    b = pd.DataFrame([[3.0, 2.0, 1.0], [1.0, 2.0, 3.0]], columns=TYPES)
    np.testing.assert_allclose(combine([a], np.ones(1), TYPES), [[0, 0.5, 1], [0.1, 0.3, 0.2]])
    got = combine([a, b], np.array([0.5, 0.5]), TYPES)
    want = 0.5 * rank_scale(a.to_numpy(), 1) + 0.5 * rank_scale(b.to_numpy(), 1)
    np.testing.assert_allclose(got, want)
    assert got.min() >= 0 and got.max() <= 1
