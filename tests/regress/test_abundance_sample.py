"""Abundances, intervals and OOD warnings on the real her2st sample (slow): the maps of
the test slide hold proportions in X and the submitted values in layer rank_score; the
held-out patient B4 scores highest of the OOD folds; an H&E-only slide cut from the
test section is not flagged, the same image with its hue turned is."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image

import embed.run
import regress.fit
import regress.predict
import regress.run
import regress.submit

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "samples" / "her2st"

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings("ignore:The argument 'eval_set' is deprecated")]


def turn_hue(image: np.ndarray, turn: float = 0.5) -> np.ndarray:
    """uint8 (h, w, 3) with every pixel's hue turned by ``turn`` of a full circle."""
    hsv = rgb_to_hsv(image / 255.0)
    hsv[..., 0] = (hsv[..., 0] + turn) % 1.0
    return np.round(hsv_to_rgb(hsv) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def sample_out(her2st_h5, tmp_path_factory) -> Path:
    """regress (ridge, both targets, the abundance candidates the default run chooses
    between on the sample: sqrt_context, sqrt_mlp) on efficientnet_lite0 features of the
    sample, then submit and fit."""
    tmp = tmp_path_factory.mktemp("sample")
    store, out = tmp / "emb.zarr", tmp / "out"
    assert embed.run.main(["--h5", str(her2st_h5), "--store", str(store),
                           "--backbones", "efficientnet_lite0", "--tta", "1", "--quiet"]) == 0
    assert regress.run.main(["--h5", str(her2st_h5), "--store", str(store), "--out", str(out),
                             "--features", "efficientnet_lite0", "--models", "ridge",
                             "--abundance", "sqrt_context,sqrt_mlp", "--quiet"]) == 0
    assert regress.submit.main(["--h5", str(her2st_h5), "--out", str(out), "--quiet"]) == 0
    assert regress.fit.main(["--h5", str(her2st_h5), "--store", str(store), "--out", str(out),
                             "--quiet"]) == 0
    return out


def test_sample_maps_hold_proportions_and_the_submitted_ranks(her2st_h5, sample_out, tmp_path):
    sub = pd.read_csv(sample_out / "submission.csv")
    pred = tmp_path / "pred"
    assert regress.predict.main(["--model", str(sample_out / "model"), "--h5", str(her2st_h5),
                                 "--out", str(pred), "--quiet"]) == 0
    for folder in (sample_out, pred):
        adata = ad.read_h5ad(folder / "predictions.h5ad")
        X = np.asarray(adata.X)
        assert X.min() >= 0 and np.abs(X.sum(axis=1) - 1).max() <= 1e-4
        assert adata.obs_names.tolist() == sub["ID"].tolist()
        assert np.abs(adata.layers["rank_score"] - sub.iloc[:, 1:].to_numpy()).max() <= 1e-6
        assert (adata.layers["lower"] <= X + 1e-6).all()
        assert (adata.layers["upper"] >= X - 1e-6).all()
        assert set(adata.uns["hespot"]["slides"]) == {"C6"}
        ranks = pd.read_csv(folder / "rank_scores.csv")
        assert np.abs(ranks[sub.columns[1:]].to_numpy() - sub.iloc[:, 1:].to_numpy()).max() \
            <= 1e-12
    report = json.loads((sample_out / "report.json").read_text())
    held = report["abundance"]["ood"]["per_slide"]
    assert max(held, key=lambda s: held[s]["ood_score"]) == "B4", held
    card = (sample_out / "model" / "README.md").read_text()
    assert "2 patients' HER2-positive breast tumours" in card


def test_a_hue_turned_section_is_flagged(tmp_path, caplog):
    """A 2,400 px square of the test section C6 (never trained on; patient C, like four
    training sections) imported as an H&E-only slide with a Visium grid: not flagged; the
    same square with its hue turned half a circle: flagged, with one warning line. The
    model is the shipped one (the default recipe on the five training sections: what
    ``hespot map`` uses); efficientnet_lite0's pooled features alone (``sample_out``)
    place the turned square within the threshold that held-out B4 sets."""
    from data.importers.wsi import main as import_wsi

    with Image.open(SAMPLE / "images" / "C6.jpg") as im:
        w, h = im.size
        square = np.asarray(im.convert("RGB").crop((w // 2 - 1200, h // 2 - 1200,
                                                     w // 2 + 1200, h // 2 + 1200)))
    verdicts = {}
    for name, pixels in (("c6like", square), ("c6turned", turn_hue(square))):
        Image.fromarray(pixels).save(tmp_path / f"{name}.png")
        h5_path = tmp_path / f"{name}.h5"
        assert import_wsi(["--slide", str(tmp_path / f"{name}.png"), "--mpp", "0.69",
                           "--out", str(h5_path), "--quiet"]) == 0
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="hespot"):
            assert regress.predict.main(["--model", "her2st-breast", "--h5",
                                         str(h5_path), "--out", str(tmp_path / name),
                                         "--quiet"]) == 0
        verdicts[name] = ad.read_h5ad(tmp_path / name / "predictions.h5ad").uns[
            "hespot"]["slides"][name]
        warned = [r.getMessage() for r in caplog.records if "unlike the training" in
                  r.getMessage()]
        assert len(warned) == (name == "c6turned"), warned
    assert not verdicts["c6like"]["ood_flagged"], verdicts
    assert verdicts["c6turned"]["ood_flagged"], verdicts
