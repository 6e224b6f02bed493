"""Import the her2st layout (the bundled sample) into the canonical HDF5 layout.

``python -m data.importers.her2st --src data/samples/her2st --tier subset --out out/her2st.h5``

Spots come from ``spots/<S>_selection.tsv`` (rows with ``selected == 1``; ``pixel_x`` is the
column, ``pixel_y`` the row); proportions from ``proportions/<tier>/<S>-proportion.tsv``,
joined on the key ``"{x}x{y}"``. Sections without proportions become Test slides.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from data.cli import check_name, entry_point
from data.config import DEFAULT_PIXEL_SIZE_UM, TIERS, ImportHer2stConfig
from data.errors import DataError, Problem
from data.images import is_file
from data.importers.common import (
    PendingSlide,
    importer_parser,
    importer_settings,
    numeric_columns,
    read_keyed_table,
    read_table,
    require_path,
    write_slides,
)

log = logging.getLogger("hespot")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".tif", ".tiff", ".png")


def _find_image(src: Path, section: str) -> Path:
    for suffix in IMAGE_SUFFIXES:
        path = src / "images" / f"{section}{suffix}"
        if is_file(path):
            return path
    raise DataError(Problem(str(src / "images"), section, "image",
                            f"images/{section}.jpg (or .tif/.png)", "no image for the section",
                            "add the section's full-resolution H&E image"))


def gather_section(src: Path, section: str, tier: str, pixel_size_um: float) -> PendingSlide:
    """Read one section's spots, image path and (if present) proportions."""
    spots_path = src / "spots" / f"{section}_selection.tsv"
    spots = read_table(spots_path, section, ["x", "y", "pixel_x", "pixel_y", "selected"])
    sel = numeric_columns(spots, ["selected"], spots_path, section)[:, 0] == 1
    spots = spots.loc[sel].reset_index(drop=True)
    grid = numeric_columns(spots, ["x", "y"], spots_path, section)
    keys = np.array([f"{int(a)}x{int(b)}" for a, b in grid])
    pix = numeric_columns(spots, ["pixel_x", "pixel_y"], spots_path, section)
    slide = PendingSlide(section, _find_image(src, section), pix[:, 0], pix[:, 1],
                         extra={"spot_id": keys}, pixel_size_um=pixel_size_um,
                         source=f"her2st:{src.name}", spots_path=spots_path)
    prop_path = src / "proportions" / tier / f"{section}-proportion.tsv"
    if not is_file(prop_path):
        return slide
    props = read_keyed_table(prop_path, section, "spot key", "unique spot keys")
    cell_types = [c for c in props.columns]
    have = np.isin(keys, props.index)
    if not have.all():
        log.warning("%s, slide %s: %d selected spots have no proportions row; dropped",
                    prop_path, section, int((~have).sum()))
    unused = len(props) - int(have.sum())
    if unused:
        log.warning("%s, slide %s: %d proportions rows match no selected spot; ignored",
                    prop_path, section, unused)
    Y = numeric_columns(props.loc[keys[have]], cell_types, prop_path, section)
    slide.x, slide.y = slide.x[have], slide.y[have]
    slide.extra = {"spot_id": keys[have]}
    slide.Y, slide.cell_types, slide.abundance_path = Y, cell_types, prop_path
    return slide


def gather(src: Path, tier: str = "subset", pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM,
           sections: Sequence[str] | None = None) -> list[PendingSlide]:
    """All sections of a her2st folder (or the named ones)."""
    require_path(src, "a her2st folder with spots/, images/, proportions/",
                 "pass --src (the bundled sample is data/samples/her2st)", is_dir=True)
    require_path(src / "spots", "a spots/ folder", "check --src", is_dir=True)
    found = sorted(p.name.removesuffix("_selection.tsv")
                   for p in (src / "spots").glob("*_selection.tsv"))
    if not found:
        raise DataError(Problem(str(src / "spots"), "", "", "files <section>_selection.tsv",
                                "none", "check --src"))
    if sections:
        unknown = sorted(set(sections) - set(found))
        if unknown:
            raise DataError(Problem(str(src / "spots"), unknown[0], "", f"one of {found}",
                                    "no spot file", "pass sections that exist"))
        found = [s for s in found if s in sections]
    return [gather_section(src, s, tier, pixel_size_um) for s in found]


def build_parser() -> argparse.ArgumentParser:
    p = importer_parser("python -m data.importers.her2st", __doc__, ImportHer2stConfig)
    p.add_argument("--src", help="her2st folder (default: the bundled sample)")
    p.add_argument("--tier", choices=TIERS,
                   help="proportions tier: subset (41 types, the default), minor (22), "
                   "major (8)")
    p.add_argument("--pixel-size", type=float,
                   help=f"µm per pixel of the full-resolution images (default "
                   f"{DEFAULT_PIXEL_SIZE_UM})")
    p.add_argument("--sections", nargs="*", help="import only these sections")
    return p


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    cfg = importer_settings(ImportHer2stConfig, build_parser(), argv)
    check_name("tier", cfg.tier, TIERS)
    t0 = time.perf_counter()
    src = Path(cfg.src)
    slides = gather(src, cfg.tier, cfg.pixel_size, cfg.sections)
    write_slides(slides, Path(cfg.out), str(src))
    log.info("imported %d sections (tier %s) in %.1f s", len(slides), cfg.tier,
             time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
