"""Stage 1's stain and scale levers (issue 17): Macenko normalisation (``+macenko``), HED
jitter of the TTA views (``+hed``), crops in µm (``+110um``); each variant its own store
group, read by stage 2 and remade by a fitted model's spec. On tiny generated pixels and
the synthetic fixture with the random ``tiny_random`` model."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr

from data.errors import ConfigError
from data.store import FeatureSpec, read_features, split_group
from data.synthetic import SyntheticConfig, write_synthetic
from embed.backbones import REGISTRY, get_backbone
from embed.config import EmbedConfig, check_config, parse_item
from embed.device import select_device
from embed.extract import FeatureExtractor
from embed.run import main, run
from embed.stain import HE_REF, MAX_C_REF, fit_macenko, jitter_hed
from embed.weights import build_model

BACKBONE = "tiny_random"
STAINED = "tiny_random-macenko-hed"
ITEMS = ("tiny_random", "tiny_random+macenko", "tiny_random+hed+macenko+40um+64um")
FP32 = select_device("cpu", "fp32")


def _paint(he: np.ndarray, conc: np.ndarray) -> np.ndarray:
    """uint8 (n, 3) pixels of stain matrix ``he`` (3, 2) and concentrations (n, 2)."""
    return np.clip(np.rint(240 * np.exp(-conc @ he.T)), 0, 255).astype(np.uint8)


def _concentrations(rng: np.random.Generator, n: int = 20_000) -> np.ndarray:
    """(n, 2): mixtures, with 5 % pure haematoxylin and 5 % pure eosin pixels."""
    conc = rng.uniform(0.3, 1.6, size=(n, 2))
    k = n // 20
    conc[:k, 1] = 0
    conc[k:2 * k, 0] = 0
    return conc


# ---- Macenko -------------------------------------------------------------------------------
def test_macenko_recovers_a_known_stain_matrix():
    he = np.array([[0.55, 0.25], [0.75, 0.85], [0.37, 0.46]])
    he /= np.linalg.norm(he, axis=0)
    conc = _concentrations(np.random.default_rng(0))
    fit = fit_macenko(_paint(he, conc).reshape(100, 200, 3))
    assert not fit.identity
    cosines = (fit.he * he).sum(axis=0)
    assert np.all(cosines > 0.995), cosines
    np.testing.assert_allclose(fit.max_c, np.percentile(conc, 99, axis=0), rtol=0.1)


def test_macenko_of_reference_stains_is_about_identity():
    conc = _concentrations(np.random.default_rng(1))
    conc *= MAX_C_REF / np.percentile(conc, 99, axis=0)
    image = _paint(HE_REF, conc).reshape(4, 50, 100, 3)
    fit = fit_macenko(image)
    np.testing.assert_allclose(fit.he, HE_REF / np.linalg.norm(HE_REF, axis=0), atol=0.02)
    out = fit.apply(image)
    assert out.dtype == np.uint8 and out.shape == image.shape
    diff = np.abs(out.astype(int) - image.astype(int))
    assert diff.mean() < 3 and np.percentile(diff, 99) <= 10


def test_macenko_blank_patches(caplog):
    """A slide of blank glass is left as it is (a warning names it); a blank patch of a
    stained slide stays near white."""
    blank = np.full((8, 32, 32, 3), 245, np.uint8)
    blank[..., 0] = 250
    with caplog.at_level(logging.WARNING, logger="hespot"):
        fit = fit_macenko(blank, "file.h5, slide S_9")
    assert fit.identity and "S_9" in caplog.text
    np.testing.assert_array_equal(fit.apply(blank), blank)
    he = np.array([[0.55, 0.25], [0.75, 0.85], [0.37, 0.46]])
    stained = fit_macenko(_paint(he / np.linalg.norm(he, axis=0),
                                 _concentrations(np.random.default_rng(2))))
    out = stained.apply(blank)
    assert out.dtype == np.uint8 and out.min() >= 225


# ---- HED jitter ----------------------------------------------------------------------------
def test_hed_jitter_views():
    backbone = get_backbone(BACKBONE)
    x = torch.rand(3, 3, 16, 16) * 1.6 - 0.8        # normalised inputs of 3 patches
    stacked = torch.cat([x, x.flip(3), x, x])       # 4 views, view-major
    a = jitter_hed(stacked, 4, backbone.mean, backbone.std)
    b = jitter_hed(stacked, 4, backbone.mean, backbone.std)
    assert torch.equal(a, b) and a.shape == stacked.shape and a.dtype == stacked.dtype
    assert torch.equal(a[:3], stacked[:3])          # view 0 unperturbed
    views = a.reshape(4, 3, 3, 16, 16)
    assert not torch.allclose(views[2], stacked[6:9], atol=1e-3)   # jittered
    assert not torch.allclose(views[2], views[3], atol=1e-3)       # each view its own
    assert (views - stacked.reshape(4, 3, 3, 16, 16)).abs().max() < 0.5   # mild
    assert torch.equal(jitter_hed(x, 1, backbone.mean, backbone.std), x)


@pytest.mark.parametrize("stages", [False, True])
def test_hed_jit_equals_eager(stages):
    backbone = get_backbone(BACKBONE)
    model, _ = build_model(backbone)
    idx = backbone.stage_indices if stages else ()
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    eager = FeatureExtractor(model, backbone, FP32, 4, idx, "eager", 4, hed=True)(x)
    jit = FeatureExtractor(model, backbone, FP32, 4, idx, "jit", 4, hed=True)(x)
    plain = FeatureExtractor(model, backbone, FP32, 4, idx, "eager", 4)(x)
    assert eager.keys() == jit.keys()
    for k in eager:
        np.testing.assert_allclose(jit[k], eager[k], rtol=1e-4, atol=1e-5)
        assert not np.allclose(eager[k], plain[k], atol=1e-4)


# ---- the --backbones item ------------------------------------------------------------------
def test_backbone_items():
    job = parse_item("tiny_random+hed+stages+448+110um+2.5um+macenko")
    assert job.key == STAINED and job.name == BACKBONE and job.stages
    assert job.contexts == (448,) and job.contexts_um == (110.0, 2.5)
    assert parse_item("tiny_random-macenko+stages").key == "tiny_random-macenko"
    assert parse_item("tiny_random", contexts=(96, "110um")).contexts_um == (110.0,)
    with pytest.raises(ConfigError, match="macenko"):
        parse_item("tiny_random+vahadane")
    with pytest.raises(ConfigError, match="known backbones"):
        parse_item("tiny_random-vahadane")
    with pytest.raises(ConfigError, match="known backbones"):  # the name is looked up first
        parse_item("no_such_net+vahadane")
    # the stain levers' words are reserved: no registry name reads as a name + levers
    assert all(split_group(name) == (name, ()) for name in REGISTRY)
    cfg = EmbedConfig(backbones=("tiny_random+hed",), tta=1)
    with pytest.raises(ConfigError, match="--tta"):
        check_config(cfg)
    with pytest.raises(ConfigError, match="same group"):
        check_config(replace(cfg, tta=2, backbones=("tiny_random+hed", "tiny_random-hed+96")))
    with pytest.raises(ConfigError, match="positive"):
        check_config(replace(cfg, tta=2, backbones=("tiny_random+0um",)))


# ---- end to end on the fixture -------------------------------------------------------------
def _cfg(h5, store, **kw) -> EmbedConfig:
    base = EmbedConfig(h5=str(h5), store=str(store), backbones=ITEMS, tta=2, patch_px=64,
                       batch_spots=16, chunk_spots=20, device="cpu", quiet=True)
    return replace(base, **kw)


@pytest.fixture(scope="module")
def stain_store(synthetic_h5, tmp_path_factory):
    store = tmp_path_factory.mktemp("stain") / "embeddings.zarr"
    return store, run(_cfg(synthetic_h5, store))


def test_variants_are_their_own_groups(stain_store):
    store, status = stain_store
    keys = ["tiny_random", "tiny_random-macenko", STAINED]
    assert list(status) == keys
    assert all(set(s.values()) == {"written"} and len(s) == 4 for s in status.values())
    root = zarr.open_group(str(store), mode="r")
    assert sorted(root.group_keys()) == sorted(keys)
    g = root[f"{STAINED}/S_1"]
    assert sorted(g.array_keys()) == ["done", "features", "features_40um", "features_64um",
                                      "spot_index"]
    assert g.attrs["arrays"]["features_40um"] == {"layer": "pooled", "crop_px": 40,
                                                  "crop_um": 40.0}
    s = g.attrs["settings"]
    assert s["backbone"] == BACKBONE and s["crops_px"] == [64]
    assert s["crops_um"] == [[40.0, 40], [64.0, 64]]
    assert s["stain"]["levers"] == ["macenko", "hed"]
    assert "stain" not in root["tiny_random/S_1"].attrs["settings"]
    assert "crops_um" not in root["tiny_random/S_1"].attrs["settings"]
    # the 64 µm crop is the primary's 64 px at 1 µm/px: computed once, stored under both
    np.testing.assert_array_equal(g["features_64um"][:], g["features"][:])
    assert not np.allclose(g["features_40um"][:], g["features"][:])


def test_variants_differ_from_the_plain_backbone(stain_store):
    """+macenko changes the plain features; +hed (on top) changes +macenko's."""
    store, _ = stain_store
    plain, macenko, both = (read_features(store, key, "S_4")
                            for key in ("tiny_random", "tiny_random-macenko", STAINED))
    for values in (macenko, both):
        assert values.shape == plain.shape and np.all(np.isfinite(values))
    assert not np.allclose(macenko, plain, rtol=1e-3, atol=1e-4)
    assert not np.allclose(both, macenko, rtol=1e-3, atol=1e-4)


def test_resume_skips_and_other_crops_are_refused(stain_store, synthetic_h5, tmp_path, capsys):
    store, _ = stain_store
    copy = tmp_path / "copy.zarr"
    shutil.copytree(store, copy)
    status = run(_cfg(synthetic_h5, copy))
    assert all(set(s.values()) == {"skipped"} for s in status.values())
    argv = ["--h5", str(synthetic_h5), "--store", str(copy), "--backbones",
            "tiny_random+macenko+hed+40um+80um", "--tta", "2", "--patch-px", "64",
            "--batch-spots", "16", "--chunk-spots", "20", "--device", "cpu", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "crops_um" in err and "--overwrite" in err and STAINED in err


def test_um_crop_without_pixel_size_fails_before_work(tmp_path, capsys):
    h5 = write_synthetic(tmp_path / "nopx.h5", SyntheticConfig(n_train=1, n_test=1, size=128,
                                                              grid=2, pixel_size_um=None))
    store = tmp_path / "s.zarr"
    assert main(["--h5", str(h5), "--store", str(store), "--backbones", "tiny_random+110um",
                 "--patch-px", "64", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "nopx.h5" in err and "S_1" in err and "pixel_size_um" in err
    assert "+110um" in err and "px" in err and "--mpp" in err
    assert not (store / BACKBONE).exists()


def test_stage2_fits_and_predicts_on_a_variant(stain_store, synthetic_h5, tmp_path):
    """A model fitted on ``tiny_random-macenko-hed:features_40um`` names that group in its
    spec and remakes it on a new store with the same features."""
    import regress.fit
    import regress.predict
    import regress.run

    store, _ = stain_store
    spec = f"{STAINED}:features_40um"
    out = tmp_path / "out"
    assert regress.run.main(["--h5", str(synthetic_h5), "--store", str(store), "--out",
                             str(out), "--features", spec, "--models", "ridge",
                             "--targets", "spot_rank", "--quiet"]) == 0
    folder = tmp_path / "model"
    assert regress.fit.main(["--h5", str(synthetic_h5), "--store", str(store), "--out",
                             str(out), "--model-dir", str(folder), "--quiet"]) == 0
    (part,) = json.loads((folder / "model.json").read_text())["features"]
    assert part["backbone"] == STAINED and part["array"] == "features_40um"
    assert part["identity"]["contexts_um"] == [40.0, 64.0]
    assert part["crop_um"] == 40.0
    pred = tmp_path / "pred"
    assert regress.predict.main(["--h5", str(synthetic_h5), "--model", str(folder), "--out",
                                 str(pred), "--quiet"]) == 0
    slide = "S_4"
    new = read_features(pred / "embeddings.zarr", STAINED, slide, "features_40um")
    np.testing.assert_allclose(new, read_features(store, STAINED, slide, "features_40um"),
                               rtol=1e-5, atol=1e-6)
    assert FeatureSpec.parse(spec).backbone == STAINED
