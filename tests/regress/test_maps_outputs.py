"""What the maps hold (regress.outputs.maps) as ``submit``, ``fit`` and ``predict`` write
them on the synthetic fixture: abundances in X and predictions.csv, the submitted rank
scores in layer rank_score and rank_scores.csv, intervals, OOD verdicts, the model card,
folders made before abundances, and an H&E-only slide in a stain unlike the training
slides' flagged."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import regress.predict
import regress.submit
from data.h5 import CanonicalH5

pytestmark = pytest.mark.filterwarnings("ignore:The argument 'eval_set' is deprecated")


@pytest.fixture(scope="module")
def submitted(synthetic_h5, tiny_regressed, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("submit")
    assert regress.submit.main(["--h5", str(synthetic_h5), "--out", str(tiny_regressed),
                                "--submission", str(out / "submission.csv"), "--h5ad",
                                str(out / "predictions.h5ad"), "--quiet"]) == 0
    return out


def _predict(h5, model, out, store=None) -> int:
    return regress.predict.main(["--h5", str(h5), "--model", str(model), "--out", str(out),
                                 *(["--store", str(store)] if store else []), "--quiet"])


def _check_maps(folder: Path, submission: pd.DataFrame) -> ad.AnnData:
    adata = ad.read_h5ad(folder / "predictions.h5ad")
    X = np.asarray(adata.X)
    assert X.min() >= 0 and np.abs(X.sum(axis=1) - 1).max() <= 1e-4
    assert set(adata.layers) >= {"rank_score", "lower", "upper"}
    values = submission.iloc[:, 1:].to_numpy()
    assert np.abs(adata.layers["rank_score"] - values).max() <= 1e-6
    assert (adata.layers["lower"] <= X + 1e-6).all() and (X <= adata.layers["upper"] + 1e-6).all()
    uns = adata.uns["hespot"]
    assert uns["X"] == "abundance" and "sum to 1" in uns["units"]
    for verdict in uns["slides"].values():
        assert set(verdict) == {"ood_score", "ood_threshold", "ood_flagged", "flagged_spots"}
    assert "ood_score" in adata.obs
    ranks = pd.read_csv(folder / "rank_scores.csv")
    assert np.abs(ranks[submission.columns[1:]].to_numpy() - values).max() <= 1e-12
    abundances = pd.read_csv(folder / "predictions.csv")
    np.testing.assert_allclose(abundances[submission.columns[1:]].to_numpy(), X, atol=1e-6)
    return adata


def test_submit_writes_abundances_beside_the_rank_scores(submitted):
    adata = _check_maps(submitted, pd.read_csv(submitted / "submission.csv"))
    assert list(adata.uns["hespot"]["slides"]) == ["S_4"]


def test_predict_gives_the_run_s_abundances_and_logs_the_card(synthetic_h5, fitted, tiny_store,
                                                             tiny_regressed, submitted,
                                                             tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="hespot"):
        assert _predict(synthetic_h5, fitted, tmp_path, tiny_store) == 0
    meta = json.loads((fitted / "model.json").read_text())
    assert meta["card_summary"] in caplog.text
    _check_maps(tmp_path, pd.read_csv(submitted / "submission.csv"))
    run = pd.read_csv(submitted / "predictions.csv")
    mine = pd.read_csv(tmp_path / "predictions.csv")
    types = meta["cell_types"]
    assert np.abs(run[types].to_numpy() - mine[types].to_numpy()).max() <= 1e-9


def test_model_folder_holds_the_abundance_model_and_its_card(fitted, tiny_regressed):
    meta = json.loads((fitted / "model.json").read_text())
    report = json.loads((tiny_regressed / "report.json").read_text())
    ab = meta["abundance"]
    assert meta["format"] == 2 and ab["name"] == report["abundance"]["chosen"]
    assert set(ab["files"]) | {"README.md"} <= set(meta["files"])
    assert ab["check_max_abs_diff_vs_test_csv"] <= 1e-9
    card = (fitted / "README.md").read_text()
    for words in ("## What it predicts", "1. C1, 2. C2", "## Training slides", "S_1",
                  "## Leave-one-slide-out scores", "TV training mean", "coverage",
                  "## Out-of-distribution warning", "## Stage 1", "tiny_random",
                  "`hespot fit --h5", "## Limits", "Trained on 3 sections"):
        assert words in card, words
    assert card.splitlines()[2] == meta["card_summary"]


def test_an_altered_card_is_refused(synthetic_h5, fitted, tmp_path, capsys):
    copy = Path(shutil.copytree(fitted, tmp_path / "model"))
    (copy / "README.md").write_text("edited")
    assert _predict(synthetic_h5, copy, tmp_path / "out") == 2
    assert "README.md" in capsys.readouterr().err


def test_a_folder_made_before_abundances_predicts_rank_scores(synthetic_h5, fitted, tiny_store,
                                                              submitted, tmp_path, caplog):
    old = Path(shutil.copytree(fitted, tmp_path / "old"))
    meta = json.loads((old / "model.json").read_text())
    for name in [*meta["abundance"]["files"], "README.md"]:
        (old / name).unlink()
        del meta["files"][name]
    for key in ("abundance", "card_summary", "command", "train_sources"):
        del meta[key]
    (old / "model.json").write_text(json.dumps({**meta, "format": 1}))
    out = tmp_path / "pred"
    with caplog.at_level(logging.WARNING, logger="hespot"):
        assert _predict(synthetic_h5, old, out, tiny_store) == 0
    lines = [r.getMessage() for r in caplog.records if "hespot fit" in r.getMessage()]
    assert len(lines) == 1 and "abundances" in lines[0] and "\n" not in lines[0]
    assert not (out / "predictions.csv").exists()
    sub = pd.read_csv(submitted / "submission.csv")
    ranks = pd.read_csv(out / "rank_scores.csv")[sub.columns[1:]].to_numpy()
    assert np.abs(ranks - sub.iloc[:, 1:].to_numpy()).max() <= 1e-12
    adata = ad.read_h5ad(out / "predictions.h5ad")
    assert adata.uns["hespot"]["X"] == "rank_score" and "hespot fit" in adata.uns["hespot"][
        "units"]


def test_a_slide_in_another_stain_is_flagged(synthetic_h5, fitted, tmp_path, caplog):
    """The test slide's image (like the training slides) as an H&E-only slide is not
    flagged; the same image darkened to 40 % (a stain unlike any training slide's) is,
    with one warning line. (The hue turn is tested on the real sample, with a real
    backbone: the fixture's random palette covers every hue, and tiny_random's random
    filters barely see a hue turn of it.)"""
    from data.importers.wsi import main as import_wsi

    with CanonicalH5(synthetic_h5) as h5:
        slide = h5.test_slides[0]
        img = h5.image(slide)
        h, w = img.shape
        image, table = img.read_window(0, h, 0, w), h5.spots(slide)
    pd.DataFrame({"x": table.x, "y": table.y}).to_csv(tmp_path / "spots.csv", index=False)
    verdicts = {}
    for name, pixels in (("like", image), ("dark", (image * 0.4).astype(np.uint8))):
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        h5_path = tmp_path / f"{name}.h5"
        assert import_wsi(["--slide", str(tmp_path / f"{name}.png"), "--spots",
                           str(tmp_path / "spots.csv"), "--mpp", "1.0", "--out", str(h5_path),
                           "--quiet"]) == 0
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hespot"):
            assert _predict(h5_path, fitted, tmp_path / f"pred_{name}") == 0
        adata = ad.read_h5ad(tmp_path / f"pred_{name}" / "predictions.h5ad")
        verdicts[name] = adata.uns["hespot"]["slides"][name]
        warned = [r.getMessage() for r in caplog.records if "unlike the training" in
                  r.getMessage()]
        assert len(warned) == (1 if name == "dark" else 0), warned
        assert all(name in line and "threshold" in line for line in warned)
    assert not verdicts["like"]["ood_flagged"]
    assert verdicts["dark"]["ood_flagged"] and verdicts["dark"]["flagged_spots"] > 0
