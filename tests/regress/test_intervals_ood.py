"""The 90 % intervals (regress.intervals) and the out-of-distribution scores
(regress.ood) on generated data."""

from __future__ import annotations

import numpy as np
import pytest

from regress import intervals as iv
from regress import ood


def _slides(n_slides=5, n=200, t=6, noise=0.05, seed=0):
    """Held-out predictions and truths whose residuals are exchangeable across slides."""
    rng = np.random.default_rng(seed)
    preds, truth = {}, {}
    for k in range(n_slides):
        P = rng.dirichlet(np.ones(t), size=n)
        preds[f"s{k}"] = P
        truth[f"s{k}"] = np.clip(P + rng.normal(0, noise, P.shape) * np.sqrt(P + 0.01), 0, 1)
    return preds, truth


def test_intervals_hold_the_prediction_within_bounds():
    preds, truth = _slides()
    cal = iv.calibrate(preds, truth)
    P = preds["s0"]
    lower, upper = iv.intervals(P, cal)
    assert (lower >= 0).all() and (upper <= 1).all()
    assert (lower <= P).all() and (P <= upper).all()
    assert cal.lo.shape == (len(iv.BIN_QUANTILES) + 1, P.shape[1])
    again = iv.Calibration.from_dict(cal.as_dict())
    np.testing.assert_array_equal(iv.intervals(P, again)[1], upper)


def test_nested_coverage_is_near_the_level_on_exchangeable_slides():
    preds, truth = _slides()
    cover = iv.nested_coverage(preds, truth)
    values = [c["coverage"] for c in cover.values()]
    assert set(cover) == set(preds)
    assert 0.85 <= min(values) and max(values) <= 0.95, values


def test_a_slide_unlike_the_others_is_not_covered():
    preds, truth = _slides()
    truth["s0"] = np.clip(truth["s0"] + 0.2, 0, 1)     # shifted: its residuals are unlike
    cover = iv.nested_coverage(preds, truth)
    assert cover["s0"]["coverage"] < 0.5 < cover["s1"]["coverage"]


def test_weighted_quantile():
    v, w = np.array([3.0, 1.0, 2.0, 4.0]), np.ones(4)
    assert iv.weighted_quantile(v, w, 0.5) == 2.0
    assert iv.weighted_quantile(v, np.array([0, 0, 0, 1.0]), 0.1) == 4.0
    assert iv.weighted_quantile(np.array([]), np.array([]), 0.5) == 0.0


def _features(n, shift=0.0, seed=0):
    rng = np.random.default_rng(seed)
    basis = np.random.default_rng(99).normal(size=(4, 30))
    return rng.normal(size=(n, 4)) @ basis + rng.normal(0, 0.3, (n, 30)) + shift


def test_ood_reference_scores_training_spots_near_one_and_shifted_ones_higher():
    ref = ood.OODReference.fit(_features(400), n_components=4)
    train = ref.score(_features(400))
    assert 0.8 < np.median(train) < 1.2
    assert np.median(ref.score(_features(200, seed=1))) < 1.3
    assert np.median(ref.score(_features(200, shift=2.0, seed=2))) > 2.5
    back = ood.OODReference.from_arrays(ref.as_arrays())
    np.testing.assert_allclose(back.score(_features(10)), ref.score(_features(10)))


def test_ood_threshold_flags_only_a_far_slide():
    held = {f"s{k}": np.random.default_rng(k).normal(1.0, 0.1, 100) for k in range(4)}
    th = ood.calibrate(held)
    assert th.slide == pytest.approx(ood.SLIDE_MARGIN * max(np.median(v) for v in
                                                            held.values()))
    near = ood.verdict(np.full(50, 1.0), th)
    far = ood.verdict(np.full(50, 3.0), th)
    assert not near["ood_flagged"] and near["flagged_spots"] == 0
    assert far["ood_flagged"] and far["flagged_spots"] == 50
    assert set(far) == {"ood_score", "ood_threshold", "ood_flagged", "flagged_spots"}
    line = ood.warning_line("X9", far)
    assert "X9" in line and "3.00" in line and f"{th.slide:.2f}" in line and "\n" not in line
    held["far"] = np.full(100, 3.0)
    nested = ood.nested_flags(held)
    assert nested["far"]["ood_flagged"] and not nested["s0"]["ood_flagged"]
