"""Import slides listed in a manifest: ``python -m data.importers.table --manifest CSV --out FILE``.

The manifest has one row per slide with columns ``slide, image, spots, split`` and an
optional ``pixel_size_um``; paths are relative to the manifest. A spots CSV has ``x``
(pixel column) and ``y`` (pixel row), an optional ``spot_id``, and, for train slides,
one numeric column per cell type. Test slides' other columns are kept as extra fields.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.cli import entry_point
from data.config import ImportTableConfig
from data.errors import DataError, Problem
from data.importers.common import (
    PendingSlide,
    check_unique_slides,
    import_slides,
    importer_parser,
    importer_settings,
    numeric_columns,
    read_table,
)

MANIFEST_COLUMNS = ["slide", "image", "spots", "split"]


def pixel_size(value: object, manifest: Path, slide: str) -> float | None:
    """A row's ``pixel_size_um`` (None when empty); DataError unless a positive number."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    px = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    if not (np.isfinite(px) and px > 0):
        raise DataError(Problem(str(manifest), slide, "pixel_size_um",
                                "a positive number of µm per pixel, or nothing",
                                repr(value)[:60], "fix the manifest's pixel_size_um column"))
    return float(px)


def gather_row(row: pd.Series, base: Path, manifest: Path) -> PendingSlide:
    slide = str(row["slide"])
    split = str(row["split"]).strip().capitalize()
    if split not in ("Train", "Test"):
        raise DataError(Problem(str(manifest), slide, "split", "Train or Test",
                                repr(row["split"]), "set the split column to train or test"))
    spots_path = base / str(row["spots"])
    df = read_table(spots_path, slide, ["x", "y"])
    xy = numeric_columns(df, ["x", "y"], spots_path, slide)
    extra: dict[str, np.ndarray] = {}
    if "spot_id" in df:
        extra["spot_id"] = df["spot_id"].astype(str).to_numpy()
    rest = [c for c in df.columns if c not in ("x", "y", "spot_id")]
    px = pixel_size(row.get("pixel_size_um"), manifest, slide)
    out = PendingSlide(slide, base / str(row["image"]), xy[:, 0], xy[:, 1], extra=extra,
                       pixel_size_um=px,
                       source=f"table:{spots_path}", spots_path=spots_path,
                       abundance_path=spots_path)
    if split == "Train":
        if not rest:
            raise DataError(Problem(str(spots_path), slide, "cell types",
                                    "one numeric column per cell type besides x, y",
                                    f"columns {list(df.columns)}",
                                    "add the abundances, or mark the slide as test"))
        out.Y, out.cell_types = numeric_columns(df, rest, spots_path, slide), rest
    else:
        for c in rest:
            extra[c] = df[c].to_numpy() if df[c].dtype != object else df[c].astype(str).to_numpy()
    return out


def build_parser() -> argparse.ArgumentParser:
    p = importer_parser("python -m data.importers.table", __doc__, ImportTableConfig)
    p.add_argument("--manifest", help="CSV: slide, image, spots, split[, pixel_size_um] "
                   "(required)")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = importer_settings(ImportTableConfig, build_parser(), argv,
                            manifest="the manifest CSV")
    path = Path(cfg.manifest)
    manifest = read_table(path, required=MANIFEST_COLUMNS)
    check_unique_slides(manifest, path)  # before any slide's table or image is read
    return import_slides([gather_row(r, path.parent, path) for _, r in manifest.iterrows()],
                         cfg, str(path))


if __name__ == "__main__":
    raise SystemExit(main())
