"""Import H&E slides that have no spatial transcriptomics:
``python -m data.importers.wsi --slide FILE [--slide FILE ...] [--spots CSV ...]
[--grid visium|square:<pitch µm>] [--mpp X] --out FILE.h5`` (``hespot import-wsi``).

Each slide becomes a test slide (no targets): stage 1 embeds it and a model fitted on
spatial-transcriptomics slides (``hespot fit``) predicts it (``hespot predict``). Its spots
come from ``--spots`` (a CSV with ``x`` = level-0 pixel column and ``y`` = row, an optional
``spot_id``, other columns kept as extra fields; one CSV per ``--slide``, in order) or,
without it, from a grid laid over the tissue: Visium geometry by default (55 µm spots,
100 µm centre to centre, hexagonal) or ``square:<pitch>``. Tissue is found on a low
pyramid level (:mod:`data.wsi.tissue`); a grid spot is kept when at least ``--min-tissue``
of its disc is tissue. The mask is stored beside the spots and shown in the report.
Images are held by reference and read in place by default (``--images copy`` copies the
pixels into the HDF5 window by window); nothing holds a whole slide.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.cli import entry_point
from data.config import MIN_TISSUE, ImportWsiConfig
from data.errors import ConfigError, DataError, Problem
from data.importers.common import (
    PendingSlide,
    import_slides,
    importer_parser,
    importer_settings,
    numeric_columns,
    read_table,
)
from data.wsi.grid import GridSpec, lay_grid
from data.wsi.pixel_size import check_override
from data.wsi.readers import open_image
from data.wsi.tissue import detect_tissue

log = logging.getLogger("hespot")


def spots_from_csv(slide: PendingSlide, csv: Path) -> None:
    """Fill ``slide``'s spots from a spots CSV (x, y in level-0 pixels)."""
    df = read_table(csv, slide.name, ["x", "y"])
    xy = numeric_columns(df, ["x", "y"], csv, slide.name)
    slide.x, slide.y, slide.spots_path = xy[:, 0], xy[:, 1], csv
    for c in df.columns:
        if c in ("x", "y"):
            continue
        col = df[c]
        slide.extra[c] = col.astype(str).to_numpy() if c == "spot_id" or col.dtype == object \
            else col.to_numpy()


def spots_from_grid(slide: PendingSlide, spec: GridSpec, min_tissue: float) -> None:
    """Lay ``spec``'s grid over ``slide``'s tissue; keep spots mostly on tissue.

    Raises:
        DataError: unknown pixel size, no tissue, or no grid spot on tissue.
    """
    with open_image(slide.image_path, slide.name, slide.reader, slide.pixel_size_um) as image:
        pixel = image.pixel_size_um
        if not pixel:
            raise DataError(Problem(str(slide.image_path), slide.name, "pixel size",
                                    "a pixel size (the grid is laid out in µm)",
                                    "none in the file's metadata", "pass --mpp (µm per "
                                    "pixel), or give the spots with --spots"))
        tissue = detect_tissue(image)
        grid = lay_grid(image.shape, pixel, spec)
    cover = tissue.coverage(grid.x, grid.y, spec.spot_um / 2 / pixel)
    kept = grid.subset(cover >= min_tissue)
    if len(kept) == 0:
        raise DataError(Problem(str(slide.image_path), slide.name, "tissue",
                                f"grid spots with >= {min_tissue:.0%} of their disc on tissue",
                                f"none of {len(grid)} (tissue share {tissue.share:.1%})",
                                "lower --min-tissue, use a finer --grid, or pass --spots"))
    log.info("slide %s: %s grid, %d of %d spots on tissue (tissue %.1f%% of the slide: %s)",
             slide.name, spec.kind, len(kept), len(grid), 100 * tissue.share, tissue.rule)
    slide.x, slide.y, slide.tissue = kept.x, kept.y, tissue
    slide.pixel_size_um = pixel
    slide.extra = {"spot_id": kept.spot_ids, "array_row": kept.array_row,
                   "array_col": kept.array_col}


def slide_names(cfg: ImportWsiConfig) -> list[str]:
    """The slides' names: ``--name`` each, or the files' stems."""
    names = list(cfg.name) or [Path(s).name.split(".")[0] for s in cfg.slide]
    if len(names) != len(cfg.slide):
        raise ConfigError(f"give one --name per --slide ({len(cfg.slide)} slides, "
                          f"{len(names)} names)")
    return names


def gather(cfg: ImportWsiConfig) -> list[PendingSlide]:
    """The slides of the settings, their spots read or laid out."""
    spots = [Path(s) for s in cfg.spots]
    if spots and len(spots) != len(cfg.slide):
        raise ConfigError(f"give one --spots per --slide ({len(cfg.slide)} slides, "
                          f"{len(spots)} spot tables), or none to lay a grid")
    spec = GridSpec.parse(cfg.grid)
    mpp = check_override(cfg.mpp)
    slides = []
    for i, (path, name) in enumerate(zip(map(Path, cfg.slide), slide_names(cfg), strict=True)):
        slide = PendingSlide(name, path, np.zeros(0), np.zeros(0), pixel_size_um=mpp,
                             source=f"wsi:{path}", image_mode=cfg.images, reader=cfg.reader)
        if spots:
            spots_from_csv(slide, spots[i])
        else:
            spots_from_grid(slide, spec, cfg.min_tissue)
        slides.append(slide)
    return slides


def build_parser() -> argparse.ArgumentParser:
    p = importer_parser("hespot import-wsi", __doc__, ImportWsiConfig)
    p.add_argument("--slide", action="append",
                   help="slide image (SVS, NDPI, MRXS, SCN, TIFF, OME-TIFF, JPEG, PNG); "
                   "repeat for more (at least one)")
    p.add_argument("--name", action="append", help="slide name (default: the file's stem)")
    p.add_argument("--spots", action="append", help="spots CSV: x, y [, spot_id]")
    p.add_argument("--grid", help="visium (the default) or square:<pitch µm>")
    p.add_argument("--min-tissue", type=float,
                   help=f"share of a grid spot's disc that must be tissue (default "
                   f"{MIN_TISSUE})")
    p.add_argument("--mpp", type=float, help="µm per pixel (overrides the file's)")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = importer_settings(ImportWsiConfig, build_parser(), argv, slide="a slide image")
    return import_slides(gather(cfg), cfg, "command line")


if __name__ == "__main__":
    raise SystemExit(main())
