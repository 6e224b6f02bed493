"""Apply a model folder to slides: ``hespot predict --model DIR|NAME --h5 FILE [--slides
...] --out DIR`` (``python -m regress.predict``).

1. The model folder (or the shipped model of that name: :mod:`regress.catalog`,
   ``hespot models``) is read and checked (format, checksums; :mod:`regress.bundle`), and
   so is everything it needs of the slides: their names, a pixel size where the model's
   patches are in µm, a weights file where a backbone came from one, the cell types.
2. Stage 1 runs as the model's spec says (backbone, weights, TTA views, crops, stages),
   as its own process (``python -m embed.run``: torch stays out of stage 2), into
   ``--store`` (default ``OUT/embeddings.zarr``); finished slides are skipped, so a
   second call is quick. The stored settings are then checked against the spec.
3. The rank models, their recipe's levers (smoothing, context...) and the ensemble or
   single model are applied as ``submit`` applies them; the abundance model, its 90 %
   intervals and the OOD scores as ``hespot regress`` made them
   (:mod:`regress.bundle_maps`: one warning line per flagged slide). Written
   (:mod:`regress.outputs.maps`): ``OUT/predictions.csv`` (abundances),
   ``OUT/rank_scores.csv`` (the rank scores), ``OUT/predictions.h5ad`` (X = abundances;
   layers ``rank_score``, ``per_type``, ``lower``, ``upper``; ``uns['hespot']``) and, with
   ``--spatialdata``, ``OUT/predictions.zarr``. The model card's summary is logged.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.check import preflight
from data.cli import DEFAULT_OUT, config_parser, entry_point, parse_list, resolve_config, run_stage
from data.cluster import CLUSTER_FLAGS
from data.errors import DataError, Problem
from data.h5 import CanonicalH5
from data.store import FeatureSpec, open_store, read_array
from regress.bundle import Bundle, load_bundle
from regress.bundle_maps import predict_maps
from regress.catalog import resolve_model, shipped_models
from regress.config import PredictConfig
from regress.ensemble import combine
from regress.features import SlideSet
from regress.orders import combine_by_slide
from regress.outputs import element_name, require_spatialdata, write_spatialdata
from regress.outputs.maps import Maps, write_maps
from regress.recipes import Recipe, predict_slides, prepare
from regress.results import predictions_frame
from regress.stage1_spec import check_stored, embed_as_spec, require_weights

log = logging.getLogger("hespot")


def check_slides(bundle: Bundle, h5: CanonicalH5, slides: Sequence[str],
                 spatialdata: bool = False) -> list[str]:
    """The slides to predict (default: the test slides, else all), checked before any work.

    Raises:
        DataError: an unknown slide; train slides whose cell types are not the model's; a
            slide without a pixel size where the model's patches are in µm.
    """
    names = list(dict.fromkeys(slides)) or h5.test_slides or h5.train_slides
    for slide in names:
        h5.split_of(slide)
    clash = len({element_name(s) for s in names}) < len(names)
    if spatialdata and clash:
        raise DataError(Problem(str(h5.path), "", "slides", "slide names that stay distinct "
                                "as SpatialData names", f"{names}", "predict them in two "
                                "calls, or without --spatialdata"))
    if any(h5.split_of(s) == "Train" for s in names) and list(h5.cell_types) != bundle.cell_types:
        raise DataError(Problem(str(h5.path), "", "cell types",
                                f"the model's {len(bundle.cell_types)} cell types",
                                f"{len(h5.cell_types)} others on the train slides",
                                "predict test slides, or fit a model on these cell types"))
    for part in bundle.meta["features"]:
        for slide in names:
            um = [part["patch_um"]] if part.get("patch_um") else []
            um += part.get("identity", {}).get("contexts_um", [])
            if um and not h5.pixel_size_um(slide):
                sizes = ", ".join(f"{u:g}" for u in um)
                raise DataError(Problem(str(h5.path), slide, "pixel_size_um",
                                        f"a pixel size (the model cuts {sizes} µm patches)",
                                        "none", "re-import the slide with its "
                                        "pixel size (--pixel-size)"))
    return names


def load_inputs(bundle: Bundle, cfg: PredictConfig, store_path: str, slides: Sequence[str]
                ) -> SlideSet:
    """The feature parts every model of the bundle reads, per slide, with positions and
    pixel sizes (position features and smoothing in µm need them)."""
    store = open_store(store_path)
    data = SlideSet(tuple(bundle.cell_types), [], list(slides))
    with CanonicalH5(cfg.h5) as h5:
        for slide in slides:
            table = h5.spots(slide)
            data.xy[slide] = np.stack([table.x, table.y], axis=1)
            data.spot_ids[slide] = table.spot_ids
            data.pixel_um[slide] = h5.pixel_size_um(slide)
            for part in bundle.meta["features"]:
                spec = FeatureSpec.parse(part["spec"])
                data.parts.setdefault(str(spec), {})[slide] = read_array(
                    store, store_path, spec, slide, len(table))
    return data


def model_predictions(bundle: Bundle, data: SlideSet, entry: dict) -> dict[str, np.ndarray]:
    """slide -> float (n_spots, n_types): one model of the folder with its recipe's levers
    (as its test.csv was made)."""
    prepared, post = prepare(data, Recipe.from_dict(entry["recipe"]))
    est = bundle.estimators[entry["id"]]
    for slide in data.test:
        width = prepared.X[slide].shape[1]
        if est.n_inputs not in (None, width):
            raise DataError(Problem(str(bundle.folder), slide, f"{entry['id']}.recipe",
                                    f"{est.n_inputs} features (the model's arrays)",
                                    f"{width} from its recipe and the stored features",
                                    "fit the model again (hespot fit), or predict into a "
                                    "new --store"))
    return predict_slides(est, prepared, post, data.test, entry["kind"])


def apply_models(bundle: Bundle, data: SlideSet) -> dict[str, np.ndarray]:
    """slide -> float (n_spots, n_types): the single model clipped to [0, 1] or the
    weighted mean of per-spot ranks of the ensemble (as submit)."""
    per_model = [model_predictions(bundle, data, e) for e in bundle.meta["models"]]
    w = np.asarray([e["weight"] for e in bundle.meta["models"]], float)
    cols = bundle.cell_types
    return {s: combine([pd.DataFrame(p[s], columns=cols) for p in per_model], w / w.sum(),
                       cols) for s in data.test}


def apply_layers(bundle: Bundle, data: SlideSet) -> dict[str, np.ndarray]:
    """Layer name (``per_type``) -> float (n_spots of every slide in order, n_types)."""
    layers = {}
    for entry in bundle.meta.get("layers", []):
        preds = model_predictions(bundle, data, entry)
        layers[entry["name"]] = np.concatenate([preds[s] for s in data.test])
    return layers


def run(cfg: PredictConfig) -> Maps:
    """Predict the slides into ``cfg.out``; returns what the files hold."""
    t0 = time.perf_counter()
    bundle = load_bundle(resolve_model(cfg.model))
    if cfg.spatialdata:
        require_spatialdata()
    store = cfg.store or str(Path(cfg.out) / "embeddings.zarr")
    with CanonicalH5(cfg.h5) as h5:
        slides = check_slides(bundle, h5, cfg.slides, cfg.spatialdata)
    preflight(cfg.h5, slides)
    require_weights(bundle, cfg.weights)
    log.info("model %s: %s; slides %s", cfg.model, [m["id"] for m in bundle.meta["models"]],
             slides)
    if bundle.meta.get("card_summary"):
        log.info("%s", bundle.meta["card_summary"])
    t1 = time.perf_counter()
    embed_as_spec(bundle, cfg, store, slides)
    check_stored(bundle, store, slides)
    t2 = time.perf_counter()
    data = load_inputs(bundle, cfg, store, slides)
    preds = apply_models(bundle, data)
    layers = apply_layers(bundle, data)
    frame = predictions_frame(preds, bundle.cell_types, data.xy, data.spot_ids)
    values = frame[bundle.cell_types].to_numpy(float)
    if bundle.meta.get("orders_from"):
        values = combine_by_slide(values, layers["per_type"], frame["slide"].to_numpy())
        frame[bundle.cell_types] = values
    out = Path(cfg.out)
    maps = predict_maps(bundle, data, frame, values, layers.get("per_type"))
    write_maps(out, maps, cfg.h5)
    if cfg.spatialdata:
        X = values if maps.abundance is None else maps.abundance
        write_spatialdata(out / "predictions.zarr", frame, X, bundle.cell_types, cfg.h5)
    log.info("predicted %d spots of %d slides in %.1f s (checks %.1f s, stage 1 %.1f s, "
             "stage 2 and writing %.1f s) -> %s", len(frame), len(slides),
             time.perf_counter() - t0, t1 - t0, t2 - t1, time.perf_counter() - t2, out)
    return maps


def build_parser() -> argparse.ArgumentParser:
    p = config_parser("python -m regress.predict", __doc__, PredictConfig,
                      common=("h5", "store", "device", "threads", *CLUSTER_FLAGS, "spatialdata",
                              "quiet"))
    p.add_argument("--model", help="model folder of hespot fit, or the name of a model "
                   f"shipped with hespot ({', '.join(shipped_models()) or 'none'}; hespot "
                   f"models lists them) (default {DEFAULT_OUT}/model)")
    p.add_argument("--slides", type=parse_list,
                   help="comma-separated slides (default: the test slides, all if none)")
    p.add_argument("--out", help=f"output folder (default {DEFAULT_OUT}/predict)")
    p.add_argument("--weights", help="the weights file of a backbone that the model took "
                   "from a local file (checked against its sha256)")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    # an unknown model name is refused before the output folder is made
    return run_stage(resolve_config(PredictConfig, build_parser().parse_args(argv)), run,
                     check=lambda cfg: resolve_model(cfg.model))


if __name__ == "__main__":
    raise SystemExit(main())
