"""Model folders (regress.bundle), ``hespot fit`` and ``hespot predict`` on the synthetic
fixture: predict reproduces the pipeline's submission, embeds new stores as the model's
spec says, and refuses folders that are missing, altered, newer or made for other inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

import regress.fit
import regress.predict
import regress.submit
from regress.bundle import BUNDLE_FORMAT, SavedEstimator, export_estimator, load_bundle
from regress.models import make_model

pytestmark = pytest.mark.filterwarnings("ignore:The argument 'eval_set' is deprecated")


def _fit(h5, store, out, model_dir, *args) -> int:
    return regress.fit.main(["--h5", str(h5), "--store", str(store), "--out", str(out),
                             "--model-dir", str(model_dir), "--quiet", *args])


def _predict(h5, model_dir, out, *args) -> int:
    return regress.predict.main(["--h5", str(h5), "--model", str(model_dir), "--out", str(out),
                                 "--quiet", *args])


def _submission(h5, out, tmp_path, *args) -> pd.DataFrame:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "submission.csv"
    assert regress.submit.main(["--h5", str(h5), "--out", str(out), "--quiet",
                                "--submission", str(path), "--h5ad",
                                str(tmp_path / "s.h5ad"), *args]) == 0
    return pd.read_csv(path)


def _max_diff(predictions: pd.DataFrame, submission: pd.DataFrame) -> float:
    cols = list(submission.columns[1:])
    ids = predictions["slide"].astype(str) + "_" + predictions["row"].astype(str)
    assert list(ids) == list(submission["ID"])
    return float(np.abs(predictions[cols].to_numpy() - submission[cols].to_numpy()).max())


@pytest.fixture(scope="module")
def single(synthetic_h5, tiny_store, tiny_regressed, tmp_path_factory) -> Path:
    """The default model folder (submit's choice: the best OOF model); read-only."""
    folder = tmp_path_factory.mktemp("fit") / "model"
    assert _fit(synthetic_h5, tiny_store, tiny_regressed, folder) == 0
    return folder


def test_folder_holds_the_spec_and_no_pickle(single, tiny_regressed):
    meta = json.loads((single / "model.json").read_text())
    report = json.loads((tiny_regressed / "report.json").read_text())
    assert meta["format"] == BUNDLE_FORMAT and meta["combine"] == "single"
    assert [m["id"] for m in meta["models"]] == [regress.submit.best_model(report)]
    assert meta["train_slides"] == report["train_slides"]
    assert meta["cell_types"] == report["cell_types"]
    assert set(meta["fingerprints"]) == set(meta["train_slides"])
    (part,) = meta["features"]
    assert part["backbone"] == "tiny_random" and part["array"] == "features"
    assert part["settings"]["tta_views"] == 2 and part["settings"]["crops_px"] == [64]
    assert len(part["settings"]["weights_sha256"]) == 64
    assert meta["models"][0]["check_max_abs_diff_vs_test_csv"] <= 1e-12
    assert sorted(p.name for p in single.iterdir()) == sorted(["model.json", *meta["files"]])
    assert "README.md" in meta["files"]  # the model card, checksummed like the arrays
    for name in meta["files"]:
        assert name.endswith((".npz", ".txt")) or name == "README.md"


def test_predict_reproduces_the_submission(synthetic_h5, single, tiny_store, tiny_regressed,
                                           tmp_path):
    out = tmp_path / "pred"
    assert _predict(synthetic_h5, single, out, "--store", str(tiny_store)) == 0
    got = pd.read_csv(out / "rank_scores.csv")
    assert list(got.columns[:5]) == ["slide", "row", "spot_id", "x", "y"]
    assert _max_diff(got, _submission(synthetic_h5, tiny_regressed, tmp_path)) <= 1e-6
    assert (out / "predictions.h5ad").is_file()


def test_ensemble_with_lightgbm_reproduces_the_submission(synthetic_h5, tiny_store,
                                                          tiny_regressed, tmp_path):
    folder = tmp_path / "model"
    models = "ridge-spot_rank,lgbm-spot_rank"
    assert _fit(synthetic_h5, tiny_store, tiny_regressed, folder, "--models", models) == 0
    meta = json.loads((folder / "model.json").read_text())
    assert meta["combine"] == "rank_mean"
    assert any(name.endswith(".tree0.txt") for name in meta["files"])
    assert _predict(synthetic_h5, folder, tmp_path / "p", "--store", str(tiny_store)) == 0
    expected = _submission(synthetic_h5, tiny_regressed, tmp_path, "--models", models)
    assert _max_diff(pd.read_csv(tmp_path / "p" / "rank_scores.csv"), expected) <= 1e-6


def test_predict_embeds_a_new_store_as_the_spec_says(synthetic_h5, single, tiny_store,
                                                     tmp_path):
    """Stage 1 runs in its own process into OUT/embeddings.zarr with the training run's
    settings: features bit-identical to the training store's, a second call skips it."""
    import zarr

    out = tmp_path / "pred"
    assert _predict(synthetic_h5, single, out) == 0
    new, old = (zarr.open_group(str(p), mode="r") for p in (out / "embeddings.zarr", tiny_store))
    slide = pd.read_csv(out / "predictions.csv")["slide"].iloc[0]
    key = f"tiny_random/{slide}/features"
    np.testing.assert_array_equal(new[key][:], old[key][:])
    first = pd.read_csv(out / "predictions.csv")
    assert _predict(synthetic_h5, single, out) == 0
    pd.testing.assert_frame_equal(first, pd.read_csv(out / "predictions.csv"))


@pytest.mark.parametrize("kind, params", [
    ("ridge", {"n_components": 5}), ("ridge", {}), ("constant", {}),
    ("lgbm", {"n_components": 4, "n_estimators": 20}),
])
def test_saved_estimator_predicts_as_the_fitted_one(kind, params):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 8)).astype(np.float32)
    Y = rng.random((60, 3))
    est = make_model(kind, **params).fit(X, Y, groups=np.repeat(["a", "b", "c"], 20))
    arrays, trees = export_estimator(est, kind)
    boosters = []
    if trees:
        import lightgbm as lgb

        boosters = [lgb.Booster(model_str=t) for t in trees]
    np.testing.assert_allclose(SavedEstimator(kind, arrays, boosters).predict(X),
                               est.predict(X), rtol=0, atol=1e-12)


# ---- refusals -----------------------------------------------------------------------------
@pytest.fixture
def copy(single, tmp_path) -> Path:
    return Path(shutil.copytree(single, tmp_path / "model"))


def _refused(synthetic_h5, folder, tmp_path, capsys, *words, args=()) -> None:
    out = tmp_path / "refused"
    assert _predict(synthetic_h5, folder, out, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert all(w in err for w in words), err
    assert not out.exists()  # refused before anything was written


def test_altered_file_is_refused(synthetic_h5, copy, tmp_path, capsys):
    npz = next(copy.glob("*.npz"))
    data = bytearray(npz.read_bytes())
    data[-100] ^= 0xFF
    npz.write_bytes(bytes(data))
    _refused(synthetic_h5, copy, tmp_path, capsys, npz.name, "altered")


def test_missing_file_is_refused(synthetic_h5, copy, tmp_path, capsys):
    next(copy.glob("*.npz")).unlink()
    _refused(synthetic_h5, copy, tmp_path, capsys, ".npz", "missing")


def test_newer_format_and_missing_folder_are_refused(synthetic_h5, copy, tmp_path, capsys):
    meta = json.loads((copy / "model.json").read_text())
    (copy / "model.json").write_text(json.dumps({**meta, "format": BUNDLE_FORMAT + 1}))
    _refused(synthetic_h5, copy, tmp_path, capsys, "format", "upgrade hespot")
    _refused(synthetic_h5, tmp_path / "none", tmp_path, capsys, "model.json", "hespot fit")


def test_pickled_arrays_are_never_loaded(copy):
    """An object array needs pickle: refused even with a matching checksum."""
    from data.checksum import sha256_file as sha256_of

    meta = json.loads((copy / "model.json").read_text())
    npz = copy / f"{meta['models'][0]['id']}.npz"  # a rank model's (load_bundle reads it)
    np.savez(npz, coef=np.array([{"a": 1}], dtype=object), intercept=np.zeros(2))
    meta["files"][npz.name] = sha256_of(npz)
    (copy / "model.json").write_text(json.dumps(meta))
    from data.errors import DataError

    with pytest.raises(DataError, match="pickle"):
        load_bundle(copy)


def test_other_cell_types_and_unknown_pixel_size_are_refused(synthetic_h5, copy, tmp_path,
                                                             capsys):
    from data.synthetic import SyntheticConfig, write_synthetic

    meta = json.loads((copy / "model.json").read_text())
    other = tmp_path / "other.h5"
    write_synthetic(other, SyntheticConfig(n_types=3))
    train = meta["train_slides"][0]
    _refused(other, copy, tmp_path, capsys, "cell types", args=("--slides", train))
    meta["features"][0]["patch_um"] = 64.0
    (copy / "model.json").write_text(json.dumps(meta))
    no_px = tmp_path / "nopx.h5"
    write_synthetic(no_px, SyntheticConfig(pixel_size_um=None))
    _refused(no_px, copy, tmp_path, capsys, "pixel_size_um", "µm")


def test_a_stage1_refusal_is_passed_on_in_one_line(synthetic_h5, copy, tmp_path, capsys):
    """Stage 1 refusing the settings replayed from the spec (here a padding it does not
    know) is predict's one-line refusal: the backbone, stage 1's message, how to rerun it."""
    meta = json.loads((copy / "model.json").read_text())
    meta["features"][0]["settings"]["pad_mode"] = "wrap"
    (copy / "model.json").write_text(json.dumps(meta))
    _refused(synthetic_h5, copy, tmp_path, capsys, "stage 1 of tiny_random",
             "--pad-mode must be one of", "'wrap'", "python -m embed.run --config -")


def test_edited_model_json_is_refused_not_crashed_on(synthetic_h5, copy, tmp_path, capsys):
    """Ids are file names without paths; every file read has a checksum; kinds, weights
    and cell types are what fit writes."""
    meta = json.loads((copy / "model.json").read_text())
    edits = [
        (lambda m: m["models"][0].update(id="../elsewhere/x"), "id"),
        (lambda m: m.pop("models"), "models"),
        (lambda m: m["models"][0].update(kind="constant"), ".npz"),
        (lambda m: m["models"][0].update(weight=0), "positive sum"),
        (lambda m: m["cell_types"].pop(), "cell types"),
        (lambda m: m["files"].clear(), "checksum"),
        (lambda m: m.update(format=0), "format"),
        (lambda m: m["features"][0].update(backbone="x; touch /tmp/p"), "features"),
    ]
    for edit, word in edits:
        m = json.loads(json.dumps(meta))
        edit(m)
        (copy / "model.json").write_text(json.dumps(m))
        _refused(synthetic_h5, copy, tmp_path, capsys, word)


def test_fit_never_replaces_a_folder_that_is_not_a_model(synthetic_h5, tiny_store,
                                                         tiny_regressed, tmp_path, capsys):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    assert _fit(synthetic_h5, tiny_store, tiny_regressed, precious) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert (precious / "notes.txt").read_text() == "keep me"


def test_fit_refuses_unknown_models_before_work(synthetic_h5, tiny_store, tiny_regressed,
                                                tmp_path, capsys):
    folder = tmp_path / "model"
    assert _fit(synthetic_h5, tiny_store, tiny_regressed, folder, "--models", "nope") == 2
    assert "nope" in capsys.readouterr().err and not folder.exists()


def test_per_type_layer_in_submit_and_predict(synthetic_h5, tiny_store, tmp_path):
    """With a type_rank model in the report, submit's and predict's h5ad carry its
    predictions as the 'per_type' layer (the spots' order within each cell type).

    The submitted model is named: which of the two scores best per spot is a near-tie on
    these features (0.667 each with stage 1 at fp32; 0.659 vs 0.666 with bf16, as a CPU
    with AMX runs it), so submit's and fit's own choice is not this test's business."""
    import anndata as ad

    import regress.run

    out = tmp_path / "out"
    assert regress.run.main(["--h5", str(synthetic_h5), "--store", str(tiny_store),
                             "--out", str(out), "--features", "tiny_random", "--models",
                             "ridge", "--targets", "spot_rank,type_rank", "--quiet"]) == 0
    named = ["--models", "ridge-spot_rank"]
    _submission(synthetic_h5, out, tmp_path, *named)
    test = pd.read_csv(out / "predictions" / "ridge-type_rank" / "test.csv")
    types = list(test.columns[5:])
    submitted = ad.read_h5ad(tmp_path / "s.h5ad")
    np.testing.assert_allclose(submitted.layers["per_type"], test[types].to_numpy(), atol=1e-6)
    folder = tmp_path / "model"
    assert _fit(synthetic_h5, tiny_store, out, folder, *named) == 0
    meta = json.loads((folder / "model.json").read_text())
    assert [m["id"] for m in meta["models"]] == ["ridge-spot_rank"]
    assert [(x["name"], x["id"]) for x in meta["layers"]] == [("per_type", "ridge-type_rank")]
    assert meta["orders_from"] == "ridge-type_rank"
    assert _predict(synthetic_h5, folder, tmp_path / "p", "--store", str(tiny_store)) == 0
    predicted = ad.read_h5ad(tmp_path / "p" / "predictions.h5ad")
    np.testing.assert_allclose(predicted.layers["per_type"], test[types].to_numpy(), atol=1e-6)
    # one prediction for both metrics, in submit and predict alike
    submission = pd.read_csv(tmp_path / "submission.csv")
    got = pd.read_csv(tmp_path / "p" / "rank_scores.csv")
    assert _max_diff(got, submission) <= 1e-6
    record = json.loads((tmp_path / "submission.json").read_text())
    assert record["models"] == ["ridge-spot_rank"]
    assert record["orders_from"] == "ridge-type_rank"
    spot = json.loads((out / "report.json").read_text())["models"]["ridge-spot_rank"]["mean"]
    assert record["oof"]["mean"]["spot"] == pytest.approx(spot["spot"], abs=1e-9)
    assert record["oof"]["mean"]["type"] > spot["type"]
    spot_test = pd.read_csv(out / "predictions" / "ridge-spot_rank" / "test.csv")[types]
    np.testing.assert_array_equal(rankdata(submission[types].to_numpy(), axis=1),
                                  rankdata(spot_test.to_numpy(), axis=1))
    unordered = _submission(synthetic_h5, out, tmp_path / "no", "--no-orders", *named)
    np.testing.assert_allclose(unordered[types].to_numpy(),
                               np.clip(spot_test.to_numpy(), 0, 1), atol=1e-12)


def test_model_predicts_a_slide_read_in_place(synthetic_h5, single, tmp_path):
    """An H&E-only slide (a pyramidal TIFF imported with hespot import-wsi, held by
    reference) is predicted by a model fitted elsewhere: with the test slide's own spots,
    the predictions equal those of the slide whose pixels are in the HDF5; with a grid,
    every grid spot gets a prediction."""
    from data.h5 import CanonicalH5
    from data.importers import wsi
    from data.wsi.pyramid import write_array_pyramid

    with CanonicalH5(synthetic_h5) as h5:
        slide = h5.test_slides[0]
        H, W = h5.image_shape(slide)[:2]
        image, table = h5.read_window(slide, 0, H, 0, W), h5.spots(slide)
    tif = write_array_pyramid(tmp_path / "slide.tif", image, 1.0, n_levels=2,
                              compression="zlib")
    pd.DataFrame({"x": table.x, "y": table.y}).to_csv(tmp_path / "spots.csv", index=False)
    h5_path = tmp_path / "wsi.h5"
    assert wsi.main(["--slide", str(tif), "--spots", str(tmp_path / "spots.csv"),
                     "--images", "reference", "--out", str(h5_path), "--quiet"]) == 0
    with CanonicalH5(h5_path) as h5:
        assert h5.train_slides == [] and h5.image_ref("slide") is not None
    assert _predict(h5_path, single, tmp_path / "wsi") == 0
    assert _predict(synthetic_h5, single, tmp_path / "h5") == 0
    got, want = (pd.read_csv(tmp_path / p / "predictions.csv") for p in ("wsi", "h5"))
    cols = [c for c in want.columns if c not in ("slide", "row", "spot_id", "x", "y")]
    want = want[want["slide"] == slide]
    assert len(got) == len(want) == len(table)
    np.testing.assert_allclose(got[cols].to_numpy(), want[cols].to_numpy(), atol=1e-6)
