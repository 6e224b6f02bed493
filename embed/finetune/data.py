"""Patches and targets for fine-tuning: cropped once per slide and kept in memory.

:class:`SlidePatches` crops every spot of the requested slides once (``data.patches``,
window by window) into uint8 arrays, so no image is re-read in any epoch or fold.
:class:`SpotDataset` serves (transformed patch, target) pairs to a DataLoader whose
workers live as long as the fold (:func:`fold_loader`); every epoch's order and every
image's augmentation seed come from the epoch's seed (:class:`SeededOrder`), so an epoch
replays identically after a resume, whatever the number of workers.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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
    """(patch, target float32 (n_types,)) per spot: the patch as ``transform`` makes it, a
    float32 (3, H, W) tensor (a pipeline ending in ToTensorV2) or a uint8 (H, W, 3) one
    (the workers' half of the training pipeline, :func:`build_worker_transform`).

    Args:
        patches: uint8 (n, S, S, 3); targets: float32 (n, n_types) or None (zeros).
        transform: an albumentations pipeline.

    An item is a spot's index, or (index, seed): the transform is then re-seeded first, so
    the image does not depend on which worker makes it.
    """

    def __init__(self, patches: np.ndarray, targets: np.ndarray | None,
                 transform: Callable) -> None:
        self.patches = patches
        self.targets = targets if targets is not None else np.zeros((len(patches), 0),
                                                                     np.float32)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        i, seed = item if isinstance(item, tuple) else (item, None)
        if seed is not None:
            seed_transform(self.transform, seed)
        image = self.transform(image=self.patches[i])["image"]
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        return image, torch.from_numpy(self.targets[i])


class SeededOrder(Sampler):
    """The training order of an epoch: a permutation of the ``n`` spots, each paired with
    its own augmentation seed, both drawn from the seed :meth:`set_epoch` gives."""

    def __init__(self, n: int) -> None:
        self.n, self.seed = n, 0

    def set_epoch(self, seed: int) -> None:
        self.seed = seed

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        order, seeds = rng.permutation(self.n), rng.integers(0, 2**32, self.n)
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))

    def __len__(self) -> int:
        return self.n


def fold_loader(dataset: SpotDataset, batch_size: int, workers: int, pin: bool
                ) -> tuple[DataLoader, SeededOrder]:
    """A fold's training loader and its order: ``workers`` processes that live for every
    epoch of the fold (``persistent_workers``); call ``order.set_epoch(seed)`` before each
    epoch. The last incomplete batch is dropped when there is more than one batch
    (BatchNorm fails on a batch of one)."""
    order = SeededOrder(len(dataset))
    # its own generator: creating an iterator draws from it, not from torch's global
    # stream (which the epoch's dropout reads), whatever the number of workers
    loader = DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers,
                        generator=torch.Generator().manual_seed(0),
                        drop_last=len(dataset) > batch_size, persistent_workers=workers > 0,
                        prefetch_factor=4 if workers else None, pin_memory=pin)
    return loader, order


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps in one training epoch of ``n`` spots (see :func:`fold_loader`)."""
    return n // batch_size if n > batch_size else 1
