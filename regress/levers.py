"""Stage-2 levers that use where a spot lies and what its slide looks like as a whole
(issue 17): position features, Gaussian smoothing over a radius in µm, shrinkage towards
the slide's predicted composition. All work on one slide's spots at a time and read no
labels; distances are in µm (pixel size from the HDF5 file, else estimated from the spot
pitch, see :func:`um_per_px`).
"""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree

log = logging.getLogger("hespot")

#: centre-to-centre distance of neighbouring Visium spots (µm): the scale assumed for a
#: slide whose file records no pixel size (the challenge's)
VISIUM_PITCH_UM = 100.0
#: wavelengths (µm) of the Fourier position features
POSITION_WAVELENGTHS_UM = (500.0, 1000.0, 2000.0, 4000.0)
POSITIONS = ("", "fourier", "radial")


def um_per_px(xy: np.ndarray, pixel_size_um: float | None) -> float:
    """µm per pixel of a slide: the file's pixel size, else the Visium pitch over the
    median nearest-neighbour distance of its spots (1.0 for a slide of one spot).

    Args:
        xy: float (n_spots, 2) pixel positions.
    """
    if pixel_size_um:
        return float(pixel_size_um)
    if len(xy) < 2:
        return 1.0
    d, _ = cKDTree(xy).query(xy, k=2)
    pitch = float(np.median(d[:, 1]))
    return VISIUM_PITCH_UM / pitch if pitch > 0 else 1.0


def position_features(xy: np.ndarray, scale: float, kind: str) -> np.ndarray:
    """Features of where each spot lies on its slide, in µm from the spots' centroid.

    Args:
        xy: float (n_spots, 2) pixel positions of one slide.
        scale: µm per pixel.
        kind: "fourier": sin/cos of x and y at :data:`POSITION_WAVELENGTHS_UM`
            (n_spots, 16); "radial": distance from the centroid, from the tissue's edge
            (the farthest spot's distance minus one's own) and the number of spots
            within 3 pitches, each rotation invariant (n_spots, 3).
    """
    p = (np.asarray(xy, float) - np.asarray(xy, float).mean(axis=0)) * scale
    if kind == "fourier":
        cols = [f(2 * np.pi * p[:, a] / w) for w in POSITION_WAVELENGTHS_UM
                for a in (0, 1) for f in (np.sin, np.cos)]
        return np.stack(cols, axis=1)
    if kind == "radial":
        r = np.hypot(p[:, 0], p[:, 1])
        pitch = VISIUM_PITCH_UM
        if len(p) > 1:
            d, _ = cKDTree(p).query(p, k=2)
            pitch = float(np.median(d[:, 1])) or pitch
        crowd = np.array([len(n) for n in cKDTree(p).query_ball_point(p, 3 * pitch)], float)
        return np.stack([r, r.max() - r, crowd], axis=1)
    raise ValueError(f"position kind must be one of {POSITIONS[1:]}, got {kind!r}")


def gaussian_smooth(P: np.ndarray, xy: np.ndarray, scale: float, sigma_um: float,
                    weight: float) -> np.ndarray:
    """(1 - w) * P + w * the Gaussian-weighted mean of the other spots' predictions
    within 3 sigma (one slide); a spot with no neighbour keeps its own row.

    Args:
        P: float (n_spots, n_types) predictions of one slide.
        xy: float (n_spots, 2) pixel positions; ``scale`` µm per pixel.
        sigma_um: the Gaussian's standard deviation in µm.
    """
    if weight == 0 or sigma_um <= 0 or len(P) < 2:
        return P
    p = np.asarray(xy, float) * scale
    pairs = cKDTree(p).query_pairs(3 * sigma_um, output_type="ndarray")
    if not len(pairs):
        return P
    i, j = np.concatenate([pairs[:, 0], pairs[:, 1]]), np.concatenate([pairs[:, 1],
                                                                       pairs[:, 0]])
    w = np.exp(-np.sum((p[i] - p[j]) ** 2, axis=1) / (2 * sigma_um ** 2))
    num = np.zeros_like(P, dtype=float)
    np.add.at(num, i, w[:, None] * P[j])
    den = np.bincount(i, weights=w, minlength=len(P))
    has = den > 0
    neigh = np.where(has[:, None], num / np.where(has, den, 1)[:, None], P)
    return (1 - weight) * P + weight * neigh


def shrink_to_slide(P: np.ndarray, amount: float) -> np.ndarray:
    """Every spot's predictions moved ``amount`` of the way towards its slide's mean
    predicted composition: (1 - a) * P + a * mean over spots. Leaves the order of the
    spots within each cell type unchanged (the per-type metric); pulls each spot's order
    of cell types towards the slide's.

    Args:
        P: float (n_spots, n_types) predictions of one slide.
    """
    if amount == 0:
        return P
    return (1 - amount) * P + amount * P.mean(axis=0, keepdims=True)
