"""The fine-tuning recipe's image transforms (albumentations 2.0.8) and CutMix.

The training pipeline is built from named parts (``AUGMENT_PARTS``), each switchable from
the config (``--augment flips,affine`` or ``--augment none``); the full "winning" recipe
is every part, in this order:

- ``flips``: HorizontalFlip, VerticalFlip, RandomRotate90 (p=0.5 each);
- ``affine``: Affine(scale 0.9-1.1, translate +-10 %, rotate +-25 deg, shear +-7 deg, p=0.9);
- ``blur``: OneOf(MotionBlur(5), MedianBlur(5), GaussianBlur(5), GaussNoise(variance 5-30
  on the 0-255 scale)), p=0.7;
- ``distort``: OneOf(OpticalDistortion(1.0), GridDistortion(5, 1.0), ElasticTransform(3)),
  p=0.7;
- ``clahe``: CLAHE(clip 4.0), p=0.7;
- ``hsv``: HueSaturationValue(10, 20, 10), p=0.5;
- ``jitter``: ColorJitter(0.2, 0.2, 0.2, 0.2), p=0.5;

then Normalize (the backbone's mean/std) and ToTensorV2. The validation pipeline is
Normalize + ToTensorV2 (plus a Resize in both when the model input differs from the patch).

Training splits this pipeline in two: the loader's workers run the parts with no device
equivalent (:func:`build_worker_transform`: affine, blur, distort, CLAHE) and ship uint8;
flips, colour, normalisation and CutMix run on the device on whole batches
(:mod:`embed.finetune.batch_augment`). :func:`build_train_transform` stays the whole
pipeline on one image, the reference the split is tested against.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence

# albumentations asks PyPI for its latest version at import (up to 2 s, then a warning,
# where the network is closed: Kaggle's offline notebooks, our GPU machines). hespot runs
# offline, so the check is off unless the user set the variable themselves.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

from data.errors import ConfigError
from embed.finetune.batch_augment import WORKER_PARTS

# GaussNoise in albumentations 2.x takes the noise std as a fraction of the value range:
# a variance of 5..30 on the 0-255 scale is a std of sqrt(5)/255 .. sqrt(30)/255.
NOISE_STD_RANGE = (math.sqrt(5.0) / 255.0, math.sqrt(30.0) / 255.0)


def _flips() -> list[A.BasicTransform]:
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]


def _affine() -> list[A.BasicTransform]:
    return [A.Affine(scale=(0.9, 1.1), translate_percent=(-0.1, 0.1), rotate=(-25, 25),
                     shear=(-7, 7), p=0.9)]


def _blur() -> list[A.BasicTransform]:
    return [A.OneOf([A.MotionBlur(blur_limit=5), A.MedianBlur(blur_limit=5),
                     A.GaussianBlur(blur_limit=5), A.GaussNoise(std_range=NOISE_STD_RANGE)],
                    p=0.7)]


def _distort() -> list[A.BasicTransform]:
    return [A.OneOf([A.OpticalDistortion(distort_limit=1.0),
                     A.GridDistortion(num_steps=5, distort_limit=1.0),
                     A.ElasticTransform(alpha=3)], p=0.7)]


def _clahe() -> list[A.BasicTransform]:
    return [A.CLAHE(clip_limit=4.0, p=0.7)]


def _hsv() -> list[A.BasicTransform]:
    return [A.HueSaturationValue(hue_shift_limit=10, sat_shift_limit=20, val_shift_limit=10,
                                 p=0.5)]


def _jitter() -> list[A.BasicTransform]:
    return [A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.2, p=0.5)]


AUGMENT_PARTS: dict[str, Callable[[], list[A.BasicTransform]]] = {
    "flips": _flips, "affine": _affine, "blur": _blur, "distort": _distort,
    "clahe": _clahe, "hsv": _hsv, "jitter": _jitter,
}
WINNING_AUGMENT = tuple(AUGMENT_PARTS)


def check_augment(parts: Sequence[str]) -> tuple[str, ...]:
    """The parts, validated; ``("none",)`` or ``()`` means no augmentation.

    Raises:
        ConfigError: (a ValueError) an unknown part; the message lists the known ones.
    """
    parts = tuple(p for p in parts if p != "none")
    unknown = [p for p in parts if p not in AUGMENT_PARTS]
    if unknown:
        raise ConfigError(f"unknown augmentation part(s) {unknown}; known: "
                         f"{', '.join(AUGMENT_PARTS)} (or none)")
    return parts


def _tail(mean: Sequence[float], std: Sequence[float], patch_px: int,
          input_px: int | None) -> tuple[list, list]:
    head = [A.Resize(input_px, input_px)] if input_px and input_px != patch_px else []
    return head, [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0),
                  ToTensorV2()]


def build_train_transform(parts: Sequence[str], mean: Sequence[float], std: Sequence[float],
                          patch_px: int, input_px: int | None = None,
                          seed: int | None = None) -> A.Compose:
    """The training pipeline: uint8 (S, S, 3) -> float32 tensor (3, input, input).

    Args:
        parts: names from ``AUGMENT_PARTS``, applied in the order of that table.
        mean, std: the backbone's normalisation of [0, 1] RGB.
        patch_px: side of the cropped patches; input_px: model input side (None: same).
        seed: albumentations' own random state (see :func:`seed_transform`).
    """
    chosen = check_augment(parts)
    resize, tail = _tail(mean, std, patch_px, input_px)
    body = [t for name in AUGMENT_PARTS if name in chosen for t in AUGMENT_PARTS[name]()]
    return A.Compose(resize + body + tail, seed=seed)


def build_worker_transform(parts: Sequence[str], patch_px: int, input_px: int | None = None,
                           seed: int | None = None) -> A.Compose:
    """The training pipeline's worker half: uint8 (S, S, 3) -> uint8 (input, input, 3),
    the chosen parts that have no device equivalent (``batch_augment.WORKER_PARTS``), in
    the order of ``AUGMENT_PARTS``, after a Resize when ``input_px`` differs."""
    chosen = check_augment(parts)
    resize, _ = _tail((0, 0, 0), (1, 1, 1), patch_px, input_px)
    body = [t for name in AUGMENT_PARTS if name in chosen and name in WORKER_PARTS
            for t in AUGMENT_PARTS[name]()]
    return A.Compose(resize + body, seed=seed)


def build_valid_transform(mean: Sequence[float], std: Sequence[float], patch_px: int,
                          input_px: int | None = None) -> A.Compose:
    """Normalize + ToTensorV2 (after a Resize when ``input_px`` differs from the patch)."""
    resize, tail = _tail(mean, std, patch_px, input_px)
    return A.Compose(resize + tail, seed=0)


def seed_transform(transform: Callable, seed: int) -> None:
    """Reset an albumentations pipeline's random state (it ignores numpy's global seed)."""
    if isinstance(transform, A.BaseCompose):
        transform.set_random_seed(int(seed) % 2**32)


# ---- CutMix --------------------------------------------------------------------------
def cutmix_box(size: int, generator: torch.Generator) -> tuple[int, int, int, int]:
    """A random box (top, left, bottom, right) in a ``size`` x ``size`` image.

    As in the CutMix paper with alpha = 1: ``lam ~ U(0, 1)``, a box of side
    ``size * sqrt(1 - lam)`` at a uniform centre, clipped at the borders (targets are mixed
    by the clipped area, see :func:`paste_box`).
    """
    lam = float(torch.rand((), generator=generator))
    side = int(round(size * math.sqrt(1.0 - lam)))
    cy, cx = (int(v) for v in torch.randint(0, size, (2,), generator=generator))
    top, bottom = max(cy - side // 2, 0), min(cy + side - side // 2, size)
    left, right = max(cx - side // 2, 0), min(cx + side - side // 2, size)
    return top, left, bottom, right


def paste_box(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor,
              box: tuple[int, int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste ``box`` of ``x[perm]`` into ``x``; mix targets by the pasted area.

    Args:
        x: float (B, C, H, W) images; y: float (B, T) targets; perm: (B,) partner indices.
        box: (top, left, bottom, right) in pixels.

    Returns:
        (mixed images, mixed targets): ``y' = (1 - a) y + a y[perm]`` where ``a`` is the box
        area over the image area. ``x`` and ``y`` are not modified.
    """
    top, left, bottom, right = box
    area = max(bottom - top, 0) * max(right - left, 0) / (x.shape[-2] * x.shape[-1])
    x = x.clone()
    x[:, :, top:bottom, left:right] = x[perm, :, top:bottom, left:right]
    return x, (1.0 - area) * y + area * y[perm]


def cutmix(x: torch.Tensor, y: torch.Tensor, p: float, generator: torch.Generator
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """With probability ``p``, CutMix the batch (partners: a random permutation)."""
    if p <= 0 or len(x) < 2 or float(torch.rand((), generator=generator)) >= p:
        return x, y
    perm = torch.randperm(len(x), generator=generator)
    box = cutmix_box(x.shape[-1], generator)
    return paste_box(x, y, perm.to(x.device), box)
