"""From H&E slides to cell-type maps in one command: ``hespot map SLIDE [SLIDE ...]
[--model NAME|DIR] [--grid visium|square:<µm>] [--spots CSV ...] [--mpp X] --out DIR``
(``python -m regress.map``).

1. Checked before any work: the model (a shipped model's name, default
   ``her2st-breast``, or a folder of ``hespot fit``: :mod:`regress.catalog`), the output
   folder (new, empty, or this same run's: :mod:`regress.map_folder`), and the slides
   (readable, a pixel size in their metadata or ``--mpp``, tissue to lay a grid on).
2. Import (:mod:`data.importers.wsi`): each slide read in place, its spots a grid over the
   tissue (Visium geometry by default) or ``--spots``, into ``OUT/slides.h5``.
3. Stage 1 as the model's spec says into ``OUT/embeddings.zarr`` (its log and progress
   bars shown; ``--device`` and the Dask flags passed on), then the prediction
   (:mod:`regress.predict`): ``OUT/predictions.csv`` (abundances), ``rank_scores.csv``,
   ``predictions.h5ad`` (and ``predictions.zarr`` with ``--spatialdata``).
4. For each slide ``OUT/<slide>.geojson`` (QuPath: File > Import objects; one detection
   per spot with every cell type's abundance and interval as measurements), its pictures
   under ``OUT/<slide>/`` (:mod:`regress.outputs.sheets`), and ``OUT/index.html``.

A second run on the same folder skips the import and stage 1's finished slides;
``OUT/map.json`` records the run's inputs and each step's time.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data.cli import config_parser, entry_point, resolve_config, run_stage
from data.cluster import CLUSTER_FLAGS
from data.config import ImportWsiConfig
from data.errors import ConfigError
from data.h5 import CanonicalH5
from data.importers.common import import_slides
from data.importers.wsi import gather, slide_names
from data.wsi.grid import SPOT_RATIO, GridSpec
from regress import map_folder
from regress.bundle import load_bundle
from regress.catalog import resolve_model
from regress.config import MapConfig, PredictConfig
from regress.outputs.geojson import write_geojson
from regress.outputs.index_page import write_index
from regress.outputs.maps import Maps
from regress.outputs.sheets import write_slide_pictures
from regress.predict import run as predict

log = logging.getLogger("hespot")

H5_NAME = "slides.h5"
STORE_NAME = "embeddings.zarr"


def import_run(cfg: MapConfig, h5: Path) -> None:
    """The slides as H&E-only test slides in ``h5`` (spots a grid over the tissue, or
    the given CSVs), read in place."""
    wsi = ImportWsiConfig(out=str(h5), images="reference", reader=cfg.reader,
                          slide=cfg.slides, name=cfg.name, spots=cfg.spots, grid=cfg.grid,
                          min_tissue=cfg.min_tissue, mpp=cfg.mpp, quiet=cfg.quiet)
    import_slides(gather(wsi), wsi, "hespot map")


def spot_outline(cfg: MapConfig, pixel_um: float | None, xy: np.ndarray) -> tuple[str, float]:
    """(outline, size in level-0 px) of a slide's spots in QuPath: the grid's cell (a
    square grid) or a circle of the spot's diameter (Visium geometry; given spots are
    drawn so, 55 µm, or at 0.55 of their spacing without a pixel size)."""
    spec = GridSpec.parse(cfg.grid)
    if pixel_um:
        if spec.kind == "square" and not cfg.spots:
            return "square", spec.pitch_um / pixel_um
        return "circle", spec.spot_um / pixel_um
    if len(xy) < 2:
        return "circle", 1.0
    from scipy.spatial import cKDTree

    nearest = cKDTree(xy).query(xy, k=2)[0][:, 1]
    return "circle", float(SPOT_RATIO * np.median(nearest[nearest > 0])) \
        if (nearest > 0).any() else 1.0


def write_slide_files(cfg: MapConfig, out: Path, h5_path: Path, maps: Maps) -> dict:
    """Each slide's GeoJSON and pictures: slide -> {"ood", "pictures", "files"} (what
    :func:`regress.outputs.index_page.write_index` takes)."""
    slides: dict[str, dict] = {}
    slide_of = maps.frame["slide"].astype(str).to_numpy()
    values = maps.abundance if maps.abundance is not None else maps.rank_score
    with CanonicalH5(h5_path) as h5:
        for slide in tqdm(list(dict.fromkeys(slide_of)), desc="maps", unit="slide",
                          disable=cfg.quiet):
            rows = slide_of == slide
            xy = maps.frame.loc[rows, ["x", "y"]].to_numpy(float)
            outline, size = spot_outline(cfg, h5.pixel_size_um(slide), xy)
            geojson = write_geojson(
                out / f"{slide}.geojson", xy, size, values[rows], maps.cell_types,
                None if maps.lower is None else maps.lower[rows],
                None if maps.upper is None else maps.upper[rows], outline=outline,
                spot_ids=maps.frame.loc[rows, "spot_id"].astype(str).tolist(), slide=slide)
            slides[slide] = {"ood": maps.slides.get(slide),
                             "pictures": write_slide_pictures(out, slide, maps, h5),
                             "files": {"QuPath GeoJSON": geojson}}
    return slides


def _relative(out: Path, slides: dict) -> dict[str, dict[str, str]]:
    """slide -> label -> file relative to ``out`` (the record's list of files)."""
    found = {}
    for slide, entry in slides.items():
        pictures = entry["pictures"]
        files = {**entry["files"], **pictures.files(),
                 **{f"type {t}": p for t, p in pictures.types.items()}}
        found[slide] = {k: Path(p).relative_to(out).as_posix() for k, p in files.items()}
    return found


def check_command(cfg: MapConfig) -> None:
    """Slides and an output folder given.

    Raises:
        ConfigError: either missing.
    """
    if not cfg.slides:
        raise ConfigError("give at least one slide: hespot map SLIDE [SLIDE ...] --out DIR")
    if not cfg.out:
        raise ConfigError("give the output folder: hespot map SLIDE ... --out DIR")


def run(cfg: MapConfig) -> Path:
    """Map ``cfg.slides``; returns the output folder."""
    check_command(cfg)
    out = Path(cfg.out)
    model_dir = resolve_model(cfg.model)
    bundle = load_bundle(model_dir)
    names = slide_names(ImportWsiConfig(slide=cfg.slides, name=cfg.name))
    record = map_folder.open_folder(out, map_folder.run_inputs(cfg, model_dir, names))
    steps = record["steps"]
    h5 = out / H5_NAME
    t0 = time.perf_counter()
    if steps.get("import") is None or not h5.is_file():
        import_run(cfg, h5)
        steps["import"] = round(time.perf_counter() - t0, 2)
        imported = f"{steps['import']} s"
        map_folder.save(out, record)
    else:
        imported = "skipped"
        log.info("import: %s already holds %s, skipped", h5, ", ".join(names))
    t1 = time.perf_counter()
    passed = {k: getattr(cfg, k) for k in ("device", "threads", *CLUSTER_FLAGS,
                                           "spatialdata", "quiet")}
    maps = predict(PredictConfig(model=str(model_dir), h5=str(h5), slides=tuple(names),
                                 out=str(out), store=str(out / STORE_NAME), stage1_log=True,
                                 **passed))
    t2 = time.perf_counter()
    slides = write_slide_files(cfg, out, h5, maps)
    run_files = {name: out / name for name in ("predictions.h5ad", "predictions.csv",
                                               "rank_scores.csv", "predictions.zarr")
                 if (out / name).is_file()}
    write_index(out, {"model_name": cfg.model, "model": bundle.meta, "slides": slides,
                      "files": run_files, "title": f"hespot map: {', '.join(names)}",
                      "command": "hespot map " + " ".join(map(str, cfg.slides))})
    steps.update({"stage 1 and prediction": round(t2 - t1, 2),
                  "maps": round(time.perf_counter() - t2, 2)})
    map_folder.save(out, {**record, "slides": names, "files": _relative(out, slides)})
    log.info("mapped %s in %.1f s (import %s, stage 1 and prediction %.1f s, maps %.1f s) "
             "-> %s", ", ".join(names), time.perf_counter() - t0, imported, t2 - t1,
             time.perf_counter() - t2, out / "index.html")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = config_parser("hespot map", __doc__, MapConfig,
                      common=("device", "threads", *CLUSTER_FLAGS, "spatialdata", "quiet"))
    p.add_argument("slides", nargs="*", help="H&E slide images (SVS, NDPI, MRXS, SCN, TIFF, "
                   "OME-TIFF, JPEG, PNG)")
    p.add_argument("--out", help="output folder (new, empty, or this same run's)")
    p.add_argument("--model", help=f"a shipped model's name or a model folder of hespot fit "
                   f"(default {MapConfig.model}; hespot models lists them)")
    p.add_argument("--grid", help="visium (the default) or square:<pitch µm>")
    p.add_argument("--spots", action="append", help="spots CSV (x, y in level-0 px "
                   "[, spot_id]), one per slide in order, instead of a grid")
    p.add_argument("--name", action="append", help="slide name (default: the file's stem)")
    p.add_argument("--mpp", type=float, help="µm per pixel (overrides the files')")
    p.add_argument("--min-tissue", type=float, help="share of a grid spot's disc that must "
                   f"be tissue (default {MapConfig.min_tissue})")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    return run_stage(resolve_config(MapConfig, build_parser().parse_args(argv)), run,
                     check=check_command)


if __name__ == "__main__":
    raise SystemExit(main())
