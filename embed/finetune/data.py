"""Patches and targets for fine-tuning: cropped once per slide and kept in memory.

:class:`SlidePatches` crops every spot of the requested slides once (``data.patches``,
window by window) into uint8 arrays, so no image is re-read in any epoch or fold.
:class:`SpotDataset` serves (transformed patch, target) pairs to a DataLoader; every
epoch's randomness (shuffling, albumentations in each worker) is derived from one seed,
so an epoch replays identically after a resume.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from data.h5 import CanonicalH5
from data.patches import crop_patches
from embed.finetune.augment import seed_transform
from regress.targets import transform_targets

log = logging.getLogger("hespot")


@dataclass
class SlidePatches:
    """Every spot's patch and table fields, per slide.

    Attributes:
        patch_px: side of the patches.
        patches: slide -> uint8 (n_spots, patch_px, patch_px, 3).
        Y: train slide -> float64 (n_spots, n_types) abundances.
        xy: slide -> float64 (n_spots, 2) pixel (x, y).
        spot_ids: slide -> (n_spots,) str.
        cell_types: the training table's cell types.
        fingerprints: slide -> sha256 of its table and image (for resume checks).
    """

    patch_px: int
    cell_types: tuple[str, ...] = ()
    patches: dict[str, np.ndarray] = field(default_factory=dict)
    Y: dict[str, np.ndarray] = field(default_factory=dict)
    xy: dict[str, np.ndarray] = field(default_factory=dict)
    spot_ids: dict[str, np.ndarray] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, h5: CanonicalH5, slides: Sequence[str], patch_px: int,
             pad_mode: str = "reflect") -> SlidePatches:
        """Crop every spot of ``slides`` once."""
        out = cls(patch_px, tuple(h5.cell_types))
        for slide in slides:
            t0 = time.perf_counter()
            table = h5.spots(slide)
            out.patches[slide] = crop_patches(h5, slide, patch_px, pad_mode=pad_mode)
            out.xy[slide] = np.stack([table.x, table.y], axis=1)
            out.spot_ids[slide] = table.spot_ids
            out.fingerprints[slide] = h5.fingerprint(slide)
            if table.Y is not None:
                out.Y[slide] = table.Y
            log.info("%s: %d patches of %d px cropped (%.1f s, %.0f MB)", slide, len(table),
                     patch_px, time.perf_counter() - t0, out.patches[slide].nbytes / 2**20)
        return out

    def targets_sha256(self) -> str:
        """sha256 over the cell-type names and every train slide's abundances (the image
        fingerprints leave them out: tiers of one dataset share images)."""
        h = hashlib.sha256("\n".join(self.cell_types).encode())
        for slide in sorted(self.Y):
            h.update(slide.encode())
            h.update(np.ascontiguousarray(self.Y[slide], dtype=np.float64).tobytes())
        return h.hexdigest()

    def stack(self, slides: Sequence[str], target: str) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (n, S, S, 3) patches and float32 (n, n_types) transformed targets.

        Targets are transformed per slide (``spot_rank`` is per spot anyway)."""
        X = np.concatenate([self.patches[s] for s in slides])
        Y = np.concatenate([transform_targets(self.Y[s], target) for s in slides])
        return X, Y.astype(np.float32)


class SpotDataset(Dataset):
    """(patch tensor float32 (3, H, W), target float32 (n_types,)) per spot.

    Args:
        patches: uint8 (n, S, S, 3); targets: float32 (n, n_types) or None (zeros).
        transform: an albumentations pipeline ending in ToTensorV2.
    """

    def __init__(self, patches: np.ndarray, targets: np.ndarray | None,
                 transform: Callable) -> None:
        self.patches = patches
        self.targets = targets if targets is not None else np.zeros((len(patches), 0),
                                                                     np.float32)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.transform(image=self.patches[i])["image"]
        return image, torch.from_numpy(self.targets[i])


def _seed_worker(worker_id: int) -> None:
    """Each worker's albumentations state from its torch seed (set by the loader from
    the epoch's generator), so workers differ and an epoch replays identically."""
    info = get_worker_info()
    if info is not None:
        seed_transform(info.dataset.transform, info.seed)


def epoch_loader(dataset: SpotDataset, batch_size: int, workers: int, seed: int,
                 shuffle: bool = True) -> DataLoader:
    """A DataLoader whose order and augmentations depend only on ``seed``.

    With ``workers == 0`` the transform is re-seeded here; otherwise each worker seeds its
    copy from the loader's seed. Training batches drop the last incomplete batch when
    there is more than one batch (BatchNorm fails on a batch of one).
    """
    generator = torch.Generator().manual_seed(seed)
    if workers == 0:
        seed_transform(dataset.transform, seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
                      generator=generator, worker_init_fn=_seed_worker,
                      drop_last=shuffle and len(dataset) > batch_size,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one training epoch of ``n`` spots (see :func:`epoch_loader`)."""
    return n // batch_size if n > batch_size else 1
