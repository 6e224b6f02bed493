"""Dihedral TTA (embed.tta) and the feature extractor (embed.extract): view sets, shapes, and
rotation / flip invariance of the averaged features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embed.backbones import get_backbone
from embed.device import DeviceChoice
from embed.extract import FeatureExtractor, mean_std_pool, preprocess
from embed.tta import TTA_CHOICES, average_views, dihedral_views, stack_views
from embed.weights import build_model

FP32_CPU = DeviceChoice(torch.device("cpu"), None, False)
# channels_last: the same values (test_channels_last_matches_plain), several times faster
# on CPU for the random test model
FP32_CPU_CL = DeviceChoice(torch.device("cpu"), None, True)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ---- view sets and shapes --------------------------------------------------------------
@pytest.mark.parametrize("n", TTA_CHOICES)
def test_dihedral_views_sizes(n):
    views = dihedral_views(n)
    assert len(views) == n
    assert len(set(views)) == n
    assert views[0] == (0, False)
    assert all(k in range(4) and isinstance(f, bool) for k, f in views)


def test_dihedral_views_8_is_the_whole_group():
    assert set(dihedral_views(8)) == {(k, f) for k in range(4) for f in (False, True)}
    assert set(dihedral_views(4)) == {(k, False) for k in range(4)}
    assert set(dihedral_views(2)) == {(0, False), (0, True)}


@pytest.mark.parametrize("n", [0, 3, 5, 16])
def test_dihedral_views_invalid(n):
    with pytest.raises(ValueError, match="TTA"):
        dihedral_views(n)


@pytest.mark.parametrize("n", TTA_CHOICES)
def test_stack_and_average_shapes(n):
    x = torch.randn(3, 3, 10, 10)
    stacked = stack_views(x, n)
    assert stacked.shape == (n * 3, 3, 10, 10)
    assert torch.equal(stacked[:3], x)  # view-major: the identity view comes first
    feats = torch.randn(n * 3, 7)
    assert average_views(feats, n).shape == (3, 7)
    # averaging the same per-patch vector over its views gives it back
    same = torch.arange(21.0).reshape(3, 7).repeat(n, 1)
    torch.testing.assert_close(average_views(same, n), torch.arange(21.0).reshape(3, 7))


def test_stack_views_8_distinct_and_view_major():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    stacked = stack_views(x, 8)
    views = [stacked[i * 2:(i + 1) * 2] for i in range(8)]
    for i in range(8):
        for j in range(i + 1, 8):
            assert not torch.equal(views[i], views[j])
    for v, (k, flip) in zip(views, dihedral_views(8), strict=True):
        ref = torch.flip(x, dims=(3,)) if flip else x
        assert torch.equal(v, torch.rot90(ref, k, dims=(2, 3)))


def test_mean_std_pool():
    f = torch.randn(2, 5, 4, 6)
    out = mean_std_pool(f)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out[:, :5], f.mean(dim=(2, 3)))
    torch.testing.assert_close(out[:, 5:], f.std(dim=(2, 3), unbiased=False))


def test_preprocess_resizes_and_normalises():
    b = get_backbone("tiny_random")
    patches = np.full((2, 80, 80, 3), 255, np.uint8)
    x = preprocess(patches, b)
    assert x.shape == (2, 3, b.input_size, b.input_size) and x.dtype == torch.float32
    expected = (1 - torch.tensor(b.mean)) / torch.tensor(b.std)
    torch.testing.assert_close(x[0, :, 5, 5], expected)


# ---- invariance with a real forward pass ---------------------------------------------------
@pytest.fixture(scope="module")
def patches():
    """Two asymmetric uint8 80 px patches (resized to the 64 px input by preprocess)."""
    rng = np.random.default_rng(3)
    p = rng.integers(0, 256, (2, 80, 80, 3), dtype=np.uint8)
    p[:, :20, :40] //= 4  # a dark asymmetric corner
    return p


def _features(tiny, patches, n_views, stages=()):
    backbone, model = tiny
    ex = FeatureExtractor(model, backbone, FP32_CPU_CL, n_views, stages)
    return ex, ex(preprocess(patches, backbone))


def _rot90(p):
    return np.ascontiguousarray(np.rot90(p, 1, axes=(1, 2)))


def _flip(p):
    return np.ascontiguousarray(p[:, :, ::-1])


@pytest.fixture(scope="module")
def pooled(tiny, patches):
    """{(n_views, "id" | "rot90" | "flip"): pooled features}, computed once."""
    inputs = {"id": patches, "rot90": _rot90(patches), "flip": _flip(patches)}
    return {(n, t): _features(tiny, p, n)[1]["pooled"]
            for n in TTA_CHOICES for t, p in inputs.items()}


@pytest.mark.parametrize("n_views, transform, invariant", [
    (8, "rot90", True), (8, "flip", True),
    (4, "rot90", True), (4, "flip", False),
    (2, "flip", True), (2, "rot90", False),
    (1, "rot90", False), (1, "flip", False),
])
def test_tta_invariance(pooled, n_views, transform, invariant):
    base, moved = pooled[n_views, "id"], pooled[n_views, transform]
    assert base.shape == (2, get_backbone("tiny_random").num_features)
    assert base.dtype == np.float32
    rel = _rel(moved, base)
    if invariant:
        assert rel < 1e-4, rel
    else:
        assert rel > 1e-3, rel


def test_stages_shape_and_invariance(tiny, patches):
    backbone, _ = tiny
    ex, out = _features(tiny, patches, 8, backbone.stage_indices)
    assert set(out) == {"pooled", "stages"}
    assert out["stages"].shape == (2, ex.stage_dims())
    assert out["stages"].dtype == np.float32
    assert ex.stage_dims() > 0
    # layout: [mean, std] of each stage in turn; the std parts are >= 0
    chans = [ex.model.feature_info[i]["num_chs"] for i in backbone.stage_indices]
    start = 0
    for c in chans:
        assert np.all(out["stages"][:, start + c:start + 2 * c] >= 0)
        start += 2 * c
    assert start == ex.stage_dims()
    # pooled features from the intermediates path equal the plain forward's
    _, plain = _features(tiny, patches, 8)
    np.testing.assert_allclose(out["pooled"], plain["pooled"], rtol=1e-5, atol=1e-7)
    _, rotated = _features(tiny, _rot90(patches), 8, backbone.stage_indices)
    assert _rel(rotated["stages"], out["stages"]) < 1e-4
    assert _rel(rotated["pooled"], out["pooled"]) < 1e-4


def test_channels_last_matches_plain(tiny, patches):
    backbone, _ = tiny
    x = preprocess(patches, backbone)
    a = FeatureExtractor(build_model(backbone)[0], backbone, FP32_CPU, 2)(x)["pooled"]
    cl = DeviceChoice(torch.device("cpu"), None, True)
    b = FeatureExtractor(build_model(backbone)[0], backbone, cl, 2)(x)["pooled"]
    assert _rel(a, b) < 1e-4
