"""Ensemble weights and the combination submit.py submits: an ensemble averages the models'
per-spot ranks with weights on the simplex, chosen one of two ways (:data:`WEIGHTINGS`):

- ``learned`` (:func:`learn_ensemble`, the default): the weights that maximise the mean
  per-spot Spearman of the rank-averaged out-of-fold predictions over the held-out slides
  (an exhaustive grid of step 1/20 on the simplex for up to 3 models, greedy forward
  selection with replacement, 20 picks, beyond; ties go to the most even weights). Its
  honest score is nested: each held-out slide is scored with weights learned on the other
  slides' out-of-fold rows only; the weights submitted are learned on all of them;
- ``score`` (:func:`ensemble_weights`): each model's out-of-fold per-spot Spearman above the
  constant baseline of its target, from ``report.json``.

On the sample's LOSO (subset tier, 5 held-out slides) ``learned`` scored at least as well
as ``score`` by nested LOSO in every ensemble tried: ridge + lgbm (spot_rank, default
recipe) per-spot 0.515 vs 0.511, per-type 0.395 vs 0.393 (orders on), higher per-spot on
5 of 5 slides; with ridge on mobilenet_v2 features added, 0.515 vs 0.511; ridge on lite0
+ ridge on mobilenet_v2, 0.5045 vs 0.5045. (The learned weights put ~all weight on the
best model there; the score weighting dilutes it.)
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import ConfigError, DataError, Problem
from data.h5 import CanonicalH5
from regress.metrics import spearman_per_spot
from regress.orders import score_oof
from regress.results import read_predictions
from regress.targets import rank_scale

log = logging.getLogger("hespot")

WEIGHTINGS = ("learned", "score")  # the first is the default of submit and fit
GRID_STEPS = 20        # the simplex grid's resolution (weights in multiples of 1/20)
GRID_MAX_MODELS = 3    # up to this many models: the whole grid; beyond: greedy selection


@dataclass(frozen=True)
class SlideBlock:
    """One held-out slide's out-of-fold predictions, ready to blend.

    Attributes:
        ranks: float (n_models, n_spots, n_types), each model's per-spot ranks in [0, 1].
        truth: float (n_spots, n_types) abundances.
    """

    ranks: np.ndarray
    truth: np.ndarray

    def score(self, weights: np.ndarray) -> float:
        """Mean per-spot Spearman of the blend ``sum_k weights[k] * ranks[k]``."""
        blend = np.tensordot(weights, self.ranks, axes=1)
        return float(spearman_per_spot(self.truth, blend).mean())


def ensemble_weights(report: dict, models: Sequence[str]) -> np.ndarray:
    """Weights from OOF per-spot Spearman above the constant baseline (same target),
    compared on the held-out slides both have (a model may have run only some folds)."""
    scores = []
    for m in models:
        entry = report["models"].get(m)
        if entry is None:
            raise DataError(Problem("report.json", "", m, f"one of {sorted(report['models'])}",
                                    "no such model", "run make regress first"))
        base = report["models"].get(f"constant-{entry['target']}", {"mean": {"spot": 0.0}})
        shared = set(entry.get("per_slide", {})) & set(base.get("per_slide", {}))
        gain = (np.mean([entry["per_slide"][s]["spot"] - base["per_slide"][s]["spot"]
                         for s in shared]) if shared
                else entry["mean"]["spot"] - base["mean"]["spot"])
        scores.append(max(float(gain), 0.0))
    w = np.asarray(scores, float)
    return w / w.sum() if w.sum() > 0 else np.full(len(models), 1 / len(models))


def combine(frames: Sequence[pd.DataFrame], weights: np.ndarray,
            cell_types: Sequence[str]) -> np.ndarray:
    """(n_spots, n_types): one model clipped to [0, 1]; an ensemble averages per-spot ranks."""
    if len(frames) == 1:
        return np.clip(frames[0][list(cell_types)].to_numpy(float), 0, 1)
    return sum(w * rank_scale(f[list(cell_types)].to_numpy(float), axis=1)
               for w, f in zip(weights, frames, strict=True))


def shared_slides(frames: Sequence[pd.DataFrame]) -> list[str]:
    """The slides every frame (an oof.csv) holds, sorted."""
    return sorted(set.intersection(*(set(f["slide"].astype(str)) for f in frames)))


def slide_blocks(frames: Sequence[pd.DataFrame], truth: Mapping[str, np.ndarray],
                 cell_types: Sequence[str]) -> dict[str, SlideBlock]:
    """held-out slide -> :class:`SlideBlock`, for the slides every frame holds (rows in
    ``row`` order, the truth's)."""
    blocks = {}
    for slide in shared_slides(frames):
        rows = [f[f["slide"].astype(str) == slide].sort_values("row") for f in frames]
        ranks = np.stack([rank_scale(r[list(cell_types)].to_numpy(float), axis=1)
                          for r in rows])
        blocks[slide] = SlideBlock(ranks, np.asarray(truth[slide], float))
    return blocks


def simplex_grid(n_models: int, steps: int = GRID_STEPS) -> np.ndarray:
    """float (n_points, n_models): every weight vector in multiples of 1/steps summing to 1."""
    points = [c for c in itertools.product(range(steps + 1), repeat=n_models - 1)
              if sum(c) <= steps]
    return np.array([[*c, steps - sum(c)] for c in points], float) / steps


def _mean_score(blocks: Sequence[SlideBlock], w: np.ndarray) -> float:
    return float(np.mean([b.score(w) for b in blocks]))


def _best(candidates: np.ndarray, blocks: Sequence[SlideBlock]) -> np.ndarray:
    """The best-scoring candidate; ties go to the most even weights."""
    scores = np.array([_mean_score(blocks, w) for w in candidates])
    tied = np.flatnonzero(scores >= scores.max() - 1e-12)
    return candidates[tied[np.argmin((candidates[tied] ** 2).sum(axis=1))]]


def _greedy(blocks: Sequence[SlideBlock], n_models: int, picks: int) -> np.ndarray:
    """Forward selection with replacement (Caruana et al. 2004): ``picks`` times, add the
    model whose addition scores best; the weights are the counts / picks."""
    counts = np.zeros(n_models)
    for _ in range(picks):
        candidates = (counts + np.eye(n_models)) / (counts.sum() + 1)
        counts[int(np.argmax([_mean_score(blocks, w) for w in candidates]))] += 1
    return counts / counts.sum()


def learn_weights(blocks: Mapping[str, SlideBlock]) -> np.ndarray:
    """Simplex weights (n_models,) maximising the mean over ``blocks``' slides of the
    blend's mean per-spot Spearman.

    Raises:
        DataError: no slide to learn from.
    """
    if not blocks:
        raise DataError(Problem("predictions/*/oof.csv", "", "slide",
                                "a held-out slide every model predicted", "none",
                                "run the models' LOSO on the same slides"))
    parts = list(blocks.values())
    n_models = len(parts[0].ranks)
    if n_models == 1:
        return np.ones(1)
    if n_models <= GRID_MAX_MODELS:
        return _best(simplex_grid(n_models), parts)
    return _greedy(parts, n_models, GRID_STEPS)


def learn_ensemble(frames: Sequence[pd.DataFrame], truth: Mapping[str, np.ndarray],
                   cell_types: Sequence[str], per_type: pd.DataFrame | None = None,
                   learn: Callable[[Mapping[str, SlideBlock]], np.ndarray] = learn_weights,
                   ) -> dict:
    """Weights learned on the out-of-fold predictions, and their nested LOSO score.

    Args:
        frames: each model's oof.csv (columns slide, row, the cell types).
        truth: held-out slide -> float (n_spots, n_types) abundances.
        per_type: the per-type model's oof.csv when the submitted values are re-ordered by
            it (:mod:`regress.orders`), else None.
        learn: blocks -> weights (:func:`learn_weights`).

    Returns:
        {"weights": learned on every held-out slide (for the test predictions),
        "nested": {"per_slide": {slide: {"spot", "type", "weights"}}, "mean": {"spot",
        "type"}}}: each slide scored (both metrics, as submitted) with weights learned on
        the other slides only.

    Raises:
        DataError: fewer than two held-out slides that every model predicted.
    """
    blocks = slide_blocks(frames, truth, cell_types)
    if len(blocks) < 2:
        raise DataError(Problem("predictions/*/oof.csv", "", "slide",
                                "two or more held-out slides every model predicted",
                                f"{len(blocks)} ({', '.join(blocks)})",
                                "run the models' LOSO on the same slides, or --weighting "
                                "score"))
    per_slide = {}
    for slide in blocks:
        w = learn({s: b for s, b in blocks.items() if s != slide})
        only = [f[f["slide"].astype(str) == slide] for f in frames]
        layer = per_type[per_type["slide"].astype(str) == slide] \
            if per_type is not None else None
        scored = score_oof(only, layer, truth, list(cell_types),
                           lambda rows, w=w: combine(rows, w, cell_types))
        per_slide[slide] = {**scored["per_slide"][slide], "weights": w.tolist()}
    mean = {m: float(np.mean([v[m] for v in per_slide.values()])) for m in ("spot", "type")}
    return {"weights": learn(blocks).tolist(),
            "nested": {"per_slide": per_slide, "mean": mean}}


def read_oof(out: Path, h5_path: str, models: Sequence[str], layer: str | None
             ) -> tuple[list[pd.DataFrame], pd.DataFrame | None, dict[str, np.ndarray]]:
    """(each model's oof.csv, the per-type model ``layer``'s or None, held-out slide ->
    float (n_spots, n_types) truth)."""
    frames = [read_predictions(Path(out), m, "oof") for m in models]
    per_type = read_predictions(Path(out), layer, "oof") if layer else None
    with CanonicalH5(h5_path) as h5:
        truth = {s: h5.spots(s).Y for s in h5.train_slides}
        cell_types = list(h5.cell_types)
    for m, frame in zip([*models, layer], [*frames, per_type], strict=False):
        if frame is not None:
            _check_oof(Path(out) / "predictions" / m / "oof.csv", frame, truth, cell_types)
    return frames, per_type, truth


def _check_oof(path: Path, frame: pd.DataFrame, truth: dict[str, np.ndarray],
               cell_types: list[str]) -> None:
    """An oof.csv holds, for each slide it names, one row per spot of that train slide
    (rows 0..n-1) and every cell type of the file."""
    missing = [c for c in cell_types if c not in frame]
    bad = f"no columns {missing[:3]}" if missing else ""
    for slide, rows in frame.groupby(frame["slide"].astype(str))["row"]:
        if bad:
            break
        n = len(truth[slide]) if slide in truth else None
        if n is None or sorted(rows) != list(range(n)):
            bad = f"slide {slide}: {len(rows)} rows for {n} spots of the train slide"
    if bad:
        raise DataError(Problem(str(path), "", "rows", "one row per spot of each held-out "
                                "train slide, every cell type", bad,
                                "run `make regress` again on this file"))


def learned_weights(weighting: str, given: bool, oof: tuple, cell_types: list[str]
                    ) -> dict | None:
    """:func:`learn_ensemble` of ``oof`` (:func:`read_oof`) where the weights are to be
    learned (``weighting`` "learned", no weights ``given``, an ensemble), else None; also
    None, with a warning, where fewer than two held-out slides hold every model (the
    caller then uses the ``score`` weighting).

    Raises:
        ConfigError: an unknown weighting.
    """
    if weighting not in WEIGHTINGS:
        raise ConfigError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    frames, per_type, truth = oof
    if given or len(frames) < 2 or weighting != "learned":
        return None
    if len(shared_slides(frames)) < 2:
        log.warning("learned weights need two or more held-out slides that every model "
                    "predicted (found %s): weighting by score instead", shared_slides(frames))
        return None
    learned = learn_ensemble(frames, truth, cell_types, per_type)
    log.info("learned weights %s; nested LOSO (each slide scored with weights learned on "
             "the others): per-spot %.3f, per-type %.3f", np.round(learned["weights"], 3)
             .tolist(), learned["nested"]["mean"]["spot"], learned["nested"]["mean"]["type"])
    return learned
