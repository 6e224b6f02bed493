"""Ensemble weights learned on out-of-fold predictions (regress.ensemble): noise gets no
weight, complementary models are blended, the nested LOSO score never learns from the
slide it scores, and submit.py records the learned weights and their nested scores."""

from __future__ import annotations

import json
from math import comb

import numpy as np
import pandas as pd
import pytest

import regress.submit
from data.errors import ConfigError, DataError
from data.h5 import CanonicalH5
from regress.ensemble import (
    combine,
    learn_ensemble,
    learn_weights,
    learned_weights,
    simplex_grid,
    slide_blocks,
)
from regress.metrics import spearman_per_spot
from regress.orders import score_oof
from regress.results import (
    LosoResult,
    model_entry,
    predictions_frame,
    update_report,
    write_predictions,
)

TYPES = [f"c{j}" for j in range(12)]
SLIDES = ["A", "B", "C", "D"]


def _truth(n=50, seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s: rng.dirichlet(np.full(len(TYPES), 0.7), size=n) for s in SLIDES}


def _frame(preds: dict[str, np.ndarray]) -> pd.DataFrame:
    return pd.concat([pd.concat([pd.DataFrame({"slide": s, "row": np.arange(len(P))}),
                                 pd.DataFrame(P, columns=TYPES)], axis=1)
                      for s, P in preds.items()], ignore_index=True)


def _noisy(truth, sd, seed) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {s: Y + rng.normal(0, sd, Y.shape) for s, Y in truth.items()}


def _blend_score(frames, truth, w) -> float:
    return score_oof(frames, None, truth, TYPES,
                     lambda rows: combine(rows, np.asarray(w, float), TYPES))["mean"]["spot"]


def test_simplex_grid():
    for n, steps in ((2, 20), (3, 20), (4, 5)):
        grid = simplex_grid(n, steps)
        assert len(grid) == comb(steps + n - 1, n - 1)
        np.testing.assert_allclose(grid.sum(axis=1), 1.0)
        assert grid.min() >= 0 and len(np.unique(grid, axis=0)) == len(grid)


def test_pure_noise_gets_no_weight():
    truth = _truth()
    rng = np.random.default_rng(5)
    good = _frame(_noisy(truth, 0.05, 1))
    noise = _frame({s: rng.random(Y.shape) for s, Y in truth.items()})
    w = learn_weights(slide_blocks([good, noise], truth, TYPES))
    assert w[1] <= 0.05 and w.sum() == pytest.approx(1.0)
    w = learn_weights(slide_blocks([noise, good, noise], truth, TYPES))
    assert w[1] >= 0.9


def test_complementary_models_blend_beats_both():
    truth = _truth()
    frames = [_frame(_noisy(truth, 0.06, 1)), _frame(_noisy(truth, 0.08, 2))]
    w = learn_weights(slide_blocks(frames, truth, TYPES))
    assert 0.2 < w[1] < w[0] < 0.8
    blend = _blend_score(frames, truth, w)
    assert blend > max(_blend_score(frames, truth, [1, 0]),
                       _blend_score(frames, truth, [0, 1])) + 0.01


def test_greedy_beyond_three_models():
    truth = _truth()
    rng = np.random.default_rng(9)
    frames = [_frame(_noisy(truth, 0.06, 1)), _frame(_noisy(truth, 0.08, 2)),
              *(_frame({s: rng.random(Y.shape) for s, Y in truth.items()}) for _ in range(2))]
    w = learn_weights(slide_blocks(frames, truth, TYPES))
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    assert w[2:].sum() <= 0.1 and min(w[:2]) > 0.2


def _opposed(truth):
    """Model 0 is right on slide A and noise elsewhere; model 1 the reverse."""
    rng = np.random.default_rng(3)
    m0 = {s: Y if s == "A" else rng.random(Y.shape) for s, Y in truth.items()}
    m1 = {s: rng.random(Y.shape) if s == "A" else Y for s, Y in truth.items()}
    return [_frame(m0), _frame(m1)]


def test_nested_scores_never_learn_from_the_scored_slide():
    truth = _truth()
    frames = _opposed(truth)
    seen = []

    def spy(blocks):
        seen.append(sorted(blocks))
        return learn_weights(blocks)

    got = learn_ensemble(frames, truth, TYPES, learn=spy)
    # one learning per scored slide, without it; then all slides for the test predictions
    assert seen == [[s for s in SLIDES if s != held] for held in SLIDES] + [SLIDES]
    nested = got["nested"]["per_slide"]
    assert set(nested) == set(SLIDES)
    # A is scored with the weights the other slides prefer: model 1, noise on A
    assert nested["A"]["weights"][1] >= 0.95
    assert abs(nested["A"]["spot"]) < 0.2
    # learning with A's rows would have given A weight: the leak this rules out
    assert got["weights"][0] > 0
    leaky = _blend_score([f[f["slide"] == "A"] for f in frames], truth, got["weights"])
    assert leaky > nested["A"]["spot"] + 0.1, (leaky, nested["A"])
    for s in "BCD":
        assert nested[s]["spot"] > 0.8  # the other slides (A among them) favour model 1
    assert got["nested"]["mean"]["spot"] == pytest.approx(
        np.mean([v["spot"] for v in nested.values()]))


def test_scored_slide_rows_do_not_change_its_weights():
    truth = _truth()
    frames = [_frame(_noisy(truth, 0.06, 1)), _frame(_noisy(truth, 0.08, 2))]
    before = learn_ensemble(frames, truth, TYPES)["nested"]["per_slide"]
    changed = [f.copy() for f in frames]
    on_b = changed[1]["slide"] == "B"
    changed[1].loc[on_b, TYPES] = truth["B"]  # model 1 perfect on B
    after = learn_ensemble(changed, truth, TYPES)["nested"]["per_slide"]
    assert after["B"]["weights"] == before["B"]["weights"]
    assert after["B"]["spot"] > before["B"]["spot"]
    assert any(after[s]["weights"] != before[s]["weights"] for s in "ACD")


def test_learned_falls_back_to_score_with_one_shared_slide(caplog):
    truth = _truth()
    frames = [_frame({"A": truth["A"]}), _frame({"A": truth["A"], "B": truth["B"]})]
    with caplog.at_level("WARNING", "hespot"):
        assert learned_weights("learned", False, (frames, None, truth), TYPES) is None
    assert "weighting by score instead" in caplog.text
    full = [_frame(truth), _frame(_noisy(truth, 0.05, 1))]
    assert learned_weights("score", False, (full, None, truth), TYPES) is None
    assert learned_weights("learned", True, (full, None, truth), TYPES) is None
    assert learned_weights("learned", False, (full, None, truth), TYPES)["weights"][0] > 0.5
    with pytest.raises(ConfigError, match="weighting must be one of"):
        learned_weights("best", False, (full, None, truth), TYPES)


def test_nested_needs_two_shared_slides():
    truth = _truth()
    frames = [_frame({"A": truth["A"]}), _frame({"A": truth["A"], "B": truth["B"]})]
    with pytest.raises(DataError, match="two or more held-out slides"):
        learn_ensemble(frames, truth, TYPES)


# ---- through submit.py ---------------------------------------------------------------------
@pytest.fixture
def fake_out(synthetic_h5, tmp_path):
    """An OUT folder with two spot_rank models' predictions (of the truth plus noise) and
    the constant baseline, written through the result contract."""
    with CanonicalH5(synthetic_h5) as h5:
        tables = {s: h5.spots(s) for s in h5.train_slides + h5.test_slides}
        train, test_slides, types = h5.train_slides, h5.test_slides, list(h5.cell_types)
    xy = {s: np.c_[t.x, t.y] for s, t in tables.items()}
    ids = {s: t.spot_ids for s, t in tables.items()}
    rng = np.random.default_rng(0)
    entries = {}
    for name, sd in (("ridge-spot_rank", 0.03), ("lgbm-spot_rank", 0.05),
                     ("constant-spot_rank", None)):
        res = LosoResult()
        for s in train:
            Y = tables[s].Y
            res.add_fold(s, Y + rng.normal(0, sd, Y.shape) if sd else
                         np.tile(Y.mean(0), (len(Y), 1)), Y)
        test = {s: rng.random((len(tables[s]), len(types))) for s in test_slides}
        write_predictions(tmp_path, name, predictions_frame(res.oof, types, xy, ids),
                          predictions_frame(test, types, xy, ids))
        entries[name] = model_entry(res, types, name.split("-")[0], "spot_rank", {})
    update_report(tmp_path, entries)
    return tmp_path


def test_submit_learned_weights_and_nested_scores(fake_out, synthetic_h5):
    models = "ridge-spot_rank,lgbm-spot_rank"
    assert regress.submit.main(["--h5", str(synthetic_h5), "--out", str(fake_out), "--quiet",
                                "--models", models, "--weighting", "learned"]) == 0
    record = json.loads((fake_out / "submission.json").read_text())
    assert record["weighting"] == "learned"
    assert sum(record["weights"]) == pytest.approx(1.0)
    nested = record["nested"]
    assert set(nested["per_slide"]) == {"S_1", "S_2", "S_3"}
    for s in nested["per_slide"].values():
        assert set(s) == {"spot", "type", "weights"} and len(s["weights"]) == 2
    # learned is the default; the score weighting records no nested scores
    assert regress.submit.main(["--h5", str(synthetic_h5), "--out", str(fake_out), "--quiet",
                                "--models", models, "--submission",
                                str(fake_out / "default.csv")]) == 0
    assert json.loads((fake_out / "default.json").read_text()) == record
    assert regress.submit.main(["--h5", str(synthetic_h5), "--out", str(fake_out), "--quiet",
                                "--models", models, "--weighting", "score"]) == 0
    record = json.loads((fake_out / "submission.json").read_text())
    assert record["weighting"] == "score" and record["nested"] is None


def test_blocks_follow_rows_not_file_order():
    truth = _truth()
    frame = _frame(_noisy(truth, 0.05, 1))
    shuffled = frame.sample(frac=1.0, random_state=0)
    a, b = slide_blocks([frame], truth, TYPES), slide_blocks([shuffled], truth, TYPES)
    for s in SLIDES:
        np.testing.assert_array_equal(a[s].ranks, b[s].ranks)
        assert a[s].score(np.ones(1)) == pytest.approx(
            spearman_per_spot(truth[s], frame[frame["slide"] == s][TYPES].to_numpy()).mean())
