"""The stage-1 run (embed.run) and its Zarr store (data.store): layout and attributes,
skipping finished slides, refusing changed settings or inputs, --overwrite, --stages,
--context, and bad input on the command line. All with the random ``tiny_random`` model on
64 px patches of the synthetic slides."""

from __future__ import annotations

import shutil
from dataclasses import replace
from importlib.metadata import version

import h5py
import numpy as np
import pytest
import zarr

from data.checksum import sha256_file
from data.errors import DataError
from data.h5 import CanonicalH5
from data.patches import crop_patches
from data.store import read_features, slide_attrs
from embed.backbones import get_backbone
from embed.config import EmbedConfig
from embed.device import select_device
from embed.extract import FeatureExtractor, preprocess
from embed.run import main, run
from embed.weights import WeightsError, build_model

BACKBONE = "tiny_random"
SLIDES = ("S_1", "S_4")  # a train and a test slide
N_SPOTS = 49
BATCH = 16
CHUNK = 20  # stored chunks of 20 spots, each run as a batch of 16 and one of 4


def _cfg(h5, store, **kw) -> EmbedConfig:
    base = EmbedConfig(h5=str(h5), store=str(store), backbones=(BACKBONE,), slides=SLIDES,
                       tta=8, patch_px=64, batch_spots=BATCH, chunk_spots=CHUNK, device="cpu",
                       precision="fp32",
                       prefetch=2, quiet=True)
    return replace(base, **kw)


def _argv(h5, store, *extra, slides=SLIDES) -> list[str]:
    return ["--h5", str(h5), "--store", str(store), "--backbones", BACKBONE,
            "--slides", ",".join(slides), "--tta", "8", "--patch-px", "64",
            "--batch-spots", str(BATCH), "--chunk-spots", str(CHUNK), "--device", "cpu",
            "--precision", "fp32", "--quiet", *extra]


def _group(store, slide):
    return zarr.open_group(str(store), mode="r")[f"{BACKBONE}/{slide}"]


def _snapshot(store):
    """Every array and the attributes of every slide, to prove a refused run changed nothing."""
    out = {}
    for slide in SLIDES:
        g = _group(store, slide)
        out[slide] = ({k: np.asarray(g[k][:]) for k in g.array_keys()}, dict(g.attrs))
    return out


def _assert_same(a, b):
    assert a.keys() == b.keys()
    for slide in a:
        arrays_a, attrs_a = a[slide]
        arrays_b, attrs_b = b[slide]
        assert attrs_a == attrs_b
        assert arrays_a.keys() == arrays_b.keys()
        for k in arrays_a:
            np.testing.assert_array_equal(arrays_a[k], arrays_b[k])


@pytest.fixture(scope="module")
def base(synthetic_h5, tmp_path_factory):
    """One finished run of two slides; tests that change it work on a copy."""
    store = tmp_path_factory.mktemp("embed") / "base.zarr"
    status = run(_cfg(synthetic_h5, store))
    return store, status


@pytest.fixture
def store_copy(base, tmp_path):
    store = tmp_path / "copy.zarr"
    shutil.copytree(base[0], store)
    return store


# ---- what a run writes ---------------------------------------------------------------------
def test_first_run_writes_every_slide(base):
    assert base[1] == {BACKBONE: {s: "written" for s in SLIDES}}


def test_store_layout(base):
    store, _ = base
    nf = get_backbone(BACKBONE).num_features
    for slide in SLIDES:
        g = _group(store, slide)
        assert sorted(g.array_keys()) == ["done", "features", "spot_index"]
        f = g["features"]
        assert f.shape == (N_SPOTS, nf) and f.dtype == np.float32
        assert f.chunks == (CHUNK, nf)
        values = f[:]
        assert np.all(np.isfinite(values))
        assert np.unique(values, axis=0).shape[0] == N_SPOTS  # every spot embedded
        np.testing.assert_array_equal(g["spot_index"][:], np.arange(N_SPOTS))
        assert g["spot_index"].dtype == np.int64
        np.testing.assert_array_equal(g["done"][:], np.ones(-(-N_SPOTS // CHUNK)))
        np.testing.assert_array_equal(read_features(store, BACKBONE, slide), values)


def test_store_attributes(base, synthetic_h5):
    store, _ = base
    _, winfo = build_model(get_backbone(BACKBONE))
    fingerprints = {}
    with CanonicalH5(synthetic_h5) as h5:
        for slide in SLIDES:
            fingerprints[slide] = h5.fingerprint(slide)
    for slide in SLIDES:
        attrs = slide_attrs(store, BACKBONE, slide)
        s = attrs["settings"]
        assert s["backbone"] == BACKBONE
        assert s["timm_id"] == "test_efficientnet"
        assert s["weights_sha256"] == winfo.sha256
        assert s["tta_views"] == 8
        assert s["crops_px"] == [64]
        assert s["input_size"] == 64
        assert s["stage_indices"] == []
        assert s["input_fingerprint"] == fingerprints[slide]
        assert s["dtype"] == "float32"
        assert s["n_spots"] == N_SPOTS and s["batch_spots"] == BATCH
        assert s["chunk_spots"] == CHUNK and s["runner"] == "jit"
        info = attrs["info"]
        assert info["weights_source"] == "random"
        assert "cpu" in info["device"]
        assert info["hespot_version"] == version("hespot")
        assert info["config"]["tta"] == 8 and info["config"]["backbones"] == [BACKBONE]
        assert info["h5"] == str(synthetic_h5)
        assert info["pixel_size_um"] == 1.0 and info["patch_um"] == [64.0]
        assert attrs["arrays"] == {"features": {"layer": "pooled", "crop_px": 64}}
    assert fingerprints["S_1"] != fingerprints["S_4"]


@pytest.mark.parametrize("runner, rtol", [("jit", 1e-5), ("eager", 1e-4)])
def test_features_equal_direct_extraction(base, synthetic_h5, runner, rtol):
    """The stored rows of a chunk are the extractor's output for that chunk's patches, with
    the run's runner (jit on a CPU) and, within float tolerance, the eager model."""
    store, _ = base
    backbone = get_backbone(BACKBONE)
    model, _ = build_model(backbone)
    ex = FeatureExtractor(model, backbone, select_device("cpu", "fp32"), 8, runner=runner)
    idx = np.arange(CHUNK, 2 * CHUNK)  # the second chunk: a batch of 16 and one of 4
    with CanonicalH5(synthetic_h5) as h5:
        patches = crop_patches(h5, "S_4", 64, idx)
    x = preprocess(patches, backbone)
    expected = np.concatenate([ex(x[:BATCH])["pooled"], ex(x[BATCH:])["pooled"]])
    stored = _group(store, "S_4")["features"][idx]
    np.testing.assert_allclose(stored, expected, rtol=rtol, atol=1e-7)


def test_second_run_skips(base, synthetic_h5, store_copy):
    before = _snapshot(store_copy)
    assert run(_cfg(synthetic_h5, store_copy)) == {BACKBONE: {s: "skipped" for s in SLIDES}}
    _assert_same(_snapshot(store_copy), before)


def test_default_slides_are_all(synthetic_h5, tmp_path):
    """No --slides: every train slide, then every test slide."""
    status = run(_cfg(synthetic_h5, tmp_path / "all.zarr", slides=(), tta=1))[BACKBONE]
    assert status == {s: "written" for s in ("S_1", "S_2", "S_3", "S_4")}
    assert list(status) == ["S_1", "S_2", "S_3", "S_4"]


# ---- refused changes and --overwrite -------------------------------------------------------
@pytest.mark.parametrize("flags, setting", [
    ("--tta 4", "tta_views"),
    ("--patch-px 48", "crops_px"),
    ("--batch-spots 8", "batch_spots"),
    ("--chunk-spots 8", "chunk_spots"),
    ("--runner eager", "runner"),
    ("--pad-mode edge", "pad_mode"),
])
def test_changed_setting_is_refused(synthetic_h5, store_copy, capsys, flags, setting):
    before = _snapshot(store_copy)
    capsys.readouterr()
    assert main(_argv(synthetic_h5, store_copy, *flags.split())) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err
    assert setting in err
    assert "S_1" in err
    _assert_same(_snapshot(store_copy), before)


def test_more_stages_or_crops_replace_the_group_and_fewer_find_it(synthetic_h5, store_copy):
    """Asking for stages (or more crops) than a group holds computes it again with all of
    them, the stored arrays alike (nothing is lost); asking again for fewer skips."""
    before = _group(store_copy, "S_1")["features"][:]
    assert main(_argv(synthetic_h5, store_copy, "--stages", "--context", "96")) == 0
    g = _group(store_copy, "S_1")
    assert {"features", "stages", "features_96px", "stages_96px"} <= set(g.array_keys())
    np.testing.assert_array_equal(g["features"][:], before)
    status = run(_cfg(synthetic_h5, store_copy))
    assert status == {BACKBONE: {s: "skipped" for s in SLIDES}}


def test_overwrite_recomputes(synthetic_h5, store_copy):
    before = _group(store_copy, "S_1")["features"][:]
    assert main(_argv(synthetic_h5, store_copy, "--tta", "4", "--overwrite")) == 0
    for slide in SLIDES:
        g = _group(store_copy, slide)
        assert g.attrs["settings"]["tta_views"] == 4
        assert np.all(g["done"][:] == 1)
    after = read_features(store_copy, BACKBONE, "S_1")
    assert after.shape == before.shape
    assert not np.allclose(after, before)
    # and the new settings are now the ones a plain rerun expects
    assert run(_cfg(synthetic_h5, store_copy, tta=4)) == {
        BACKBONE: {s: "skipped" for s in SLIDES}}


@pytest.mark.parametrize("change", ["pixel", "spot"])
def test_changed_input_is_refused(synthetic_h5, store_copy, tmp_path, capsys, change):
    h5 = tmp_path / "copy.h5"
    shutil.copy(synthetic_h5, h5)
    # an identical copy elsewhere is the same input
    assert run(_cfg(h5, store_copy)) == {BACKBONE: {s: "skipped" for s in SLIDES}}
    with h5py.File(h5, "r+") as f:
        if change == "pixel":
            d = f["images/Train/S_1"]
            d[100, 200, 1] = (int(d[100, 200, 1]) + 1) % 256
        else:
            d = f["spots/Train/S_1"]
            table = d[()]
            table["x"][5] += 1.0
            d[...] = table
    before = _snapshot(store_copy)
    capsys.readouterr()
    assert main(_argv(h5, store_copy, slides=["S_1"])) == 2
    err = capsys.readouterr().err
    assert "input_fingerprint" in err and "--overwrite" in err and "S_1" in err
    _assert_same(_snapshot(store_copy), before)
    # the other slide of the changed file is untouched and still accepted
    assert run(_cfg(h5, store_copy, slides=("S_4",))) == {BACKBONE: {"S_4": "skipped"}}


# ---- --stages and --context ----------------------------------------------------------------
def test_stages_and_context(synthetic_h5, tmp_path):
    store = tmp_path / "stages.zarr"
    rc = main(_argv(synthetic_h5, store, "--stages", "--context", "96", "--tta", "1",
                    slides=["S_4"]))
    assert rc == 0
    backbone = get_backbone(BACKBONE)
    model, _ = build_model(backbone)
    stage_dims = FeatureExtractor(model, backbone, select_device("cpu", "fp32"), 1,
                                  backbone.stage_indices).stage_dims()
    g = _group(store, "S_4")
    nf = backbone.num_features
    assert sorted(g.array_keys()) == ["done", "features", "features_96px", "spot_index",
                                      "stages", "stages_96px"]
    assert g["features"].shape == g["features_96px"].shape == (N_SPOTS, nf)
    assert g["stages"].shape == g["stages_96px"].shape == (N_SPOTS, stage_dims)
    for name in ("features", "features_96px", "stages", "stages_96px"):
        values = read_features(store, BACKBONE, "S_4", name)
        assert values.dtype == np.float32 and np.all(np.isfinite(values))
    s = g.attrs["settings"]
    assert s["crops_px"] == [64, 96]
    assert s["stage_indices"] == list(backbone.stage_indices)
    assert g.attrs["arrays"]["features_96px"] == {"layer": "pooled", "crop_px": 96}
    assert g.attrs["arrays"]["stages"]["stage_indices"] == list(backbone.stage_indices)
    assert g.attrs["info"]["patch_um"] == [64.0, 96.0]
    # the context crop sees other pixels
    assert not np.allclose(g["features"][:], g["features_96px"][:])
    assert s["tta_views"] == 1
    with pytest.raises(DataError, match="features_128px"):
        read_features(store, BACKBONE, "S_4", "features_128px")


# ---- bad input -----------------------------------------------------------------------------
def test_unknown_backbone(synthetic_h5, tmp_path, capsys):
    """A bad setting: one line, exit code 2, listing the known backbones."""
    argv = _argv(synthetic_h5, tmp_path / "s.zarr")
    argv[argv.index(BACKBONE)] = "no_such_net"
    assert main(argv) == 2
    msg = capsys.readouterr().err
    assert "Traceback" not in msg and len(msg.strip().splitlines()) == 1
    assert "no_such_net" in msg
    assert "known backbones" in msg and BACKBONE in msg and "efficientnet_lite0" in msg


def test_unknown_slide(synthetic_h5, tmp_path, capsys):
    store = tmp_path / "s.zarr"
    assert main(_argv(synthetic_h5, store, slides=["S_1", "S_9"])) == 2
    err = capsys.readouterr().err
    assert "S_9" in err and "no such slide" in err
    assert "S_1" in err  # the known slides are listed
    assert not (store / BACKBONE).exists()  # refused before anything was embedded


def test_missing_h5(tmp_path, capsys):
    assert main(_argv(tmp_path / "none.h5", tmp_path / "s.zarr")) == 2
    assert "none.h5" in capsys.readouterr().err


def test_bad_tta_flag(synthetic_h5, tmp_path):
    argv = _argv(synthetic_h5, tmp_path / "s.zarr")
    argv[argv.index("--tta") + 1] = "3"
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_bad_tta_config(synthetic_h5, tmp_path):
    with pytest.raises(ValueError, match="tta"):
        run(_cfg(synthetic_h5, tmp_path / "s.zarr", tta=3))


def test_file_backbone_without_weights(synthetic_h5, tmp_path):
    with pytest.raises(WeightsError, match="'uni'.*no --weights"):
        run(_cfg(synthetic_h5, tmp_path / "s.zarr", backbones=("uni",)))


def test_weights_file_recorded(synthetic_h5, tmp_path):
    """--weights: the file's source, path and sha256 reach the store."""
    import torch

    model, _ = build_model(get_backbone(BACKBONE))
    path = tmp_path / "tiny.pth"
    torch.save(model.state_dict(), path)
    store = tmp_path / "w.zarr"
    rc = main(_argv(synthetic_h5, store, "--weights", str(path), "--tta", "1",
                    slides=["S_4"]))
    assert rc == 0
    attrs = slide_attrs(store, BACKBONE, "S_4")
    assert attrs["info"]["weights_source"] == "file"
    assert attrs["info"]["weights_path"] == str(path)
    assert attrs["settings"]["weights_sha256"] == sha256_file(path)
