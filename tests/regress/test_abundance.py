"""Abundance models (regress.abundance), the abundance metrics and the abundance part of
``hespot regress`` on the synthetic fixture."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from regress.abundance import (
    ABUNDANCE_MODELS,
    TRANSFORMS,
    AbundanceRidge,
    SavedAbundance,
    export_ridge,
    sums_to_one,
    to_scale,
)
from regress.abundance_kinds import KINDS, AbundanceBlend, make_abundance_model
from regress.abundance_mlp import (
    AbundanceMLP,
    AdamW,
    SavedMLP,
    principal_projection,
    tv_step,
)
from regress.metrics import pearson_per_type, tv_distance


def _data(n=90, d=6, t=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    logits = X[:, :t] * 1.5
    Y = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return X, Y, np.repeat(["a", "b", "c"], n // 3)


def test_tv_distance_and_pearson():
    Y = np.array([[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])
    P = np.array([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]])
    np.testing.assert_allclose(tv_distance(Y, P), [0.0, 1.0])
    A = np.array([[1.0, 0.2], [2.0, 0.2], [3.0, 0.2]])
    B = np.array([[2.0, 5.0], [4.0, 6.0], [6.0, 9.0]])
    np.testing.assert_allclose(pearson_per_type(A, B), [1.0, 0.0])  # constant column: 0
    tiled = np.tile([0.1, 0.3, 0.6], (5, 1)) * (1 + 1e-17)
    assert np.all(pearson_per_type(np.random.default_rng(0).random((5, 3)), tiled) == 0)


def test_simplex_detection_and_scale():
    _, Y, _ = _data()
    assert sums_to_one(Y) and not sums_to_one(Y * 2) and not sums_to_one(Y - 0.1)
    P = np.array([[-0.2, 0.3, 0.1], [-1.0, -1.0, -1.0]])
    out = to_scale(P, True, np.array([0.2, 0.3, 0.5]))
    np.testing.assert_allclose(out, [[0.0, 0.75, 0.25], [0.2, 0.3, 0.5]])
    np.testing.assert_allclose(to_scale(P, False, None), np.clip(P, 0, None))


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_every_transform_predicts_proportions_and_learns(transform):
    X, Y, g = _data()
    est = AbundanceRidge(transform).fit(X[:60], Y[:60], groups=g[:60])
    P = est.predict(X[60:])
    assert P.min() >= 0 and np.abs(P.sum(1) - 1).max() < 1e-12
    baseline = tv_distance(Y[60:], np.tile(Y[:60].mean(0), (30, 1))).mean()
    assert tv_distance(Y[60:], P).mean() < 0.8 * baseline


def test_targets_off_the_simplex_keep_their_scale():
    X, Y, g = _data()
    est = AbundanceRidge("sqrt").fit(X[:60], 3 * Y[:60], groups=g[:60])
    P = est.predict(X[60:])
    assert P.min() >= 0 and not np.allclose(P.sum(1), 1)
    assert 2.0 < P.sum(1).mean() < 4.0


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_saved_abundance_predicts_as_the_fitted_one(transform):
    X, Y, g = _data()
    est = AbundanceRidge(transform).fit(X[:60], Y[:60], groups=g[:60])
    saved = SavedAbundance(transform, export_ridge(est))
    np.testing.assert_allclose(saved.predict(X[60:]), est.predict(X[60:]), atol=1e-12, rtol=0)


def test_the_network_learns_proportions_on_the_simplex_and_off_it():
    X, Y, _ = _data(n=150)
    est = AbundanceMLP(epochs=40, seeds=2).fit(X[:100], Y[:100])
    P = est.predict(X[100:])
    assert P.min() >= 0 and np.abs(P.sum(1) - 1).max() < 1e-12
    baseline = tv_distance(Y[100:], np.tile(Y[:100].mean(0), (50, 1))).mean()
    assert tv_distance(Y[100:], P).mean() < 0.7 * baseline
    off = AbundanceMLP(epochs=40, seeds=2).fit(X[:100], 3 * Y[:100]).predict(X[100:])
    np.testing.assert_allclose(off.sum(1), 3.0, rtol=1e-9)
    np.testing.assert_allclose(off / 3.0, P, atol=1e-12)  # the same networks, scaled


def test_the_network_is_the_same_from_the_same_data_whatever_the_thread_count():
    from threadpoolctl import threadpool_info, threadpool_limits

    # wide enough that eigh's eigenvectors differ between 1 and 2 threads (by 1e-13)
    rng = np.random.default_rng(6)
    X = rng.normal(size=(400, 500))
    Y = rng.dirichlet(np.ones(4), size=400)
    a = AbundanceMLP(epochs=1, seeds=1).fit(X, Y).export()
    threads = max((p["num_threads"] for p in threadpool_info()), default=1)
    with threadpool_limits(1 if threads > 1 else 2):
        b = AbundanceMLP(epochs=1, seeds=1).fit(X, Y).export()
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)
    c = AbundanceMLP(epochs=1, seeds=1, seed=7).fit(X, Y).export()
    assert not np.array_equal(a["w1"], c["w1"])


def test_a_feature_constant_up_to_rounding_does_not_move_the_network():
    X, Y, _ = _data()
    X[:, 5] = 0.1                       # its standard deviation: 1e-17, not 0
    est = AbundanceMLP(epochs=20, seeds=1).fit(X, Y)
    nudged = X.copy()
    nudged[:, 5] = 0.1000001
    assert np.abs(est.predict(nudged) - est.predict(X)).max() < 1e-5


@pytest.mark.parametrize("rows", [1, 5])
def test_features_without_a_component_give_the_training_composition(rows):
    X = np.ones((rows, 4))
    Y = np.tile([0.5, 0.3, 0.2], (rows, 1))
    est = AbundanceMLP(epochs=50, seeds=1).fit(X, Y)
    assert est.export()["projection"].shape == (4, 0)
    P = est.predict(np.vstack([X, 2 * X]))
    assert np.isfinite(P).all()
    np.testing.assert_allclose(P, np.tile([0.5, 0.3, 0.2], (2 * rows, 1)), atol=0.05)


def test_the_networks_gradients_are_the_losss():
    rng = np.random.default_rng(4)
    r, h, k, B = 5, 4, 3, 7
    params = [rng.normal(size=(r, h)), rng.normal(size=h), rng.normal(size=(h, k)),
              rng.normal(size=k)]
    x = rng.normal(size=(B, r))
    T = rng.dirichlet(np.ones(k), size=B)
    masks = ((rng.random((B, r)) > 0.2) / 0.8, (rng.random((B, h)) > 0.5) / 0.5)
    loss, grads = tv_step(params, x, T, masks)
    assert loss == pytest.approx(tv_distance(T, _forward_once(params, x, masks)).mean())
    for p, g in zip(params, grads, strict=True):
        for i in np.ndindex(p.shape):
            keep = p[i]
            p[i] = keep + 1e-6
            up = tv_step(params, x, T, masks)[0]
            p[i] = keep - 1e-6
            down = tv_step(params, x, T, masks)[0]
            p[i] = keep
            assert g[i] == pytest.approx((up - down) / 2e-6, abs=1e-6), i


def _forward_once(params, x, masks):
    w1, b1, w2, b2 = params
    a = (x * masks[0]) @ w1 + b1
    h = 0.5 * a * (1 + np.vectorize(math.erf)(a / math.sqrt(2))) * masks[1]
    L = h @ w2 + b2
    return np.exp(L) / np.exp(L).sum(1, keepdims=True)


def test_adamw_takes_torchs_steps():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    p = rng.normal(size=(3, 2))
    grads = [rng.normal(size=(3, 2)) for _ in range(4)]
    mine = AdamW([p.copy()], lr=0.01, weight_decay=0.1)
    ref = torch.tensor(p.copy(), requires_grad=True)
    opt = torch.optim.AdamW([ref], lr=0.01, weight_decay=0.1)
    for g in grads:
        mine.step([g])
        ref.grad = torch.tensor(g)
        opt.step()
    np.testing.assert_allclose(mine.params[0], ref.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_the_projection_whitens_and_fixes_signs():
    rng = np.random.default_rng(1)
    for n, d in ((40, 12), (12, 40)):     # either side of the Gram trick
        Z = rng.normal(size=(n, d)) @ np.diag(np.linspace(3, 0.1, d))
        Z -= Z.mean(0)
        V = principal_projection(Z, 5)
        np.testing.assert_allclose(np.cov((Z @ V).T, bias=True), np.eye(5), atol=1e-9)
        assert (V[np.abs(V).argmax(0), np.arange(5)] > 0).all()
        np.testing.assert_allclose(principal_projection(-Z, 5), V, atol=1e-9)
    flat = np.zeros((6, 4))
    flat[:, 0] = np.arange(6) - 2.5
    assert principal_projection(flat, 3).shape == (4, 1)   # zero-variance parts left out


def test_a_large_matrix_takes_the_randomized_components(monkeypatch):
    import regress.abundance_mlp as mlp

    rng = np.random.default_rng(2)
    Z = rng.normal(size=(300, 12)) @ np.diag(2.0 ** -np.arange(12)) @ \
        np.linalg.qr(rng.normal(size=(12, 12)))[0] @ rng.normal(size=(12, 200))
    Z -= Z.mean(0)
    exact = principal_projection(Z, 4)
    monkeypatch.setattr(mlp, "EXACT_MAX", 100)
    fast = principal_projection(Z, 4)
    np.testing.assert_allclose(np.cov((Z @ fast).T, bias=True), np.eye(4), atol=1e-8)
    np.testing.assert_allclose(Z @ fast, Z @ exact, atol=1e-6)


def test_the_blend_is_the_mean_of_its_parts_and_reloads_from_its_arrays():
    X, Y, g = _data()
    spec = ABUNDANCE_MODELS["sqrt_mlp"]
    est = make_abundance_model(spec)
    assert isinstance(est, AbundanceBlend) and spec.kind == "blend"
    est.fit(X[:60], Y[:60], groups=g[:60])
    ridge = AbundanceRidge("sqrt").fit(X[:60], Y[:60], groups=g[:60]).predict(X[60:])
    mlp = AbundanceMLP().fit(X[:60], Y[:60]).predict(X[60:])
    P = est.predict(X[60:])
    np.testing.assert_allclose(P, (ridge + mlp) / 2, atol=1e-12)
    assert P.min() >= 0 and np.abs(P.sum(1) - 1).max() < 1e-12
    kind = KINDS[spec.kind]
    arrays = kind.export(est)
    assert set(arrays) == set(kind.arrays)
    np.testing.assert_array_equal(kind.load(spec.transform, arrays).predict(X[60:]), P)
    assert isinstance(kind.load(spec.transform, arrays).mlp, SavedMLP)


def test_a_folder_written_before_kinds_predicts_as_a_ridge(tiny_regressed, synthetic_h5,
                                                           tiny_store, tmp_path):
    import regress.fit
    import regress.predict

    out = Path(shutil.copytree(tiny_regressed, tmp_path / "out"))
    report = json.loads((out / "report.json").read_text())
    report["abundance"]["chosen"] = "sqrt_context"
    (out / "report.json").write_text(json.dumps(report))
    folder = tmp_path / "model"
    assert regress.fit.main(["--h5", str(synthetic_h5), "--store", str(tiny_store), "--out",
                             str(out), "--model-dir", str(folder), "--quiet"]) == 0
    meta = json.loads((folder / "model.json").read_text())
    assert meta["abundance"]["kind"] == "ridge"
    args = ["--model", str(folder), "--h5", str(synthetic_h5), "--store", str(tiny_store),
            "--quiet", "--out"]
    assert regress.predict.main([*args, str(tmp_path / "now")]) == 0
    del meta["abundance"]["kind"]
    (folder / "model.json").write_text(json.dumps(meta))
    assert regress.predict.main([*args, str(tmp_path / "before")]) == 0
    for name in ("predictions.csv", "rank_scores.csv"):
        assert (tmp_path / "now" / name).read_bytes() == (tmp_path / "before" / name).read_bytes()


@pytest.mark.parametrize("kind", [["ridge"], {}, "forest", 3])
def test_a_kind_hespot_does_not_know_is_refused_by_name(fitted, tmp_path, kind):
    from data.errors import DataError
    from regress.bundle import load_bundle

    folder = Path(shutil.copytree(fitted, tmp_path / "model"))
    meta = json.loads((folder / "model.json").read_text())
    meta["abundance"]["kind"] = kind
    (folder / "model.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="abundance.kind"):
        load_bundle(folder)


def test_every_candidate_names_a_kind_and_a_transform():
    for spec in ABUNDANCE_MODELS.values():
        assert spec.kind in KINDS and spec.transform in TRANSFORMS, spec


def test_regress_reports_every_candidate_and_chooses_by_tv(tiny_regressed, synthetic_h5):
    report = json.loads((tiny_regressed / "report.json").read_text())
    section = report["abundance"]
    assert set(section["models"]) == set(ABUNDANCE_MODELS) and section["simplex"] is True
    tv = {m: e["mean"]["tv"] for m, e in section["models"].items()}
    assert section["chosen"] == min(tv, key=tv.get)
    chosen = section["models"][section["chosen"]]
    slides = report["train_slides"]
    assert set(chosen["per_slide"]) == set(slides)
    for s in slides:
        row = chosen["per_slide"][s]
        assert row["tv"] < row["tv_mean"] and 0 < row["coverage"] <= 1 and row["width"] > 0
    assert chosen["mean"]["tv_ratio"] == pytest.approx(chosen["mean"]["tv"] /
                                                       chosen["mean"]["tv_mean"])
    # the rank models' ranking (and so the submission) ignores the abundance models
    assert not any(m.startswith("abundance") for m in report["models"])
    oof = pd.read_csv(tiny_regressed / "predictions" / f"abundance-{section['chosen']}" /
                      "oof.csv")
    values = oof[report["cell_types"]].to_numpy()
    assert values.min() >= 0 and np.abs(values.sum(1) - 1).max() < 1e-9
    ood = pd.read_csv(tiny_regressed / "predictions" / "ood" / "test.csv")
    assert list(ood.columns[-1:]) == ["ood_score"] and len(ood) == 49
    assert "## Abundances" in (tiny_regressed / "report.md").read_text()
