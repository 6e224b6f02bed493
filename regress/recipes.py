"""Named stage-2 recipes: a feature set plus the levers applied around the regressor.

A recipe names its feature arrays (``backbone[:array]`` in the stage-1 store, concatenated),
spatial context (mean features of the k nearest spots, 0 = off; ``context_wide``: a second,
wider ring of the same kind), prediction smoothing over
the k nearest spots or a Gaussian of sigma µm with weight w, one ridge alpha per cell
type, per-slide centring, position features, shrinkage towards the slide's predicted
composition and a slide-level gain (:mod:`regress.levers`). ``base`` names the recipe a
lever is added to: the ablation counts the held-out slides where it beats that one.
``make tune`` scores every recipe of ``TUNE_GRID`` by LOSO on the training slides alone and
records the winner in ``OUT/tuned.json``; ``DEFAULT_RECIPE`` is the winner on the bundled
sample (see the README's ablation table).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import numpy as np

from data.cli import lists_as_tuples
from data.errors import ConfigError
from data.store import FeatureSpec
from regress.features import assemble
from regress.levers import (
    POSITIONS,
    gaussian_smooth,
    position_features,
    shrink_to_slide,
    um_per_px,
)
from regress.spatial import (
    SpatialContext,
    center_per_slide,
    neighbour_mean,
    smooth_predictions,
)


@dataclass(frozen=True)
class Recipe:
    name: str
    features: tuple[str, ...]
    context_k: int = 0
    smooth_k: int = 0
    smooth_w: float = 0.0
    per_type_alpha: bool = False
    center: bool = False
    position: str = ""          # "", "fourier" or "radial" (regress.levers)
    smooth_um: float = 0.0      # > 0: Gaussian smoothing, sigma in µm (weight smooth_w)
    shrink: float = 0.0         # towards the slide's mean predicted composition
    slide_gain: float = 1.0     # ridge: a slide's predicted mean's distance from training
    context_wide: int = 0       # > 0: also the mean features of this many nearest spots
    base: str = ""              # the recipe this one adds a lever to (for the wins)
    description: str = ""

    def as_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> Recipe:
        """The recipe of :meth:`as_dict` (as report.json and model.json store it)."""
        return cls(**lists_as_tuples(values))


#: the levers' ranges (as ``hespot regress`` checks its flags): field -> (low, high)
RANGES = {"context_k": (0, math.inf), "context_wide": (0, math.inf), "smooth_k": (0, math.inf),
          "smooth_w": (0, 1),
          "shrink": (0, 1), "smooth_um": (0, math.inf), "slide_gain": (1e-300, math.inf)}


def _typed(kind: str, value: object) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind == "tuple[str, ...]":
        return isinstance(value, list | tuple) and len(value) > 0 and all(
            isinstance(v, str) and v.strip() for v in value)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return number and math.isfinite(value) and (kind == "float" or isinstance(value, int))


def recipe_problem(values: object) -> str:
    """What keeps ``values`` (a recipe as report.json and model.json store it) from being
    a :class:`Recipe`, or "": known fields, each of its type (features: a non-empty list
    of names), levers in the ranges ``hespot regress`` accepts."""
    if not isinstance(values, dict):
        return f"not an object: {type(values).__name__}"
    kinds = {f.name: str(f.type) for f in fields(Recipe)}
    unknown = sorted(set(values) - set(kinds))
    if unknown or not {"name", "features"} <= set(values):
        return f"fields {sorted(values)[:12]}"
    for key, value in values.items():
        low, high = RANGES.get(key, (-math.inf, math.inf))
        if not _typed(kinds[key], value) or (key in RANGES and not low <= value <= high):
            return f"{key} = {value!r}"[:100]
    if values.get("position", "") not in POSITIONS:
        return f"position = {values['position']!r}"[:100]
    return ""


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


def _lever(base: Recipe, name: str, description: str, **levers) -> Recipe:
    """``base`` with one lever changed, named ``name`` and recorded as built on it."""
    return replace(base, name=name, base=base.name, description=description, **levers)


_PLAIN, _COMBO = _RECIPES[0], _RECIPES[7]
_POS = _lever(_COMBO, "pos_fourier", "combo + sin/cos of the spot's position (µm) at 0.5-4 mm",
              position="fourier")
# issue 17's levers, each added to the recipe named by its ``base``
_RECIPES += (
    _POS,
    _lever(_COMBO, "pos_radial", "combo + distance from the centre and the edge, spots "
           "nearby", position="radial"),
    _lever(_COMBO, "gauss100", "combo, smoothing by a Gaussian of sigma 100 µm instead of "
           "the 6 nearest spots", smooth_k=0, smooth_um=100.0),
    _lever(_COMBO, "gauss200", "combo, smoothing by a Gaussian of sigma 200 µm", smooth_k=0,
           smooth_um=200.0),
    _lever(_COMBO, "shrink", "combo + each spot 30 % towards its slide's predicted "
           "composition", shrink=0.3),
    _lever(_PLAIN, "macenko", "plain on patches Macenko-normalised to the reference stains",
           features=(f"{LITE0}-macenko",)),
    _lever(_PLAIN, "hed", "plain with HED stain jitter on the TTA views (averaged)",
           features=(f"{LITE0}-hed",)),
    _lever(_PLAIN, "multiscale", "lite0 pooled at 110, 155 (224 px), 220 and 440 µm crops",
           features=(f"{LITE0}:features_110um", LITE0, f"{LITE0}:features_220um",
                     f"{LITE0}:features_440um")),
    _lever(_POS, "pos_fourier_hed", "pos_fourier on HED-jittered TTA views of both backbones",
           features=(f"{MOBILENET}-hed", f"{LITE0}-hed:stages_448px")),
    _lever(_POS, "pos_fourier_ms", "pos_fourier + lite0 pooled at 110 and 440 µm",
           features=(*_COMBO.features, f"{LITE0}:features_110um", f"{LITE0}:features_440um")),
    _lever(_POS, "pos_gauss200", "pos_fourier, smoothing by a Gaussian of sigma 200 µm",
           smooth_k=0, smooth_um=200.0),
    _lever(_COMBO, "slide_gain", "combo + the slide's predicted mean composition's distance "
           "from the training mean doubled", slide_gain=2.0),
)

RECIPES: dict[str, Recipe] = {r.name: r for r in _RECIPES}
TUNE_GRID: tuple[str, ...] = tuple(RECIPES)
DEFAULT_RECIPE = "pos_fourier"


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
    scale = {s: um_per_px(data.xy[s], data.pixel_um.get(s)) for s in data.X}
    X = {}
    for slide, Xs in data.X.items():
        if recipe.center:
            Xs = center_per_slide(Xs, np.zeros(len(Xs)))
        own = Xs
        if recipe.context_k:
            Xs = SpatialContext(recipe.context_k).fit(Xs).transform(Xs, data.xy[slide])
        if recipe.context_wide:
            Xs = np.concatenate([Xs, neighbour_mean(np.asarray(own, float), data.xy[slide],
                                                    recipe.context_wide)], axis=1)
        if recipe.position:
            Xs = np.concatenate([Xs, position_features(data.xy[slide], scale[slide],
                                                       recipe.position)], axis=1)
        X[slide] = Xs
    data.X = X
    if not (recipe.smooth_w and (recipe.smooth_k or recipe.smooth_um)) and not recipe.shrink:
        return data, None

    def post(slide, P, xy=data.xy, r=recipe):
        if r.smooth_k and r.smooth_w:
            P = smooth_predictions(P, xy[slide], r.smooth_k, r.smooth_w)
        if r.smooth_um and r.smooth_w:
            P = gaussian_smooth(P, xy[slide], scale[slide], r.smooth_um, r.smooth_w)
        return shrink_to_slide(P, r.shrink)
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
