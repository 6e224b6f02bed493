"""Issue 17's stage-2 levers (regress.levers, the recipe fields, RidgeLOSO's slide gain)
on small constructed slides: each does what it says, and the ablation counts its wins
against the recipe it adds the lever to."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from regress.features import SlideSet
from regress.levers import (
    VISIUM_PITCH_UM,
    gaussian_smooth,
    position_features,
    shrink_to_slide,
    um_per_px,
)
from regress.models import RidgeLOSO
from regress.recipes import RECIPES, Recipe, prepare, recipe_problem
from regress.spatial import neighbour_mean
from regress.tables import ablation_table, wins


def grid(n: int = 6, pitch: float = 50.0) -> np.ndarray:
    """float (n * n, 2) pixel positions of a square grid."""
    g = np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2)
    return g.astype(float) * pitch


def test_um_per_px_from_file_else_from_the_visium_pitch():
    xy = grid(pitch=50.0)
    assert um_per_px(xy, 0.5) == 0.5
    assert um_per_px(xy, None) == pytest.approx(VISIUM_PITCH_UM / 50.0)
    assert um_per_px(xy[:1], None) == 1.0


def test_position_features_shapes_and_invariance():
    xy = grid()
    f = position_features(xy, 2.0, "fourier")
    assert f.shape == (36, 16) and np.all(np.abs(f) <= 1)
    # shifting the slide does not change features measured from the centroid
    np.testing.assert_allclose(f, position_features(xy + 1000.0, 2.0, "fourier"), atol=1e-9)
    r = position_features(xy, 2.0, "radial")
    assert r.shape == (36, 3)
    rot = position_features(xy[:, ::-1] * [1, -1], 2.0, "radial")  # rotated 90 degrees
    np.testing.assert_allclose(r, rot, atol=1e-9)
    centre = np.argmin(r[:, 0])
    assert r[centre, 2] > r[0, 2]  # more spots around the centre than around a corner
    with pytest.raises(ValueError, match="fourier"):
        position_features(xy, 1.0, "polar")


def test_gaussian_smooth_averages_within_its_radius_only():
    xy = grid(n=5, pitch=100.0)                     # 100 px = 100 µm at scale 1
    P = np.zeros((25, 2))
    P[12] = 1.0                                      # the centre spot
    out = gaussian_smooth(P, xy, 1.0, sigma_um=50.0, weight=0.5)
    assert out[12, 0] == pytest.approx(0.5)          # its neighbours hold 0
    near = [7, 11, 13, 17]                           # 100 µm away: inside 3 sigma
    assert np.all(out[near, 0] > 0)
    assert out[0, 0] == 0                            # 283 µm away: outside 3 sigma
    # the weight of a neighbour falls with distance: 141 µm < 100 µm's
    assert 0 < out[6, 0] < out[7, 0]
    np.testing.assert_array_equal(gaussian_smooth(P, xy, 1.0, 50.0, 0.0), P)
    # a lone spot keeps its row
    lone = np.vstack([xy, [[10_000.0, 10_000.0]]])
    Q = np.vstack([P, [[0.3, 0.7]]])
    assert np.allclose(gaussian_smooth(Q, lone, 1.0, 50.0, 0.5)[-1], [0.3, 0.7])


def test_shrink_keeps_column_orders_and_moves_rows_towards_the_slide_mean():
    rng = np.random.default_rng(0)
    P = rng.random((30, 8))
    S = shrink_to_slide(P, 0.4)
    np.testing.assert_array_equal(rankdata(S, axis=0), rankdata(P, axis=0))
    m = P.mean(axis=0)
    assert np.all(np.linalg.norm(S - m, axis=1) < np.linalg.norm(P - m, axis=1))
    np.testing.assert_array_equal(shrink_to_slide(P, 0.0), P)


def test_slide_gain_amplifies_a_slides_distance_from_the_training_mean():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(80, 5))
    Y = X @ rng.normal(size=(5, 3)) + 0.1 * rng.normal(size=(80, 3))
    plain = RidgeLOSO(alphas=(1.0,)).fit(X, Y)
    gained = RidgeLOSO(alphas=(1.0,), slide_gain=3.0).fit(X, Y)
    Xs = X[:20] + 2.0                                # a slide unlike the training ones
    P, G = plain.predict(Xs), gained.predict(Xs)
    np.testing.assert_allclose(G - P, np.tile(2.0 * (P.mean(0) - Y.mean(0)), (20, 1)),
                               atol=1e-9)
    # within the slide, the deviations from its own mean are unchanged
    np.testing.assert_allclose(G - G.mean(0), P - P.mean(0), atol=1e-9)
    del plain.slide_gain                             # a model saved before the setting
    np.testing.assert_allclose(plain.predict(Xs), P)


def _slides() -> SlideSet:
    rng = np.random.default_rng(2)
    data = SlideSet(("a", "b", "c"), ["S1", "S2"], ["T"])
    for s in data.slides:
        xy = grid(n=4, pitch=40.0)
        data.parts["f"] = {**data.parts.get("f", {}), s: rng.normal(size=(16, 6))}
        data.xy[s], data.pixel_um[s] = xy, None
        data.spot_ids[s] = np.array([f"{s}_{i}" for i in range(16)])
    return data


def test_recipes_apply_position_smoothing_and_shrink():
    data = _slides()
    base, _ = prepare(data, Recipe("r", ("f",)))
    assert base.X["S1"].shape == (16, 6)
    pos, post = prepare(data, Recipe("r", ("f",), position="radial"))
    assert pos.X["S1"].shape == (16, 9) and post is None
    _, post = prepare(data, Recipe("r", ("f",), smooth_um=100.0, smooth_w=0.5, shrink=0.5))
    P = np.random.default_rng(3).random((16, 3))
    out = post("S1", P)
    scale = um_per_px(data.xy["S1"], None)
    expected = shrink_to_slide(gaussian_smooth(P, data.xy["S1"], scale, 100.0, 0.5), 0.5)
    np.testing.assert_allclose(out, expected)
    assert not np.allclose(out, P)


def test_a_wide_ring_of_context_follows_the_near_one_and_reads_the_spots_own_features():
    data = _slides()
    both, _ = prepare(data, Recipe("r", ("f",), context_k=2, context_wide=8,
                                   position="radial"))
    X, xy = data.parts["f"]["S1"], data.xy["S1"]
    assert both.X["S1"].shape == (16, 6 * 3 + 3)
    np.testing.assert_allclose(both.X["S1"][:, :6], X)
    np.testing.assert_allclose(both.X["S1"][:, 6:12], neighbour_mean(X, xy, 2))
    np.testing.assert_allclose(both.X["S1"][:, 12:18], neighbour_mean(X, xy, 8))
    wide, _ = prepare(data, Recipe("r", ("f",), context_wide=8))
    np.testing.assert_allclose(wide.X["S1"], np.hstack([X, neighbour_mean(X, xy, 8)]))
    # a recipe stored before the lever existed reads as one without it
    old = Recipe("r", ("f",), context_k=2).as_dict()
    del old["context_wide"]
    assert Recipe.from_dict(old).context_wide == 0 and recipe_problem(old) == ""
    assert "context_wide" in recipe_problem({**old, "context_wide": -1})


def test_every_lever_recipe_names_a_base_in_the_grid():
    for r in RECIPES.values():
        assert not r.base or r.base in RECIPES, r.name
    assert Recipe.from_dict({"name": "old", "features": ["f"]}).slide_gain == 1.0


def test_ablation_counts_wins_against_the_base():
    def row(name, base, spots):
        return {"recipe": {"name": name, "features": ["f"], "context_k": 0, "smooth_k": 0,
                           "smooth_w": 0.0, "per_type_alpha": False, "center": False,
                           "base": base},
                "target": "spot_rank",
                "per_slide": {s: {"spot": v, "type": 0.1}
                              for s, v in zip("ABC", spots, strict=True)},
                "mean": {"spot": float(np.mean(spots)), "type": 0.1}}
    rows = {"plain/spot_rank": row("plain", "", [0.1, 0.1, 0.1]),
            "combo/spot_rank": row("combo", "", [0.5, 0.5, 0.5]),
            "lever/spot_rank": row("lever", "combo", [0.6, 0.6, 0.4])}
    assert wins(rows["lever/spot_rank"], rows["combo/spot_rank"], "ABC") == 2
    table = ablation_table({"rows": rows, "chosen": "combo"})
    last = {r[0].text: r[-1].text for r in table.rows}
    assert last == {"plain": "", "combo (chosen)": "3/3 vs plain", "lever": "2/3 vs combo"}


def test_tune_keeps_a_lever_only_where_it_wins_4_of_5():
    """choose: the best mean per spot among recipes that beat their base on >= 4 of 5
    held-out slides (and whose base does too)."""
    from regress.tune import choose

    def row(name, base, spots):
        return {"recipe": {"name": name, "base": base}, "target": "spot_rank",
                "per_slide": {s: {"spot": v, "type": 0.0} for s, v in zip("ABCDE", spots,
                                                                         strict=True)},
                "mean": {"spot": float(np.mean(spots)), "type": 0.0}}
    rows = {"combo/spot_rank": row("combo", "", [0.5] * 5),
            # a higher mean from one slide: 1 win of 5, not kept
            "lucky/spot_rank": row("lucky", "combo", [0.9, 0.49, 0.49, 0.49, 0.49]),
            "steady/spot_rank": row("steady", "combo", [0.51, 0.51, 0.51, 0.51, 0.49])}
    assert choose(rows) == "steady"
    rows["on_lucky/spot_rank"] = row("on_lucky", "lucky", [1.0] * 5)  # its base is out
    assert choose(rows) == "steady"
