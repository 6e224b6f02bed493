"""What a map holds, in the files a person opens (design.md, "What a map holds"): the
abundances and their 90 % intervals, the rank scores, and each slide's out-of-distribution
verdict, written as ``predictions.csv`` (abundances), ``rank_scores.csv`` (the values
``submission.csv`` ranks) and ``predictions.h5ad``::

    X                     abundances (or, from a model without an abundance model, the
                          rank scores: uns['hespot']['X'] says which)
    layers['rank_score']  the rank scores; ['per_type'] the per-type model's predictions;
                          ['lower'], ['upper'] the 90 % interval of each abundance
    obs['ood_score']      each spot's distance from the training slides' features
    uns['hespot']         {'X': 'abundance' | 'rank_score', 'units', 'layers': name ->
                          what it holds, 'slides': slide -> {'ood_score', 'ood_threshold',
                          'ood_flagged', 'flagged_spots'}}
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from regress.outputs.anndata import FRAME_COLUMNS, write_anndata
from regress.outputs.csv import write_safe_csv

log = logging.getLogger("hespot")

LAYERS = {
    "rank_score": "rank scores: the values submission.csv ranks (Spearman reads only their "
                  "order); not amounts",
    "per_type": "the per-type model's rank scores: the order of the spots within each type",
    "lower": "abundance: lower end of the 90 % interval (calibrated on held-out slides)",
    "upper": "abundance: upper end of the 90 % interval",
}
NO_ABUNDANCE = ("rank scores (this model has no abundance model: abundances need "
                "`hespot fit` again)")


@dataclass
class Maps:
    """The predictions of some slides' spots, named by what they are.

    Attributes:
        frame: one row per spot: slide, row, spot_id, x, y (and maybe ID).
        cell_types: the n_types names.
        rank_score: float (n_spots, n_types) what submission.csv ranks.
        abundance, lower, upper: float (n_spots, n_types) abundances and their interval,
            or None (a model without an abundance model).
        per_type: float (n_spots, n_types) the per-type model's predictions, or None.
        ood_score: float (n_spots,) spot OOD scores, or None.
        slides: slide -> its OOD verdict (:func:`regress.ood.verdict`).
        units: what one abundance is.
    """

    frame: pd.DataFrame
    cell_types: Sequence[str]
    rank_score: np.ndarray
    abundance: np.ndarray | None = None
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    per_type: np.ndarray | None = None
    ood_score: np.ndarray | None = None
    slides: Mapping[str, Mapping] = field(default_factory=dict)
    units: str = ""

    def layers(self) -> dict[str, np.ndarray]:
        """name -> float (n_spots, n_types) of every layer present."""
        found = {"rank_score": self.rank_score, "per_type": self.per_type,
                 "lower": self.lower, "upper": self.upper}
        return {k: v for k, v in found.items() if v is not None}

    def uns(self) -> dict:
        """``uns['hespot']``: what X and the layers hold, and the slides' OOD verdicts."""
        has = self.abundance is not None
        return {"X": "abundance" if has else "rank_score",
                "units": self.units if has else NO_ABUNDANCE,
                "layers": {k: LAYERS[k] for k in self.layers()},
                "slides": {str(s): {k: v.item() if isinstance(v, np.generic) else v
                                    for k, v in verdict.items()}
                           for s, verdict in self.slides.items()}}


def _table(frame: pd.DataFrame, values: np.ndarray, cell_types: Sequence[str]) -> pd.DataFrame:
    meta = frame[[c for c in ("ID", *FRAME_COLUMNS) if c in frame]].reset_index(drop=True)
    return pd.concat([meta, pd.DataFrame(values, columns=list(cell_types))], axis=1)


def write_maps(folder: str | Path, maps: Maps, h5_path: str | Path | None,
               h5ad: str | Path | None = None) -> Path:
    """Write ``predictions.csv`` (abundances), ``rank_scores.csv`` and the h5ad (default
    ``folder/predictions.h5ad``); returns the h5ad's path. Without abundances, a
    ``predictions.csv`` of an earlier run in ``folder`` is removed (it would pass for
    this run's)."""
    folder = Path(folder)
    path = Path(h5ad or folder / "predictions.h5ad")
    if maps.abundance is not None:
        write_safe_csv(folder / "predictions.csv",
                       _table(maps.frame, maps.abundance, maps.cell_types))
    elif (folder / "predictions.csv").is_file():
        (folder / "predictions.csv").unlink()
        log.info("removed %s of an earlier run: this model predicts no abundances",
                 folder / "predictions.csv")
    write_safe_csv(folder / "rank_scores.csv",
                   _table(maps.frame, maps.rank_score, maps.cell_types))
    X = maps.abundance if maps.abundance is not None else maps.rank_score
    obs = {"ood_score": maps.ood_score} if maps.ood_score is not None else None
    write_anndata(path, maps.frame, X, maps.cell_types, h5_path=h5_path,
                  layers=maps.layers(), obs=obs, uns=maps.uns())
    return path
