"""Spatial levers never cross slides; tuning never reads a test slide's targets."""

from __future__ import annotations

import json

import numpy as np
import pytest

import embed.run
import regress.recipes as recipes
import regress.tune as tune
from data.errors import DataError
from data.h5 import CanonicalH5
from data.store import FeatureSpec
from regress.features import load_slides
from regress.recipes import Recipe
from regress.spatial import (
    SpatialContext,
    center_per_slide,
    neighbour_index,
    neighbour_mean,
    smooth_predictions,
)


def test_neighbours_stay_within_a_slide():
    rng = np.random.default_rng(0)
    xy = np.concatenate([rng.uniform(0, 10, (20, 2)), rng.uniform(0, 10, (20, 2))])
    groups = np.repeat(["a", "b"], 20)
    X = np.concatenate([np.zeros((20, 3)), np.ones((20, 3))])  # slides overlap in space
    out = SpatialContext(k=6).fit(X).transform(X, xy, groups)
    assert out.shape == (40, 6)
    np.testing.assert_array_equal(out[:20, 3:], 0.0)  # slide a never sees slide b's rows
    np.testing.assert_array_equal(out[20:, 3:], 1.0)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_fewer_spots_than_k(n):
    xy = np.arange(2 * n, dtype=float).reshape(n, 2)
    idx = neighbour_index(xy, k=6)
    assert idx.shape == (n, n - 1)
    assert all(i not in row for i, row in enumerate(idx))
    P = np.arange(n * 3, dtype=float).reshape(n, 3)
    S = smooth_predictions(P, xy, k=6, weight=0.5)
    assert S.shape == P.shape and np.isfinite(S).all()
    if n == 1:
        np.testing.assert_array_equal(neighbour_mean(P, xy, 6), P)


def test_smoothing_is_the_documented_mix():
    xy = np.array([[0.0, 0], [1, 0], [10, 0]])
    P = np.array([[1.0], [3.0], [5.0]])
    S = smooth_predictions(P, xy, k=1, weight=0.25)
    np.testing.assert_allclose(S[:, 0], 0.75 * P[:, 0] + 0.25 * np.array([3.0, 1.0, 3.0]))


def test_center_per_slide():
    X = np.array([[1.0], [3.0], [10.0], [20.0]])
    out = center_per_slide(X, np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(out[:, 0], [-1, 1, -5, 5])


TINY = (
    Recipe("t_plain", ("tiny_random",)),
    Recipe("t_smooth", ("tiny_random",), smooth_k=4, smooth_w=0.5),
    Recipe("t_context", ("tiny_random",), context_k=4),
)


@pytest.fixture(scope="module")
def store(synthetic_h5, tmp_path_factory):
    path = tmp_path_factory.mktemp("tune") / "emb.zarr"
    assert embed.run.main(["--h5", str(synthetic_h5), "--store", str(path), "--backbones",
                           "tiny_random", "--patch-px", "64", "--tta", "1", "--precision",
                           "fp32", "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def tuned(synthetic_h5, store, tmp_path_factory):
    """OUT of one ``regress.tune`` run over the TINY recipes; read-only for tests."""
    out = tmp_path_factory.mktemp("tuned") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(recipes, "RECIPES", {**recipes.RECIPES, **{r.name: r for r in TINY}})
        assert tune.main(["--h5", str(synthetic_h5), "--store", str(store), "--out", str(out),
                          "--recipes", ",".join(r.name for r in TINY), "--quiet"]) == 0
    return out


def test_tune_ignores_test_targets(synthetic_h5, store, tuned, monkeypatch):
    monkeypatch.setattr(recipes, "RECIPES", {**recipes.RECIPES, **{r.name: r for r in TINY}})
    data = load_slides(synthetic_h5, store, [FeatureSpec("tiny_random")])
    with CanonicalH5(synthetic_h5) as h5:
        test = h5.test_slides[0]
        assert h5.spots(test).Y is None  # the reader gives test slides no targets
    clean = {r.name: tune.evaluate(data, r, "spot_rank", 1e7) for r in TINY}
    rng = np.random.default_rng(1)
    data.Y[test] = rng.dirichlet(np.ones(len(data.cell_types)), size=len(data.X[test]))
    poisoned = {r.name: tune.evaluate(data, r, "spot_rank", 1e7) for r in TINY}
    for name in clean:
        assert clean[name]["per_slide"] == poisoned[name]["per_slide"]
        assert test not in clean[name]["per_slide"]
    rows = {f"{k}/spot_rank": v for k, v in clean.items()}
    prows = {f"{k}/spot_rank": v for k, v in poisoned.items()}
    assert tune.choose(rows) == tune.choose(prows)

    out = tuned
    tuned_json = json.loads((out / "tuned.json").read_text())
    assert tuned_json["recipe"] in {r.name for r in TINY}
    assert test not in tuned_json["train_slides"]
    report = json.loads((out / "report.json").read_text())
    assert report["ablation"]["chosen"] == tuned_json["recipe"]
    assert "t_smooth" in (out / "report.md").read_text()


def _strings(value):
    """Every string inside a JSON value (keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def test_tune_writes_data_not_markdown(tuned):
    """report.json holds data only; report.md renders the ablation from its rows."""
    report = json.loads((tuned / "report.json").read_text())
    assert set(report["ablation"]) == {"rows", "chosen", "config"}
    for text in _strings(report):
        assert not any(line.lstrip().startswith("|") for line in text.splitlines()), text
    md = (tuned / "report.md").read_text()
    head = ("| recipe | target | features | context_k | smooth_k | per_type_alpha | center | "
            "position | shrink | slide_gain | S_1 | S_2 | S_3 | spot | type | wins |")
    assert head in md
    chosen = report["ablation"]["chosen"]
    assert f"| {chosen} (chosen) | spot_rank | tiny_random |" in md
    for key, row in report["ablation"]["rows"].items():
        assert f"| {row['mean']['spot']:.3f} | {row['mean']['type']:.3f} |" in md, key


def test_recipes_without_stored_parts_are_left_out_with_the_command(synthetic_h5, store,
                                                                   caplog):
    """make tune's grid names arrays that only make grid-embeddings writes: a recipe whose
    parts are not stored is left out, and the log says which embed item makes them; when
    none is stored, the reader's DataError names the array and the fix."""
    cfg = tune.TuneConfig(h5=str(synthetic_h5), store=str(store))
    wanting = Recipe("t_um", ("tiny_random:features_110um",))
    with caplog.at_level("WARNING", logger="hespot"):
        kept = tune.stored(cfg, [TINY[0], wanting])
    assert kept == [TINY[0]]
    assert "t_um left out" in caplog.text and "tiny_random+110um" in caplog.text
    with pytest.raises(DataError, match="features_110um"):
        tune.stored(cfg, [wanting])
