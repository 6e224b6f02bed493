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

from data.cli import Parser, run_cli, setup_logging
from data.errors import ConfigError, DataError, Problem
from data.importers.common import (
    PendingSlide,
    add_image_options,
    numeric_columns,
    read_table,
    set_image_options,
    write_slides,
)
from data.wsi.grid import GridSpec, lay_grid
from data.wsi.pixel_size import check_override
from data.wsi.readers import open_image
from data.wsi.tissue import detect_tissue

log = logging.getLogger("hespot")

#: a grid spot is kept when at least this share of its disc is tissue
MIN_TISSUE = 0.5


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


def _names(args: argparse.Namespace) -> list[str]:
    names = args.name or [Path(s).name.split(".")[0] for s in args.slide]
    if len(names) != len(args.slide):
        raise ConfigError(f"give one --name per --slide ({len(args.slide)} slides, "
                          f"{len(names)} names)")
    return names


def gather(args: argparse.Namespace) -> list[PendingSlide]:
    """The slides of the command line, their spots read or laid out."""
    spots = args.spots or []
    if spots and len(spots) != len(args.slide):
        raise ConfigError(f"give one --spots per --slide ({len(args.slide)} slides, "
                          f"{len(spots)} spot tables), or none to lay a grid")
    spec = GridSpec.parse(args.grid)
    mpp = check_override(args.mpp)
    slides = []
    for i, (path, name) in enumerate(zip(args.slide, _names(args), strict=True)):
        slide = PendingSlide(name, path, np.zeros(0), np.zeros(0), pixel_size_um=mpp,
                             source=f"wsi:{path}", image_mode=args.images, reader=args.reader)
        if spots:
            spots_from_csv(slide, spots[i])
        else:
            spots_from_grid(slide, spec, args.min_tissue)
        slides.append(slide)
    return slides


def _main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="hespot import-wsi", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slide", type=Path, action="append", required=True,
                   help="slide image (SVS, NDPI, MRXS, SCN, TIFF, OME-TIFF, JPEG, PNG)")
    p.add_argument("--name", action="append", help="slide name (default: the file's stem)")
    p.add_argument("--spots", type=Path, action="append", help="spots CSV: x, y [, spot_id]")
    p.add_argument("--grid", default="visium", help="visium or square:<pitch µm>")
    p.add_argument("--min-tissue", type=float, default=MIN_TISSUE,
                   help="share of a grid spot's disc that must be tissue")
    p.add_argument("--mpp", type=float, help="µm per pixel (overrides the file's)")
    p.add_argument("--out", type=Path, required=True)
    add_image_options(p)
    p.set_defaults(images="reference")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    setup_logging(args.quiet)
    slides = gather(args)
    set_image_options(slides, args.images, args.reader)
    write_slides(slides, args.out, "command line")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())
