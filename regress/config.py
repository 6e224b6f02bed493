"""Settings of stage 2's commands (``regress``, ``tune``, ``fit``, ``predict``,
``submit``): one frozen dataclass per command, defaults < ``--config`` JSON < flags
(:func:`data.cli.resolve_config`). Every package keeps its commands' settings in its
``config.py`` (``data/config.py``, ``embed/config.py``, ``embed/finetune/config.py``,
``regress/report/config.py``); the checks of a setting stay with the code that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

from data.cli import DEFAULT_H5, DEFAULT_OUT, DEFAULT_STORE
from data.cluster import ClusterSettings
from data.config import MIN_TISSUE
from regress.abundance import ABUNDANCE_MODELS
from regress.catalog import DEFAULT_MODEL
from regress.ensemble import WEIGHTINGS
from regress.recipes import TUNE_GRID


@dataclass(frozen=True)
class RegressConfig(ClusterSettings):
    """Settings of a stage-2 run (defaults < --config JSON < flags).

    ``recipe`` names the feature set and levers (regress.recipes); "auto" takes the one
    ``make tune`` recorded in OUT/tuned.json, else the default. The lever fields below
    override the recipe when set.
    """

    h5: str = DEFAULT_H5
    store: str = DEFAULT_STORE
    out: str = DEFAULT_OUT
    recipe: str = "auto"
    features: tuple[str, ...] | None = None   # backbone[:array], concatenated
    context_k: int | None = None
    smooth_k: int | None = None
    smooth_w: float | None = None
    per_type_alpha: bool | None = None
    center: bool | None = None
    position: str | None = None
    smooth_um: float | None = None
    shrink: float | None = None
    slide_gain: float | None = None
    models: tuple[str, ...] = ("ridge", "lgbm")
    targets: tuple[str, ...] = ("spot_rank", "type_rank")
    ridge_pca: int | None = None
    ridge_alpha_max: float = 1e7
    lgbm_pca: int = 32
    lgbm_trees: int = 200
    abundance: tuple[str, ...] = tuple(ABUNDANCE_MODELS)  # candidates; () = none
    quiet: bool = False


@dataclass(frozen=True)
class TuneConfig(ClusterSettings):
    """Settings of ``hespot tune`` (defaults < --config JSON < flags)."""

    h5: str = DEFAULT_H5
    store: str = DEFAULT_STORE
    out: str = DEFAULT_OUT
    recipes: tuple[str, ...] = TUNE_GRID
    targets: tuple[str, ...] = ("spot_rank", "type_rank")
    alpha_max: float = 1e7
    quiet: bool = False


@dataclass(frozen=True)
class FitConfig:
    """Settings of ``hespot fit`` (defaults < --config JSON < flags)."""

    h5: str = DEFAULT_H5
    store: str = DEFAULT_STORE
    out: str = DEFAULT_OUT                    # folder of report.json (make regress)
    model_dir: str | None = None              # default OUT/model
    models: tuple[str, ...] | None = None     # model ids; None: submit's choice
    weights: tuple[float, ...] | None = None  # ensemble weights; None: by ``weighting``
    weighting: str = WEIGHTINGS[0]            # as submit's: learned or score
    orders: bool = True                       # as submit: columns ordered by the per-type
                                              # model (regress.orders)
    quiet: bool = False


@dataclass(frozen=True)
class PredictConfig(ClusterSettings):
    """Settings of ``hespot predict`` (defaults < --config JSON < flags)."""

    model: str = f"{DEFAULT_OUT}/model"
    h5: str = DEFAULT_H5
    slides: tuple[str, ...] = ()        # default: the file's test slides (all if none)
    out: str = f"{DEFAULT_OUT}/predict"
    store: str | None = None            # stage-1 store; default OUT/embeddings.zarr
    weights: str | None = None          # weights file of a backbone the model took from one
    device: str = "auto"
    threads: int | None = None
    stage1_log: bool = False            # show stage 1's log and progress bars (hespot map)
    spatialdata: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class SubmitConfig:
    """Settings of submit (defaults < --config JSON < flags)."""

    h5: str = DEFAULT_H5
    out: str = DEFAULT_OUT                  # folder of report.json and predictions/
    models: tuple[str, ...] | None = None   # model ids; None: the best OOF model
    weights: tuple[float, ...] | None = None  # ensemble weights; None: by ``weighting``
    weighting: str = "learned"              # learned (on the OOF predictions) or score
    submission: str | None = None           # default OUT/submission.csv
    h5ad: str | None = None                 # default OUT/predictions.h5ad
    spatialdata: bool = False               # also OUT/predictions.zarr (SpatialData)
    orders: bool = True                     # rows: the submitted order; columns: the
                                            # per-type model's (regress.orders)
    quiet: bool = False


@dataclass(frozen=True)
class MapConfig(ClusterSettings):
    """Settings of ``hespot map`` (defaults < --config JSON < flags)."""

    slides: tuple[str, ...] = ()        # H&E slide images (at least one)
    out: str | None = None              # output folder (required)
    model: str = DEFAULT_MODEL          # a shipped model's name or a model folder
    grid: str = "visium"                # visium or square:<pitch µm>, over the tissue
    spots: tuple[str, ...] = ()         # spots CSVs (x, y in level-0 px), one per slide
    name: tuple[str, ...] = ()          # slide names (default: the files' stems)
    mpp: float | None = None            # µm per pixel (overrides the files')
    min_tissue: float = MIN_TISSUE      # share of a grid spot's disc on tissue
    reader: str = "auto"                # image reader (data.wsi.readers)
    device: str = "auto"
    threads: int | None = None
    spatialdata: bool = False
    quiet: bool = False

