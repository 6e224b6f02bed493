"""The cheap parts of the training augmentation, on the device, on whole batches: the
dihedral flips, the two colour parts (``hsv``, ``jitter``) and the normalisation (CutMix,
:func:`embed.finetune.augment.cutmix`, runs on the device too). The parts that have no
device equivalent (``affine``, ``blur``, ``distort``, ``clahe``) stay in the loader's
worker processes (:data:`WORKER_PARTS`), which then ship uint8 patches: a quarter of the
float32 bytes, and no per-image Python for the rest.

Each part draws its parameters per image from the epoch's generator, as the
albumentations parts it replaces (:mod:`embed.finetune.augment`) do:

- ``flips``: horizontal flip, vertical flip, a quarter turn, p = 0.5 each;
- ``hsv``: hue +-10 of OpenCV's 180 (+-20 degrees), saturation +-20 and value +-10 of 255,
  p = 0.5;
- ``jitter``: brightness, contrast and saturation factors in [0.8, 1.2], hue +-0.2 of a
  turn, p = 0.5, in that order (ColorJitter shuffles the order per image).

The flips come after the worker's spatial parts instead of before them: the flips form a
group and the spatial parts' parameters are symmetric under it, so the distribution of
the training images is the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

#: the augmentation parts run here, on whole batches, and the ones left to the workers
DEVICE_PARTS = ("flips", "hsv", "jitter")
WORKER_PARTS = ("affine", "blur", "distort", "clahe")
EPS = 1e-8


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """float (B, 3, H, W) RGB in [0, 1] -> (B, 3, H, W) hue (turns, [0, 1)), saturation,
    value."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    d = delta.clamp_min(EPS)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    s = torch.where(maxc > 0, delta / maxc.clamp_min(EPS), torch.zeros_like(maxc))
    return torch.stack([h, s, maxc], 1)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv.unbind(1)
    h6 = torch.remainder(h, 1.0) * 6.0
    i = torch.floor(h6)
    f = h6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    sector = (i.long() % 6).unsqueeze(1)
    pick = [torch.stack(c, 1).gather(1, sector).squeeze(1) for c in
            ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))]
    return torch.stack(pick, 1)


def _chosen(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """bool (n,): which images a part with probability ``p`` applies to."""
    return torch.rand(n, generator=generator) < p


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def _per_image(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) on ``like``'s device and dtype."""
    return values.to(like.device, like.dtype).view(-1, 1, 1, 1)


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.to(a.device).view(-1, 1, 1, 1), a, b)


def flips(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per image: a horizontal flip, a vertical flip, a quarter turn, each with p = 0.5
    (square images)."""
    n = len(x)
    x = _where(_chosen(n, 0.5, generator), x.flip(-1), x)
    x = _where(_chosen(n, 0.5, generator), x.flip(-2), x)
    return _where(_chosen(n, 0.5, generator), x.transpose(-1, -2).flip(-1), x)


def hsv_shift(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Per image with probability ``p``: hue +-20 degrees, saturation +-20/255, value
    +-10/255 (albumentations' HueSaturationValue(10, 20, 10) on uint8)."""
    n = len(x)
    apply = _chosen(n, p, generator)
    dh = _per_image(_uniform(n, -10 / 180, 10 / 180, generator), x)[:, 0]
    ds = _per_image(_uniform(n, -20 / 255, 20 / 255, generator), x)[:, 0]
    dv = _per_image(_uniform(n, -10 / 255, 10 / 255, generator), x)[:, 0]
    h, s, v = rgb_to_hsv(x).unbind(1)
    out = hsv_to_rgb(torch.stack([h + dh, (s + ds).clamp(0, 1), (v + dv).clamp(0, 1)], 1))
    return _where(apply, out.clamp(0, 1), x)


def color_jitter(x: torch.Tensor, generator: torch.Generator, p: float = 0.5,
                 strength: float = 0.2) -> torch.Tensor:
    """Per image with probability ``p``: brightness, contrast and saturation factors in
    [1 - strength, 1 + strength], then a hue shift of +-strength of a turn
    (ColorJitter(0.2, 0.2, 0.2, 0.2))."""
    n = len(x)
    apply = _chosen(n, p, generator)
    bright, contrast, sat = (_per_image(_uniform(n, 1 - strength, 1 + strength, generator),
                                        x) for _ in range(3))
    hue = _per_image(_uniform(n, -strength, strength, generator), x)[:, 0]
    out = (x * bright).clamp(0, 1)
    grey = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1)
    out = ((out - grey.mean((-2, -1), keepdim=True)) * contrast
           + grey.mean((-2, -1), keepdim=True)).clamp(0, 1)
    grey = (0.299 * out[:, 0] + 0.587 * out[:, 1] + 0.114 * out[:, 2]).unsqueeze(1)
    out = ((out - grey) * sat + grey).clamp(0, 1)
    h, s, v = rgb_to_hsv(out).unbind(1)
    out = hsv_to_rgb(torch.stack([h + hue, s, v], 1)).clamp(0, 1)
    return _where(apply, out, x)


PARTS = {"flips": flips, "hsv": hsv_shift, "jitter": color_jitter}


@dataclass(frozen=True)
class BatchAugment:
    """uint8 (B, H, W, 3) patches on the device -> the model's float32 (B, 3, H, W) input:
    the chosen :data:`DEVICE_PARTS` (in that order; none for validation), then the
    backbone's normalisation."""

    parts: tuple[str, ...]
    mean: Sequence[float]
    std: Sequence[float]

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        for name in DEVICE_PARTS:
            if name in self.parts and generator is not None:
                x = PARTS[name](x, generator)
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std
