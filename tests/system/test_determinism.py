"""Determinism (issue 18): the same command twice gives byte-identical outputs:
``submission.csv``, ``predictions.h5ad`` and the scores of ``report.json`` (regress run
twice on the same store), and ``predictions.csv``/``.h5ad`` of ``hespot predict``."""

from __future__ import annotations

import json

import regress.fit
import regress.predict
import regress.run
import regress.submit


def _submit(h5, out, dest):
    dest.mkdir()
    assert regress.submit.main(["--h5", str(h5), "--out", str(out), "--quiet",
                                "--submission", str(dest / "submission.csv"),
                                "--h5ad", str(dest / "predictions.h5ad")]) == 0
    return dest


def test_submit_twice_is_byte_identical(synthetic_h5, tiny_regressed, tmp_path):
    a = _submit(synthetic_h5, tiny_regressed, tmp_path / "a")
    b = _submit(synthetic_h5, tiny_regressed, tmp_path / "b")
    for name in ("submission.csv", "submission.json", "predictions.h5ad"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def _scores(report: dict) -> dict:
    return {m: {k: v for k, v in e.items() if k in ("per_slide", "per_type", "mean",
                                                     "scores")}
            for m, e in report["models"].items()}


def test_regress_twice_gives_the_same_scores(synthetic_h5, tiny_store, tmp_path):
    reports = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert regress.run.main(["--h5", str(synthetic_h5), "--store", str(tiny_store),
                                 "--out", str(out), "--features", "tiny_random",
                                 "--models", "ridge,lgbm", "--targets", "spot_rank",
                                 "--quiet"]) == 0
        reports.append(json.loads((out / "report.json").read_text()))
    scores = _scores(reports[0])
    assert len(scores) == 3 and all(e["per_slide"] and e["mean"] for e in scores.values())
    assert scores == _scores(reports[1])


def test_predict_twice_is_byte_identical(synthetic_h5, tiny_store, tiny_regressed, tmp_path):
    model = tmp_path / "model"
    assert regress.fit.main(["--h5", str(synthetic_h5), "--store", str(tiny_store), "--out",
                             str(tiny_regressed), "--model-dir", str(model), "--quiet"]) == 0
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run
        assert regress.predict.main(["--h5", str(synthetic_h5), "--model", str(model),
                                     "--store", str(tiny_store), "--out", str(out),
                                     "--quiet"]) == 0
        outs.append(out)
    for name in ("predictions.csv", "predictions.h5ad"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes(), name
