"""Stage 2 end to end: embeddings (stage 1) -> regress.run -> regress.submit, on the
synthetic fixture, on the challenge's layout through ``make pipeline``, and (slow) on the
real her2st sample."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import embed.run
import regress.fit
import regress.predict
import regress.run
import regress.submit
from data.h5 import CanonicalH5
from data.synthetic import SyntheticConfig, true_test_abundances, write_synthetic
from regress.metrics import score
from regress.results import META_COLUMNS, rank_models
from regress.submit import ensemble_weights
from regress.targets import rank_scale
from tests.helpers import run_submit as _submit

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("constant-spot_rank", "ridge-spot_rank", "lgbm-spot_rank")

pytestmark = pytest.mark.filterwarnings("ignore:The argument 'eval_set' is deprecated")


@pytest.fixture(scope="module")
def store(tiny_store) -> Path:
    return tiny_store


@pytest.fixture(scope="module")
def regressed(tiny_regressed) -> Path:
    """OUT folder of one regress.run (ridge, lgbm, constant); read-only for tests."""
    return tiny_regressed


@pytest.fixture
def out(regressed, tmp_path) -> Path:
    """A private copy of the regress output, for tests that submit or corrupt it."""
    return Path(shutil.copytree(regressed, tmp_path / "out"))


def _expected(h5_path) -> tuple[list[str], list[str], dict]:
    with CanonicalH5(h5_path) as h5:
        ids = [f"{s}_{i}" for s in h5.test_slides for i in range(len(h5.spots(s)))]
        tables = {s: h5.spots(s) for s in h5.train_slides + h5.test_slides}
        return ids, list(h5.cell_types), tables


# ---------------------------------------------------------------- regress.run

def test_models_beat_the_constant(regressed):
    report = json.loads((regressed / "report.json").read_text())
    assert set(report["models"]) == set(MODELS)
    const = report["models"]["constant-spot_rank"]["mean"]
    for name in ("ridge-spot_rank", "lgbm-spot_rank"):
        mean = report["models"][name]["mean"]
        assert mean["spot"] > const["spot"] + 0.2, (name, mean, const)
        assert mean["type"] > const["type"] + 0.2, (name, mean, const)
        assert set(report["models"][name]["per_slide"]) == {"S_1", "S_2", "S_3"}
    assert report["train_slides"] == ["S_1", "S_2", "S_3"]
    assert report["test_slides"] == ["S_4"]
    assert "alpha" in report["models"]["ridge-spot_rank"]["fitted"]
    assert "trees_median" in report["models"]["lgbm-spot_rank"]["fitted"]


def test_test_predictions_match_the_withheld_truth(regressed, synthetic_cfg):
    truth = true_test_abundances(synthetic_cfg)["S_4"]
    types = [f"C{i + 1}" for i in range(synthetic_cfg.n_types)]
    scores = {m: score(truth, pd.read_csv(regressed / "predictions" / m / "test.csv")[types]
                       .to_numpy()) for m in MODELS}
    for m in ("ridge-spot_rank", "lgbm-spot_rank"):
        assert scores[m]["spot"] > scores["constant-spot_rank"]["spot"] + 0.2, scores


def test_report_markdown_has_the_table(regressed):
    md = (regressed / "report.md").read_text()
    assert "| model | S_1 | S_2 | S_3 | mean spot | mean type | s |" in md
    for m in MODELS:
        assert f"| {m} |" in md
    ranks = md.split("\n## ")[0]  # the rank models' table (abundance tables follow)
    rows = [line for line in ranks.splitlines() if line.startswith("| ") and "**" in line]
    assert [r.split(" | ")[0][2:] for r in rows][0] == "ridge-spot_rank"  # best first
    # the per-type table's columns follow the same ranking (regress.results.rank_models)
    order = [r.split(" | ")[0][2:] for r in rows]
    assert order == rank_models(json.loads((regressed / "report.json").read_text()))
    assert f"| cell type | {' | '.join(order)} |" in md


def test_prediction_files(regressed, synthetic_h5):
    _, types, tables = _expected(synthetic_h5)
    for m in MODELS:
        for which, slides in (("oof", ["S_1", "S_2", "S_3"]), ("test", ["S_4"])):
            f = pd.read_csv(regressed / "predictions" / m / f"{which}.csv",
                            dtype={"slide": str, "spot_id": str})
            assert list(f.columns) == META_COLUMNS + types
            assert f["slide"].unique().tolist() == slides
            for s in slides:
                part = f[f["slide"] == s]
                assert part["row"].tolist() == list(range(len(tables[s])))
                np.testing.assert_allclose(part["x"], tables[s].x)
                np.testing.assert_allclose(part["y"], tables[s].y)
                assert part["spot_id"].tolist() == tables[s].spot_ids.tolist()
            assert np.isfinite(f[types].to_numpy()).all()


def test_regress_run_missing_store_is_a_user_error(synthetic_h5, tmp_path, capsys):
    rc = regress.run.main(["--h5", str(synthetic_h5), "--store", str(tmp_path / "none.zarr"),
                           "--out", str(tmp_path / "out"), "--quiet"])
    assert rc == 2
    assert "make embeddings" in capsys.readouterr().err


def test_regress_run_missing_backbone_is_a_user_error(synthetic_h5, store, tmp_path, capsys):
    rc = regress.run.main(["--h5", str(synthetic_h5), "--store", str(store),
                           "--out", str(tmp_path / "out"), "--features", "mobilenet_v2",
                           "--quiet"])
    assert rc == 2
    assert "embeddings of mobilenet_v2" in capsys.readouterr().err


# ---------------------------------------------------------------- submit

def test_submit_best_model(out, synthetic_h5):
    ids, types, tables = _expected(synthetic_h5)
    assert _submit(synthetic_h5, out) == 0
    sub = pd.read_csv(out / "submission.csv")
    assert list(sub.columns) == ["ID", *types]
    assert sub["ID"].tolist() == ids == [f"S_4_{i}" for i in range(49)]
    values = sub[types].to_numpy()
    assert values.min() >= 0 and values.max() <= 1
    # the best OOF model (ridge here) clipped to [0, 1]
    ridge = pd.read_csv(out / "predictions" / "ridge-spot_rank" / "test.csv")
    np.testing.assert_allclose(values, np.clip(ridge[types].to_numpy(), 0, 1), atol=1e-9)

    adata = ad.read_h5ad(out / "predictions.h5ad")
    assert adata.shape == (len(ids), len(types))
    assert adata.obs_names.tolist() == ids
    assert adata.var_names.tolist() == types
    assert {"slide", "x", "y", "spot_id"} <= set(adata.obs.columns)
    assert adata.obs["slide"].astype(str).unique().tolist() == ["S_4"]
    assert adata.obs["spot_id"].astype(str).tolist() == tables["S_4"].spot_ids.tolist()
    np.testing.assert_allclose(adata.obsm["spatial"],
                               np.stack([tables["S_4"].x, tables["S_4"].y], axis=1))
    np.testing.assert_allclose(adata.obs[["x", "y"]].to_numpy(float), adata.obsm["spatial"])
    np.testing.assert_allclose(adata.layers["rank_score"], values, atol=1e-6)
    assert adata.uns["hespot"]["X"] == "abundance"
    assert np.abs(np.asarray(adata.X).sum(axis=1) - 1).max() <= 1e-4


def _ranks(out, model, types):
    f = pd.read_csv(out / "predictions" / model / "test.csv")
    return rank_scale(f[types].to_numpy(), axis=1)


def test_submit_ensemble_weights_from_oof(out, synthetic_h5):
    _, types, _ = _expected(synthetic_h5)
    models = ["ridge-spot_rank", "lgbm-spot_rank"]
    assert _submit(synthetic_h5, out, "--models", ",".join(models), "--weighting",
                   "score") == 0
    report = json.loads((out / "report.json").read_text())
    w = ensemble_weights(report, models)
    base = report["models"]["constant-spot_rank"]["mean"]["spot"]
    gains = np.array([report["models"][m]["mean"]["spot"] - base for m in models])
    np.testing.assert_allclose(w, gains / gains.sum())
    assert w[0] > w[1] > 0  # ridge is better out of fold, so it weighs more
    sub = pd.read_csv(out / "submission.csv")
    want = w[0] * _ranks(out, models[0], types) + w[1] * _ranks(out, models[1], types)
    np.testing.assert_allclose(sub[types].to_numpy(), want, atol=1e-9)
    assert sub[types].to_numpy().min() >= 0 and sub[types].to_numpy().max() <= 1


def test_submit_ensemble_given_weights(out, synthetic_h5):
    _, types, _ = _expected(synthetic_h5)
    models = ["ridge-spot_rank", "lgbm-spot_rank"]
    assert _submit(synthetic_h5, out, "--models", ",".join(models), "--weights", "3,1",
                   "--submission", str(out / "given.csv")) == 0
    sub = pd.read_csv(out / "given.csv")
    want = 0.75 * _ranks(out, models[0], types) + 0.25 * _ranks(out, models[1], types)
    np.testing.assert_allclose(sub[types].to_numpy(), want, atol=1e-9)


def test_submit_follows_ids_not_file_order(out, synthetic_h5):
    assert _submit(synthetic_h5, out, "--models", "lgbm-spot_rank") == 0
    before = (out / "submission.csv").read_bytes()
    path = out / "predictions" / "lgbm-spot_rank" / "test.csv"
    f = pd.read_csv(path)
    f.sample(frac=1.0, random_state=0).to_csv(path, index=False)
    assert _submit(synthetic_h5, out, "--models", "lgbm-spot_rank") == 0
    assert (out / "submission.csv").read_bytes() == before


def test_submit_runs_as_a_script(out, synthetic_h5):
    """The Makefile calls ``python regress/submit.py`` (a path, not a module)."""
    proc = subprocess.run([sys.executable, "regress/submit.py", "--h5", str(synthetic_h5),
                           "--out", str(out), "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert pd.read_csv(out / "submission.csv")["ID"].iloc[0] == "S_4_0"


def test_submit_wrong_number_of_weights(out, synthetic_h5, capsys):
    assert _submit(synthetic_h5, out, "--models", "ridge-spot_rank,lgbm-spot_rank",
                   "--weights", "1") == 2
    assert "--weights" in capsys.readouterr().err
    assert not (out / "submission.csv").exists()


def test_submit_unknown_model(out, synthetic_h5, capsys):
    assert _submit(synthetic_h5, out, "--models", "svm-spot_rank") == 2
    assert "svm-spot_rank" in capsys.readouterr().err
    assert not (out / "submission.csv").exists()


def _drop_row(f: pd.DataFrame, types) -> pd.DataFrame:
    return f.drop(index=5)


def _add_nan(f: pd.DataFrame, types) -> pd.DataFrame:
    f.loc[3, types[2]] = np.nan
    return f


def _duplicate_row(f: pd.DataFrame, types) -> pd.DataFrame:
    return pd.concat([f, f.iloc[[7]]], ignore_index=True)


def _drop_type(f: pd.DataFrame, types) -> pd.DataFrame:
    return f.drop(columns=[types[1]])


@pytest.mark.parametrize("corrupt", [_drop_row, _add_nan, _duplicate_row, _drop_type])
@pytest.mark.parametrize("models", [["ridge-spot_rank"], ["ridge-spot_rank", "lgbm-spot_rank"]],
                         ids=["single", "ensemble"])
def test_bad_predictions_leave_the_submission_alone(out, synthetic_h5, corrupt, models,
                                                    capsys):
    _, types, _ = _expected(synthetic_h5)
    args = ["--models", ",".join(models)]
    assert _submit(synthetic_h5, out, *args) == 0
    before = {p: (out / p).read_bytes() for p in ("submission.csv", "predictions.h5ad")}
    path = out / "predictions" / "ridge-spot_rank" / "test.csv"
    corrupt(pd.read_csv(path), types).to_csv(path, index=False)
    capsys.readouterr()
    assert _submit(synthetic_h5, out, *args) == 2
    assert "hespot: " in capsys.readouterr().err
    for p, content in before.items():
        assert (out / p).read_bytes() == content, p
    assert sorted(q.name for q in out.iterdir() if q.name.startswith(".")) == []


# ---------------------------------------------------------------- the challenge's layout

CHALLENGE = SyntheticConfig(n_train=6, n_test=1, n_types=35, size=256, grid=6,
                            slide_prefix="S_", type_prefix="C", test_field="Test_Set",
                            pixel_size_um=None)


@pytest.mark.skipif(shutil.which("make") is None, reason="make not installed")
@pytest.mark.skipif(not (ROOT / ".venv" / ".installed").exists(),
                    reason="the Makefile's venv (.venv/.installed) is not set up")
def test_make_pipeline_on_the_challenge_layout(tmp_path):
    h5 = write_synthetic(tmp_path / "elucidata_ai_challenge_data.h5", CHALLENGE)
    with CanonicalH5(h5) as f:
        assert f.train_slides == [f"S_{i}" for i in range(1, 7)]
        assert f.test_slides == ["S_7"]
        assert f.cell_types == tuple(f"C{i}" for i in range(1, 36))
        assert "Test_Set" in f.spots("S_7").extra
        n_test = len(f.spots("S_7"))
    out = tmp_path / "out"
    # -o: never (re)install from here, even when pyproject.toml is newer than the stamp
    cmd = ["make", "--no-print-directory", "-o", ".venv/.installed", "pipeline",
           f"H5={h5}", f"OUT={out}", f"STORE={tmp_path / 'emb.zarr'}",
           "EMBED_ARGS=--backbones tiny_random --patch-px 32 --tta 1 --quiet",
           "REGRESS_ARGS=--features tiny_random --models ridge --quiet"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sub = pd.read_csv(out / "submission.csv")
    assert sub.shape == (n_test, 36)
    assert sub["ID"].tolist() == [f"S_7_{i}" for i in range(n_test)]
    assert list(sub.columns) == ["ID"] + [f"C{i}" for i in range(1, 36)]
    assert sub.iloc[:, 1:].to_numpy().min() >= 0 and sub.iloc[:, 1:].to_numpy().max() <= 1
    report = json.loads((out / "report.json").read_text())
    assert set(report["models"]) == {f"{m}-{t}" for m in ("constant", "ridge")
                                     for t in ("spot_rank", "type_rank")}
    assert (out / "predictions.h5ad").is_file()


# ---------------------------------------------------------------- the real sample (slow)

@pytest.mark.slow
def test_her2st_end_to_end(her2st_h5, tmp_path):
    store, out = tmp_path / "emb.zarr", tmp_path / "out"
    assert embed.run.main(["--h5", str(her2st_h5), "--store", str(store),
                           "--backbones", "efficientnet_lite0", "--tta", "1", "--quiet"]) == 0
    assert regress.run.main(["--h5", str(her2st_h5), "--store", str(store), "--out", str(out),
                             "--features", "efficientnet_lite0", "--models", "ridge",
                             "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    ridge = report["models"]["ridge-spot_rank"]["mean"]["spot"]
    const = report["models"]["constant-spot_rank"]["mean"]["spot"]
    assert ridge > const, (ridge, const)
    assert _submit(her2st_h5, out) == 0
    sub = pd.read_csv(out / "submission.csv")
    assert sub.shape == (179, 42)
    assert sub["ID"].tolist() == [f"C6_{i}" for i in range(179)]
    values = sub.iloc[:, 1:].to_numpy()
    assert values.min() >= 0 and values.max() <= 1
    # the model as a folder, applied to the test slide in a new store: the same values
    assert regress.fit.main(["--h5", str(her2st_h5), "--store", str(store), "--out", str(out),
                             "--quiet"]) == 0
    assert regress.predict.main(["--model", str(out / "model"), "--h5", str(her2st_h5),
                                 "--out", str(tmp_path / "pred"), "--quiet"]) == 0
    pred = pd.read_csv(tmp_path / "pred" / "rank_scores.csv")
    assert (pred["slide"] + "_" + pred["row"].astype(str)).tolist() == sub["ID"].tolist()
    assert np.abs(pred[sub.columns[1:]].to_numpy() - values).max() <= 1e-6
