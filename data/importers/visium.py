"""Import Space Ranger (Visium) outputs into the canonical HDF5 layout.

``python -m data.importers.visium --outs OUTS --image IMAGE [--abundances CSV] [--slide NAME]
[--outs ... --image ...] --out FILE`` (the flags repeat, one group per slide, in order), or
``--manifest CSV`` with columns ``slide, outs, image[, abundances]``.

Reads ``spatial/tissue_positions.csv`` (or the older headerless
``tissue_positions_list.csv``) and ``spatial/scalefactors_json.json`` (pixel size =
55 µm / ``spot_diameter_fullres``); keeps in-tissue spots; spot centres are the
full-resolution pixel coordinates. Abundances: a CSV keyed by barcode (first column),
one column per cell type; a slide without abundances becomes a Test slide.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.cli import entry_point
from data.config import ImportVisiumConfig
from data.errors import DataError, Problem
from data.importers.common import (
    PendingSlide,
    check_unique_slides,
    import_slides,
    importer_parser,
    importer_settings,
    numeric_columns,
    read_keyed_table,
    read_table,
    require_path,
)

log = logging.getLogger("hespot")

VISIUM_SPOT_UM = 55.0
POSITION_COLUMNS = ["barcode", "in_tissue", "array_row", "array_col",
                    "pxl_row_in_fullres", "pxl_col_in_fullres"]


def read_positions(outs: Path, slide: str) -> pd.DataFrame:
    """In-tissue spots with barcode, pixel row and column."""
    spatial = require_path(outs / "spatial", "a Space Ranger spatial/ folder",
                           "pass the Space Ranger 'outs' folder as --outs", slide, is_dir=True)
    new, old = spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv"
    if new.is_file():
        df = read_table(new, slide, POSITION_COLUMNS)
        path = new
    elif old.is_file():
        df = read_table(old, slide, header=None)
        if df.shape[1] != len(POSITION_COLUMNS):
            raise DataError(Problem(str(old), slide, "columns", f"{len(POSITION_COLUMNS)} "
                                    f"columns {POSITION_COLUMNS}", f"{df.shape[1]} columns",
                                    "check the file is a Space Ranger positions list"))
        df.columns = POSITION_COLUMNS
        path = old
    else:
        raise DataError(Problem(str(spatial), slide, "tissue_positions.csv",
                                "spatial/tissue_positions.csv or tissue_positions_list.csv",
                                "neither", "pass the Space Ranger 'outs' folder as --outs"))
    in_tissue = numeric_columns(df, ["in_tissue"], path, slide)[:, 0] == 1
    return df.loc[in_tissue].reset_index(drop=True).assign(_path=str(path))


def read_pixel_size(outs: Path, slide: str) -> float:
    path = require_path(outs / "spatial" / "scalefactors_json.json", "scalefactors_json.json",
                        "pass the Space Ranger 'outs' folder as --outs", slide)
    try:
        diameter = float(json.loads(path.read_text())["spot_diameter_fullres"])
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(Problem(str(path), slide, "spot_diameter_fullres",
                                "a positive number", f"error: {exc}",
                                "use the scalefactors file Space Ranger wrote")) from exc
    if not math.isfinite(diameter) or diameter <= 0:
        raise DataError(Problem(str(path), slide, "spot_diameter_fullres",
                                "a positive number", str(diameter), "check the file"))
    return VISIUM_SPOT_UM / diameter


def gather_slide(slide: str, outs: Path, image: Path, abundances: Path | None) -> PendingSlide:
    pos = read_positions(outs, slide)
    path = Path(pos["_path"].iloc[0]) if len(pos) else outs
    pix = numeric_columns(pos, ["pxl_col_in_fullres", "pxl_row_in_fullres"], path, slide)
    barcodes = pos["barcode"].astype(str).to_numpy()
    out = PendingSlide(slide, image, pix[:, 0], pix[:, 1], extra={"spot_id": barcodes},
                       pixel_size_um=read_pixel_size(outs, slide),
                       source=f"visium:{outs}", spots_path=path)
    if abundances is None:
        return out
    table = read_keyed_table(abundances, slide, "barcode", "one row per barcode")
    have = np.isin(barcodes, table.index)
    if not have.any():
        raise DataError(Problem(str(abundances), slide, "barcode", "rows keyed by the "
                                "in-tissue barcodes of tissue_positions", "no barcode matches",
                                "put the barcodes in the first column"))
    if not have.all():
        log.warning("%s, slide %s: %d in-tissue spots have no abundances; dropped",
                    abundances, slide, int((~have).sum()))
    cell_types = list(table.columns)
    out.Y = numeric_columns(table.loc[barcodes[have]], cell_types, abundances, slide)
    out.cell_types = cell_types
    out.abundance_path = abundances
    out.x, out.y = out.x[have], out.y[have]
    out.extra = {"spot_id": barcodes[have]}
    return out


def _groups(cfg: ImportVisiumConfig) -> list[tuple[str, Path, Path, Path | None]]:
    """(slide, outs folder, image, abundances or None) of every slide to import."""
    if cfg.manifest:
        manifest = Path(cfg.manifest)
        df = read_table(manifest, required=["slide", "outs", "image"])
        base = manifest.parent
        check_unique_slides(df, manifest)  # before any slide's files are read
        return [(str(r.slide), base / str(r.outs), base / str(r.image),
                 base / str(r.abundances) if "abundances" in df and pd.notna(r.abundances)
                 else None) for r in df.itertuples()]
    outs, images = [Path(o) for o in cfg.outs], [Path(i) for i in cfg.image]
    if not outs or len(outs) != len(images):
        raise DataError(Problem("command line", "", "--outs/--image",
                                "one --image per --outs (or --manifest)",
                                f"{len(outs)} --outs, {len(images)} --image",
                                "repeat --outs DIR --image FILE for each slide"))
    slides = list(cfg.slide) or [o.parent.name if o.name == "outs" else o.name for o in outs]
    abund = [Path(a) for a in cfg.abundances]
    return [(slides[i], outs[i], images[i], abund[i] if i < len(abund) else None)
            for i in range(len(outs))]


def build_parser() -> argparse.ArgumentParser:
    p = importer_parser("python -m data.importers.visium", __doc__, ImportVisiumConfig)
    p.add_argument("--outs", action="append", help="Space Ranger outs/ folder")
    p.add_argument("--image", action="append", help="full-resolution image")
    p.add_argument("--abundances", action="append", help="CSV keyed by barcode")
    p.add_argument("--slide", action="append", help="slide name (default: folder name)")
    p.add_argument("--manifest", help="CSV: slide, outs, image[, abundances]")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = importer_settings(ImportVisiumConfig, build_parser(), argv)
    return import_slides([gather_slide(*g) for g in _groups(cfg)], cfg,
                         str(Path(cfg.manifest)) if cfg.manifest else "command line")


if __name__ == "__main__":
    raise SystemExit(main())
