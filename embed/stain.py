"""Stain levers of stage 1: Macenko normalisation to a reference, and HED stain jitter.

- Macenko et al. (2009), as torchstain implements it: optical density ``OD = -ln((I + 1) /
  Io)`` of the tissue pixels (every channel's OD >= :data:`BETA`), the plane of its two
  main eigenvectors, the stain vectors at the 1st and 99th percentile of the angle in that
  plane; concentrations by least squares, scaled so their 99th percentile is the
  reference's, then painted with the reference stain matrix (:data:`HE_REF`, :data:`MAX_C_REF`).
  :func:`fit_macenko` estimates a slide's stains once; :meth:`MacenkoFit.apply` normalises
  uint8 patches with them.
- HED jitter (Tellez et al. 2018; HEST): each TTA view after the first gets fixed,
  seeded per-channel scale and shift of its HED stain concentrations (colour
  deconvolution with scikit-image's ``rgb_from_hed``, in natural-log optical density);
  :func:`jitter_hed` runs inside the traced forward (:class:`embed.extract.ViewFeatures`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

log = logging.getLogger("hespot")

#: the reference H&E stain matrix (columns: haematoxylin, eosin; rows: R, G, B OD) and
#: 99th-percentile concentrations of Macenko's method (torchstain's defaults)
HE_REF = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MAX_C_REF = np.array([1.9705, 1.0308])
IO = 240.0            # transmitted light intensity
BETA = 0.15           # OD below which a channel counts as background
ALPHA = 1.0           # percentile of the angle that picks the extreme stain vectors
#: fewer tissue pixels than this: the slide is not normalised (a warning names it)
MIN_TISSUE_PIXELS = 500
#: stain vectors closer than this (cosine) are one stain twice: the slide is not normalised
MAX_COSINE = 0.999
#: pixels a fit looks at, at most (evenly strided over the sample)
MAX_FIT_PIXELS = 1 << 20
#: skimage.color's rgb_from_hed (rows: haematoxylin, eosin, DAB OD in R, G, B)
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
HED_SEED = 17          # seed of the views' jitter constants (fixed: a run is reproducible)
HED_SCALE = 0.05       # per-channel scale drawn in [1 - HED_SCALE, 1 + HED_SCALE]
HED_SHIFT = 0.02       # per-channel shift drawn in [-HED_SHIFT, HED_SHIFT]
_EPS = 1e-6            # smallest intensity in [0, 1] before the log


def stain_settings(levers: tuple[str, ...]) -> dict:
    """The constants that make a stain variant's features what they are (stored with a
    group's settings, so a change of them is refused on resume, as any setting)."""
    out: dict = {"levers": list(levers)}
    if "macenko" in levers:
        out["macenko"] = {"he_ref": HE_REF.tolist(), "max_c_ref": MAX_C_REF.tolist(),
                          "io": IO, "beta": BETA, "alpha": ALPHA}
    if "hed" in levers:
        out["hed"] = {"seed": HED_SEED, "scale": HED_SCALE, "shift": HED_SHIFT}
    return out


@dataclass(frozen=True)
class MacenkoFit:
    """A slide's stains as Macenko's method found them.

    Attributes:
        he: float64 (3, 2) unit stain vectors (haematoxylin, eosin) in OD.
        max_c: float64 (2,) 99th percentiles of the tissue pixels' concentrations.
        identity: True where the slide had too little tissue to fit: patches pass unchanged.
    """

    he: np.ndarray
    max_c: np.ndarray
    identity: bool = False

    def apply(self, patches: np.ndarray) -> np.ndarray:
        """uint8 (..., 3) -> uint8 (..., 3): the patches in the reference stains."""
        if self.identity:
            return patches
        od = -np.log((patches.reshape(-1, 3).astype(np.float32) + 1) / np.float32(IO))
        scale = (MAX_C_REF / self.max_c).astype(np.float32)
        conc = od @ (np.linalg.pinv(self.he).T * scale).astype(np.float32)     # (N, 2)
        out = np.float32(IO) * np.exp(-(conc @ HE_REF.T.astype(np.float32)))   # (N, 3)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(patches.shape)


def reference_fit() -> MacenkoFit:
    """The fit that leaves patches unchanged (a slide without enough tissue)."""
    return MacenkoFit(HE_REF.copy(), MAX_C_REF.copy(), identity=True)


def _stain_vectors(od: np.ndarray) -> np.ndarray:
    """float64 (n, 3) tissue OD -> (3, 2) unit stain vectors, haematoxylin first."""
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3].copy()                       # 2nd and 1st principal directions
    for j in range(2):                                # signs: OD data are positive
        if (od @ plane[:, j]).mean() < 0:
            plane[:, j] *= -1
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [ALPHA, 100 - ALPHA])
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    he = np.stack([v_lo, v_hi] if v_lo[0] > v_hi[0] else [v_hi, v_lo], axis=1)
    he *= np.sign(he.sum(axis=0, keepdims=True))
    return he / np.linalg.norm(he, axis=0, keepdims=True)


def fit_macenko(pixels: np.ndarray, where: str = "") -> MacenkoFit:
    """A slide's stain matrix and 99th-percentile concentrations from its tissue pixels.

    Args:
        pixels: uint8 (..., 3) RGB, e.g. (n_patches, S, S, 3) spot patches of the slide.
        where: the file and slide, named in the warning of a slide that cannot be fitted.

    Returns:
        The fit; :func:`reference_fit` (patches unchanged, with a warning) when fewer than
        :data:`MIN_TISSUE_PIXELS` pixels are tissue or the stains found are degenerate.
    """
    rgb = pixels.reshape(-1, 3)
    rgb = rgb[::max(1, -(-len(rgb) // MAX_FIT_PIXELS))]
    od = -np.log((rgb.astype(np.float64) + 1) / IO)
    od = od[np.all(od >= BETA, axis=1)]
    if len(od) < MIN_TISSUE_PIXELS:
        log.warning("%s: %d tissue pixels in the stain sample (at least %d needed): not "
                    "stain-normalised (+macenko leaves its patches as they are)", where,
                    len(od), MIN_TISSUE_PIXELS)
        return reference_fit()
    he = _stain_vectors(od)
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]                           # (2, n)
    max_c = np.percentile(conc, 99, axis=1)
    if (not np.all(np.isfinite(he)) or not np.all(np.isfinite(max_c))
            or abs(he[:, 0] @ he[:, 1]) > MAX_COSINE or not np.all(max_c > 1e-3)):
        log.warning("%s: degenerate stain estimate (stain matrix %s, max concentrations "
                    "%s): not stain-normalised", where, np.round(he, 3).tolist(),
                    np.round(max_c, 3).tolist())
        return reference_fit()
    return MacenkoFit(he, max_c)


def hed_jitter_params(n_views: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 (n_views, 3) scale and shift of each view's H, E, D concentrations: view 0
    (1, 0) unperturbed, the others drawn once from :data:`HED_SEED`."""
    rng = np.random.default_rng(HED_SEED)
    scale = rng.uniform(1 - HED_SCALE, 1 + HED_SCALE, size=(n_views, 3))
    shift = rng.uniform(-HED_SHIFT, HED_SHIFT, size=(n_views, 3))
    scale[0], shift[0] = 1.0, 0.0
    return scale, shift


def _const(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(np.asarray(values, np.float32), device=like.device)


def _mix(t: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """(V, B, 3, H, W) -> (V, B, 3, H, W): channel vector @ ``matrix`` (3, 3) at every pixel,
    as scalar multiply-adds (float32 under any autocast, which would run a matmul or einsum
    in half precision)."""
    return torch.stack([sum(t[:, :, c] * float(matrix[c, d]) for c in range(3))
                        for d in range(3)], dim=2)


def jitter_hed(x: torch.Tensor, n_views: int, mean: tuple[float, ...],
               std: tuple[float, ...]) -> torch.Tensor:
    """HED jitter of stacked TTA views: view ``v`` of every patch gets view ``v``'s fixed
    scale and shift of its stain concentrations (:func:`hed_jitter_params`); view 0 is
    returned as it is. Computed in float32 whatever ``x``'s dtype.

    Args:
        x: (V * B, 3, H, W) normalised model inputs, view-major (``embed.tta.stack_views``).
        n_views: V.
        mean, std: the backbone's normalisation of [0, 1] RGB.

    Returns:
        (V * B, 3, H, W) in ``x``'s dtype.
    """
    if n_views < 2:
        return x
    scale, shift = hed_jitter_params(n_views)
    views = x.reshape(n_views, -1, *x.shape[1:])                          # (V, B, 3, H, W)
    rest = views[1:].float()     # sizes by reshape, not len(x): a trace keeps any batch
    m = _const(np.asarray(mean), rest).view(1, 1, 3, 1, 1)
    s = _const(np.asarray(std), rest).view(1, 1, 3, 1, 1)
    od = -torch.log((rest * s + m).clamp(_EPS, 1.0))
    hed = _mix(od, HED_FROM_RGB)
    hed = hed * _const(scale[1:], rest).view(-1, 1, 3, 1, 1) + \
        _const(shift[1:], rest).view(-1, 1, 3, 1, 1)
    rgb = torch.exp(-_mix(hed, RGB_FROM_HED))
    out = (rgb.clamp(0.0, 1.0) - m) / s
    return torch.cat([views[:1], out.to(x.dtype)]).flatten(0, 1)
