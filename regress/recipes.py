"""Named stage-2 recipes: a feature set plus the levers applied around the regressor.

A recipe names its feature arrays (``backbone[:array]`` in the stage-1 store, concatenated),
spatial context (mean features of the k nearest spots, 0 = off), prediction smoothing over
the k nearest spots with weight w, one ridge alpha per cell type, and per-slide centring.
``make tune`` scores every recipe of ``TUNE_GRID`` by LOSO on the training slides alone and
records the winner in ``OUT/tuned.json``; ``DEFAULT_RECIPE`` is the winner on the bundled
sample (see the README's ablation table).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from data.cli import lists_as_tuples
from data.errors import ConfigError
from data.store import FeatureSpec
from regress.features import assemble
from regress.spatial import SpatialContext, center_per_slide, smooth_predictions


@dataclass(frozen=True)
class Recipe:
    name: str
    features: tuple[str, ...]
    context_k: int = 0
    smooth_k: int = 0
    smooth_w: float = 0.0
    per_type_alpha: bool = False
    center: bool = False
    description: str = ""

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        """The recipe of :meth:`as_dict` (as report.json and model.json store it)."""
        return cls(**lists_as_tuples(values))


LITE0 = "efficientnet_lite0"
MOBILENET = "mobilenet_v2"
LITE0_STAGES_448 = "efficientnet_lite0:stages_448px"

_RECIPES = (
    Recipe("plain", (LITE0,), description="lite0 pooled features (224 px): the HEST-style "
           "reference"),
    Recipe("mobilenet", (MOBILENET,), description="mobilenet_v2 pooled features"),
    Recipe("lite0_stages448", (LITE0_STAGES_448,),
           description="lite0 stages 2/4/6 mean+std pooled, 448 px crop resized to 224"),
    Recipe("per_type_alpha", (LITE0,), per_type_alpha=True,
           description="plain + one ridge alpha per cell type"),
    Recipe("smooth", (LITE0,), smooth_k=6, smooth_w=0.5,
           description="plain + predictions smoothed over the 6 nearest spots, w = 0.5"),
    Recipe("context", (LITE0,), context_k=6,
           description="plain + mean embedding of the 6 nearest spots"),
    Recipe("center", (LITE0,), center=True, description="plain + per-slide feature centring"),
    Recipe("combo", (MOBILENET, LITE0_STAGES_448), smooth_k=6, smooth_w=0.5,
           description="mobilenet_v2 + lite0 stages (448) + smoothing"),
    Recipe("combo_pta", (MOBILENET, LITE0_STAGES_448), smooth_k=6, smooth_w=0.5,
           per_type_alpha=True, description="combo + per-type alpha"),
    Recipe("combo_context", (MOBILENET, LITE0_STAGES_448), context_k=6, smooth_k=6,
           smooth_w=0.5, description="combo + spatial context"),
)

RECIPES: dict[str, Recipe] = {r.name: r for r in _RECIPES}
TUNE_GRID: tuple[str, ...] = tuple(RECIPES)
DEFAULT_RECIPE = "combo"


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ConfigError(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}") from None


def prepare(data, recipe: Recipe):
    """Apply a recipe's feature-side levers slide by slide (no labels involved).

    Args:
        data: a :class:`regress.features.SlideSet` holding the recipe's feature parts.

    Returns:
        (SlideSet with the recipe's X, postprocess(slide, P) -> P or None).
    """
    data = assemble(data, [FeatureSpec.parse(f) for f in recipe.features])
    X = {}
    for slide, Xs in data.X.items():
        if recipe.center:
            Xs = center_per_slide(Xs, np.zeros(len(Xs)))
        if recipe.context_k:
            Xs = SpatialContext(recipe.context_k).fit(Xs).transform(Xs, data.xy[slide])
        X[slide] = Xs
    data.X = X
    post = None
    if recipe.smooth_k and recipe.smooth_w:
        def post(slide, P, xy=data.xy, k=recipe.smooth_k, w=recipe.smooth_w):
            return smooth_predictions(P, xy[slide], k, w)
    return data, post


def predict_slides(est, data, post, slides, kind: str) -> dict[str, np.ndarray]:
    """slide -> float (n_spots, n_types): ``est`` on each slide's X of a prepared
    ``data``, then the recipe's post-processing (never on the constant baseline, as
    ``regress.run`` scores it)."""
    out = {}
    for slide in slides:
        P = est.predict(data.X[slide])
        out[slide] = post(slide, P) if post and kind != "constant" else P
    return out
