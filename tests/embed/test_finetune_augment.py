"""The fine-tuning transforms (albumentations 2.0.8) and CutMix."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch

from embed.backbones import get_backbone
from embed.extract import preprocess
from embed.finetune.augment import (
    AUGMENT_PARTS,
    NOISE_STD_RANGE,
    WINNING_AUGMENT,
    build_train_transform,
    build_valid_transform,
    cutmix,
    cutmix_box,
    paste_box,
    seed_transform,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _patches(n: int = 4, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("parts", [WINNING_AUGMENT, *[(p,) for p in AUGMENT_PARTS], ()])
def test_train_pipeline_runs_on_uint8_patches(parts):
    t = build_train_transform(parts, MEAN, STD, patch_px=64, seed=0)
    for patch in _patches():
        out = t(image=patch)["image"]
        assert isinstance(out, torch.Tensor)
        assert out.dtype == torch.float32 and out.shape == (3, 64, 64)
        assert torch.isfinite(out).all()


def test_winning_pipeline_has_the_recipe_in_order():
    t = build_train_transform(WINNING_AUGMENT, MEAN, STD, patch_px=64)
    names = [type(x).__name__ for x in t.transforms]
    assert names == ["HorizontalFlip", "VerticalFlip", "RandomRotate90", "Affine", "OneOf",
                     "OneOf", "CLAHE", "HueSaturationValue", "ColorJitter", "Normalize",
                     "ToTensorV2"]
    blur, distort = t.transforms[4], t.transforms[5]
    assert blur.p == distort.p == 0.7
    noise = [x for x in blur.transforms if isinstance(x, A.GaussNoise)][0]
    # variance 5..30 on the 0-255 scale -> std as a fraction of the range
    assert noise.std_range == pytest.approx((math.sqrt(5) / 255, math.sqrt(30) / 255))
    assert NOISE_STD_RANGE[1] ** 2 * 255**2 == pytest.approx(30)
    affine = t.transforms[3]
    assert affine.p == 0.9
    assert [type(x).__name__ for x in distort.transforms] == [
        "OpticalDistortion", "GridDistortion", "ElasticTransform"]


def test_unknown_part_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="known: flips"):
        build_train_transform(("flips", "sharpen"), MEAN, STD, 64)
    t = build_train_transform(("none",), MEAN, STD, 64)
    assert [type(x).__name__ for x in t.transforms] == ["Normalize", "ToTensorV2"]


def test_resize_to_model_input():
    t = build_train_transform(("flips",), MEAN, STD, patch_px=64, input_px=32)
    assert t(image=_patches()[0])["image"].shape == (3, 32, 32)
    v = build_valid_transform(MEAN, STD, patch_px=64, input_px=32)
    assert v(image=_patches()[0])["image"].shape == (3, 32, 32)


def test_valid_pipeline_matches_stage_1_preprocessing():
    backbone = get_backbone("efficientnet_lite0")
    patches = _patches(size=backbone.input_size)
    v = build_valid_transform(backbone.mean, backbone.std, backbone.input_size)
    ours = torch.stack([v(image=p)["image"] for p in patches])
    assert torch.allclose(ours, preprocess(patches, backbone), atol=1e-5)


def test_seeded_pipeline_replays():
    t = build_train_transform(WINNING_AUGMENT, MEAN, STD, 64)
    patch = _patches()[0]
    seed_transform(t, 7)
    a = [t(image=patch)["image"] for _ in range(3)]
    seed_transform(t, 7)
    b = [t(image=patch)["image"] for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])


# ---- CutMix -----------------------------------------------------------------------------
def _batch(n: int = 6, size: int = 20, types: int = 4):
    """Image i is filled with the value i + 1; targets are distinct rows summing to 1."""
    x = torch.arange(1, n + 1, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size,
                                                                           size).clone()
    y = torch.softmax(torch.randn(n, types, generator=torch.Generator().manual_seed(0)), 1)
    return x, y


@pytest.mark.parametrize("box", [(2, 3, 12, 9), (0, 0, 20, 20), (15, 15, 20, 20), (5, 5, 5, 9)])
def test_cutmix_mixes_targets_by_pasted_area_exactly(box):
    x, y = _batch()
    perm = torch.tensor([3, 0, 5, 1, 2, 4])
    x2, y2 = paste_box(x, y, perm, box)
    for i in range(len(x)):
        from_partner = (x2[i] == perm[i] + 1).float().mean()  # share of the partner's pixels
        expected = (1 - from_partner) * y[i] + from_partner * y[perm[i]]
        assert torch.allclose(y2[i], expected, atol=1e-7)
    area = (box[2] - box[0]) * (box[3] - box[1]) / 400
    assert float((x2[0] == 4).float().mean()) == pytest.approx(area)
    assert torch.equal(x, _batch()[0])  # inputs untouched


def test_cutmix_random_boxes_are_clipped_and_targets_stay_valid():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, bottom, right = cutmix_box(20, g)
        assert 0 <= top <= bottom <= 20 and 0 <= left <= right <= 20
    x, y = _batch()
    x2, y2 = cutmix(x, y, 1.0, torch.Generator().manual_seed(1))
    assert not torch.equal(x2, x)
    assert torch.allclose(y2.sum(1), torch.ones(len(y)))
    partner = [int(v) - 1 for v in x2[:, 0].flatten(1).max(1).values]  # any pasted value
    assert all(0 <= p < len(x) for p in partner)


def test_cutmix_probability():
    x, y = _batch()
    g = torch.Generator().manual_seed(0)
    x0, y0 = cutmix(x, y, 0.0, g)
    assert x0 is x and y0 is y
    mixed = sum(not torch.equal(cutmix(x, y, 0.5, g)[1], y) for _ in range(400))
    assert 150 < mixed < 250


def test_importing_the_augmentations_stays_offline():
    """albumentations' update check (a PyPI request at import) is off: with every socket
    refused and warnings as errors, importing embed.finetune.augment still works."""
    code = ("import socket, warnings\n"
            "def refuse(*a, **k): raise OSError('network used at import')\n"
            "socket.getaddrinfo = refuse; socket.socket.connect = refuse\n"
            "warnings.simplefilter('error')\n"
            "import embed.finetune.augment\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
