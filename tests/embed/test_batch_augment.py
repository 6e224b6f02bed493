"""The training augmentation split between the loader's workers and the device
(embed.finetune.batch_augment), run here on the CPU device: the same shapes, value ranges
and CutMix label mixing as the whole albumentations pipeline on one image at a time."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from embed.finetune.augment import (
    WINNING_AUGMENT,
    build_train_transform,
    build_worker_transform,
    cutmix,
)
from embed.finetune.batch_augment import (
    DEVICE_PARTS,
    WORKER_PARTS,
    BatchAugment,
    color_jitter,
    flips,
    hsv_shift,
    hsv_to_rgb,
    rgb_to_hsv,
)

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _patches(n: int = 8, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _whole(patches: np.ndarray, input_px: int | None = None) -> torch.Tensor:
    t = build_train_transform(WINNING_AUGMENT, MEAN, STD, patches.shape[1], input_px, seed=0)
    return torch.stack([t(image=p)["image"] for p in patches])


def _split(patches: np.ndarray, input_px: int | None = None, seed: int = 0) -> torch.Tensor:
    t = build_worker_transform(WINNING_AUGMENT, patches.shape[1], input_px, seed=0)
    images = torch.stack([torch.from_numpy(t(image=p)["image"]) for p in patches])
    assert images.dtype == torch.uint8  # the workers ship uint8
    return BatchAugment(DEVICE_PARTS, MEAN, STD)(images, torch.Generator().manual_seed(seed))


def _normalised_range() -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


@pytest.mark.parametrize("input_px", [None, 32])
def test_split_pipeline_gives_the_whole_pipelines_shapes_and_range(input_px):
    patches = _patches()
    whole, split = _whole(patches, input_px), _split(patches, input_px)
    assert split.shape == whole.shape and split.dtype == whole.dtype == torch.float32
    low, high = _normalised_range()
    for x in (whole, split):
        assert bool((x >= low - 1e-5).all()) and bool((x <= high + 1e-5).all())


def test_the_parts_are_split_without_loss():
    assert sorted(DEVICE_PARTS + WORKER_PARTS) == sorted(WINNING_AUGMENT)


def test_without_parts_only_the_normalisation_is_applied():
    """Validation's half: uint8 -> the stage-1 normalisation, nothing random."""
    patches = torch.from_numpy(_patches())
    x = BatchAugment((), MEAN, STD)(patches, None)
    want = (patches.permute(0, 3, 1, 2).float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)
            ) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(x, want, atol=1e-6)


def test_flips_give_one_of_the_eight_dihedral_views_of_each_image():
    x = torch.rand(16, 3, 8, 8)
    out = flips(x, torch.Generator().manual_seed(1))
    views = [x, x.flip(-1), x.flip(-2), x.flip(-1).flip(-2)]
    views += [v.transpose(-1, -2) for v in views]
    seen = set()
    for i in range(len(x)):
        match = [k for k, v in enumerate(views) if torch.equal(out[i], v[i])]
        assert match, i
        seen.add(match[0])
    assert len(seen) > 2  # per image, not one choice for the batch


def test_hsv_matches_colorsys_and_round_trips():
    x = torch.rand(4, 3, 16, 16)
    x[0, :, 0, 0] = 0.5  # grey: no hue
    x[1, :, 0, 0] = torch.tensor([0.2, 0.9, 0.9])  # a tie for the largest channel
    hsv = rgb_to_hsv(x)
    for b, i, j in [(0, 0, 0), (1, 0, 0), (2, 3, 5), (3, 15, 15)]:
        want = colorsys.rgb_to_hsv(*x[b, :, i, j].tolist())
        assert np.allclose(hsv[b, :, i, j].tolist(), want, atol=1e-6)
    assert torch.allclose(hsv_to_rgb(hsv), x, atol=1e-5)


def test_device_parts_change_images_and_replay_from_their_seed():
    images = torch.from_numpy(_patches(16))
    augment = BatchAugment(DEVICE_PARTS, MEAN, STD)
    a, b = (augment(images, torch.Generator().manual_seed(5)) for _ in range(2))
    plain = BatchAugment((), MEAN, STD)(images, None)
    assert torch.equal(a, b)
    changed = [not torch.allclose(a[i], plain[i]) for i in range(len(a))]
    assert sum(changed) >= len(a) // 2  # five draws at p = 0.5: 1 in 32 escapes them all


@pytest.mark.parametrize("part", [hsv_shift, color_jitter])
def test_colour_parts_stay_in_range_apply_per_image_and_p0_is_identity(part):
    x = torch.rand(32, 3, 8, 8)
    assert torch.equal(part(x, torch.Generator().manual_seed(0), p=0.0), x)
    out = part(x, torch.Generator().manual_seed(0), p=0.5)
    assert bool((out >= 0).all()) and bool((out <= 1).all())
    changed = [not torch.equal(out[i], x[i]) for i in range(len(x))]
    assert 0 < sum(changed) < len(x)


def test_cutmix_on_the_device_batch_mixes_labels_as_on_the_cpu_batch():
    """The same generator draws the same partners and box on either batch: the targets are
    mixed identically, and the pasted box holds the partner's pixels."""
    patches = _patches(6)
    y = torch.from_numpy(np.random.default_rng(2).dirichlet(np.ones(5), 6).astype(np.float32))
    whole, split = _whole(patches), _split(patches)
    xw, yw = cutmix(whole, y, 1.0, torch.Generator().manual_seed(7))
    xs, ys = cutmix(split, y, 1.0, torch.Generator().manual_seed(7))
    assert torch.equal(yw, ys)
    assert torch.allclose(ys.sum(1), torch.ones(6))
    changed = (xs != split).any(1)  # (B, H, W): where the box pasted other pixels
    g = torch.Generator().manual_seed(7)
    torch.rand((), generator=g)
    perm = torch.randperm(6, generator=g)
    for i in range(6):
        box = changed[i]
        if box.any():
            assert torch.equal(xs[i][:, box], split[perm[i]][:, box])
