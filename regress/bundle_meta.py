"""``model.json``'s schema (:mod:`regress.bundle`): every field ``predict`` reads, of the
type and in the range ``hespot fit`` writes, checked before anything is used; a field
edited or damaged is named instead of failing deep in stage 1 or stage 2."""

from __future__ import annotations

import math
import re
from typing import Any

from data.store import FeatureSpec
from regress.recipes import recipe_problem

MODEL_JSON = "model.json"
KINDS = ("constant", "ridge", "lgbm")
COMBINES = ("single", "rank_mean")
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")  # ids and file names: no paths
#: stage-1 settings that become ``embed`` flags: positive whole numbers
POSITIVE_SETTINGS = ("tta_views", "batch_spots", "chunk_spots")


class StructureError(ValueError):
    """A field of model.json that is not as ``hespot fit`` writes it."""

    def __init__(self, field: str, expected: str, found: Any):
        self.field, self.expected, self.found = field, expected, repr(found)[:200]
        super().__init__(f"{field}: expected {expected}; found {self.found}")


def _need(ok: bool, field: str, expected: str, found: Any) -> None:
    if not ok:
        raise StructureError(field, expected, found)


def _whole(v: Any, least: int = 0) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def finite_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _positive(v: Any) -> bool:
    return finite_number(v) and v > 0


def needed_files(meta: dict[str, Any]) -> list[str]:
    """The files the estimators of model.json read (each must be listed with a checksum)."""
    names = []
    for entry in [*meta["models"], *meta.get("layers", [])]:
        names.append(f"{entry['id']}.npz")
        if entry["kind"] == "lgbm":
            names += [f"{entry['id']}.tree{j}.txt" for j in range(len(meta["cell_types"]))]
    abundance = meta.get("abundance") or {}
    return list(dict.fromkeys([*names, *abundance.get("files", [])]))


def _part_problem(part: Any) -> str:
    """What is wrong with one feature part (its spec, backbone, patch and the stage-1
    settings ``predict`` passes to ``embed``), or ""."""
    if not isinstance(part, dict):
        return "not an object"
    spec, backbone = part.get("spec"), part.get("backbone")
    if not (isinstance(spec, str) and isinstance(backbone, str) and SAFE_NAME.fullmatch(
            backbone) and FeatureSpec.parse(spec).backbone == backbone):
        return f"spec {spec!r} of backbone {backbone!r}"
    s, ident = part.get("settings"), part.get("identity")
    if not isinstance(s, dict) or not isinstance(ident, dict):
        return "no settings or identity"
    crops, stages = s.get("crops_px"), s.get("stage_indices")
    contexts = ident.get("contexts_um", [])
    checks = {
        "patch_um": part.get("patch_um") is None or _positive(part.get("patch_um")),
        "crops_px": isinstance(crops, list) and len(crops) > 0 and all(map(_whole, crops)),
        "stage_indices": isinstance(stages, list) and all(map(_whole, stages)),
        "contexts_um": isinstance(contexts, list) and all(map(_positive, contexts)),
        "pad_mode": isinstance(s.get("pad_mode"), str),
        "weights_sha256": isinstance(s.get("weights_sha256"), str | None),
        "weights_source": isinstance(part.get("weights_source"), str | None),
        **{k: _whole(s.get(k), 1) for k in POSITIVE_SETTINGS},
    }
    bad = [k for k, ok in checks.items() if not ok]
    return f"{bad[0]} of the stage-1 spec" if bad else ""


def _check_entry(e: Any, k: int, specs: set[str]) -> None:
    _need(isinstance(e, dict) and isinstance(e.get("id"), str) and
          SAFE_NAME.fullmatch(e["id"]) is not None, f"models[{k}].id",
          "a model id (letters, digits, _ . + -)", e)
    _need(e.get("kind") in KINDS, f"{e['id']}.kind", f"one of {KINDS}", e.get("kind"))
    w = e.get("weight")
    _need(w == 0 or _positive(w), f"{e['id']}.weight", "a finite weight >= 0", w)
    recipe = e.get("recipe")
    why = recipe_problem(recipe)
    _need(not why, f"{e['id']}.recipe", "a recipe as hespot fit writes it", why)
    _need(set(recipe["features"]) <= specs, f"{e['id']}.recipe",
          f"a recipe reading feature parts of {sorted(specs)}", recipe["features"])


def check_structure(meta: dict[str, Any]) -> None:
    """model.json's shape: cell types, models and layers (safe ids, known kinds, weights
    >= 0 with a positive sum, recipes, the features they read), feature parts, and a
    checksum for every file the estimators read.

    Raises:
        StructureError: naming the first field that is not as ``hespot fit`` writes it.
    """
    types, models = meta.get("cell_types"), meta.get("models")
    layers = meta.get("layers", [])
    _need(isinstance(types, list) and len(types) > 0 and all(
        isinstance(t, str) and t for t in types) and len(set(types)) == len(types),
        "cell_types", "a list of distinct cell-type names", types)
    _need(isinstance(models, list) and len(models) > 0, "models", "a list of models", models)
    _need(isinstance(layers, list), "layers", "a list of layers", layers)
    _need(meta.get("combine") in COMBINES, "combine", f"one of {COMBINES}", meta.get("combine"))
    features = meta.get("features")
    _need(isinstance(features, list) and len(features) > 0, "features", "feature parts",
          features)
    for k, part in enumerate(features):
        why = _part_problem(part)
        _need(not why, f"features[{k}]", "a feature part as hespot fit writes it", why)
    specs = {f["spec"] for f in features}
    for k, e in enumerate([*models, *layers]):
        _check_entry(e, k, specs)
    _need(sum(e["weight"] for e in models) > 0, "models[].weight", "a positive sum",
          [e["weight"] for e in models])
    per_type = [x["id"] for x in layers if x.get("name") == "per_type"]
    _need(all(isinstance(x.get("name"), str) for x in layers), "layers[].name",
          "layer names", [x.get("name") for x in layers])
    _need(meta.get("orders_from") in (None, *per_type), "orders_from",
          f"None or the per-type layer's model {per_type}", meta.get("orders_from"))
    files = meta.get("files")
    _need(isinstance(files, dict) and all(SAFE_NAME.fullmatch(str(n)) and isinstance(d, str)
                                          for n, d in files.items()), "files",
          "file names (no paths) with their sha256", files)
    if meta.get("abundance") is not None:  # fit writes null without an abundance model
        check_abundance(meta, specs)
    missing = [n for n in needed_files(meta) if n not in files]
    _need(not missing, "files", "a checksum for every file the models read", missing)


def _grid(v: Any, rows: int | None, cols: int) -> bool:
    """A list of ``rows`` (any number if None) lists of ``cols`` finite numbers."""
    return isinstance(v, list) and (rows is None or len(v) == rows) and all(
        isinstance(r, list) and len(r) == cols and all(map(finite_number, r)) for r in v)


def check_calibration(c: Any, n_types: int, field: str = "abundance.calibration") -> None:
    """An interval calibration (:class:`regress.intervals.Calibration` as a dict)."""
    _need(isinstance(c, dict), field, "an object", c)
    level, scale = c.get("level"), c.get("scale_c")
    _need(_positive(level) and level < 1, f"{field}.level", "a level in (0, 1)", level)
    _need(_positive(scale), f"{field}.scale_c", "a positive number", scale)
    lo = c.get("lo")
    _need(_grid(lo, None, n_types) and len(lo) > 0, f"{field}.lo",
          f"bins x {n_types} cell types of numbers", lo)
    _need(_grid(c.get("hi"), len(lo), n_types), f"{field}.hi",
          f"{len(lo)} bins x {n_types} cell types of numbers", c.get("hi"))
    _need(_grid(c.get("edges"), len(lo) - 1, n_types), f"{field}.edges",
          f"{len(lo) - 1} bin edges x {n_types} cell types of numbers", c.get("edges"))
    bound = c.get("upper_bound")
    _need(bound is None or _positive(bound), f"{field}.upper_bound", "None or a positive "
          "number", bound)


def check_abundance(meta: dict[str, Any], specs: set[str]) -> None:
    """The abundance model's section (``hespot fit`` since format 2): its kind (none: a
    ridge) and transform, two safe file names, recipe, calibration (bins x cell types),
    OOD features and thresholds.

    Raises:
        StructureError: naming the first field that is not as ``hespot fit`` writes it.
    """
    from regress.abundance import TRANSFORMS
    from regress.abundance_kinds import DEFAULT_KIND, KINDS

    a = meta.get("abundance")
    _need(isinstance(a, dict) and len(a) > 0, "abundance", "the abundance model's section, "
          "or null", a)
    kind = a.get("kind", DEFAULT_KIND)
    _need(isinstance(kind, str) and kind in KINDS, "abundance.kind", f"one of {tuple(KINDS)}",
          kind)
    _need(a.get("transform") in TRANSFORMS, "abundance.transform", f"one of {TRANSFORMS}",
          a.get("transform"))
    files = a.get("files")
    _need(isinstance(files, list) and len(files) == 2 and all(
        isinstance(f, str) and SAFE_NAME.fullmatch(f) for f in files), "abundance.files",
        "the abundance model's and the OOD reference's file names", files)
    why = recipe_problem(a.get("recipe"))
    _need(not why, "abundance.recipe", "a recipe as hespot fit writes it", why)
    _need(set(a["recipe"]["features"]) <= specs, "abundance.recipe",
          f"a recipe reading feature parts of {sorted(specs)}", a["recipe"]["features"])
    _need(isinstance(a.get("simplex"), bool), "abundance.simplex", "true or false",
          a.get("simplex"))
    check_calibration(a.get("calibration"), len(meta["cell_types"]))
    ood = a.get("ood")
    _need(isinstance(ood, dict), "abundance.ood", "an object", ood)
    feats = ood.get("features")
    _need(isinstance(feats, list) and len(feats) > 0 and set(feats) <= specs,
          "abundance.ood.features", f"a non-empty list of feature parts of {sorted(specs)}",
          feats)
    t = ood.get("threshold")
    _need(isinstance(t, dict) and set(t) == {"slide", "spot"} and all(
        finite_number(v) and v >= 0 for v in t.values()), "abundance.ood.threshold",
        "{'slide': number >= 0, 'spot': number >= 0}", t)
