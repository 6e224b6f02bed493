"""Check a file against the canonical layout: ``python -m data.check FILE``.

Lists every problem (file, slide, field, what was expected, how to fix it) and, per
slide, the share of spots whose centre falls on background (bright, unstained glass).
Exit status: 0 when no errors (warnings allowed), 1 when any error, 2 when the file
cannot be opened at all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from data import validate
from data.cli import Parser, run_cli, setup_logging
from data.errors import DataError, Problem
from data.h5 import SPLITS, CanonicalH5
from data.patches import PatchCropper
from data.spots import cell_type_fields

BACKGROUND_BOX_UM = 30.0
BACKGROUND_BOX_PX = 16
BACKGROUND_GRAY = 215.0
BACKGROUND_SATURATION = 25.0


@dataclass(frozen=True)
class CheckResult:
    """Problems found and, per slide, the fraction of spots on background."""

    problems: list[Problem]
    background: dict[str, float]

    @property
    def ok(self) -> bool:
        return not any(p.level == "error" for p in self.problems)


def background_share(h5: CanonicalH5, slide: str) -> float:
    """Fraction of the slide's spots whose centre box is background (bright, unsaturated).

    The box is about 30 µm wide when the pixel size is known, else 16 px.
    """
    table = h5.spots(slide)
    if len(table) == 0:
        return 0.0
    px = h5.pixel_size_um(slide)
    size = max(4, int(round(BACKGROUND_BOX_UM / px))) if px else BACKGROUND_BOX_PX
    boxes = PatchCropper(h5, slide, size, pad_mode="constant", pad_value=255).crop(
        table.x, table.y).astype(np.float32)
    gray = boxes.mean(axis=(1, 2, 3))
    saturation = (boxes.max(axis=3) - boxes.min(axis=3)).mean(axis=(1, 2))
    return float(np.mean((gray > BACKGROUND_GRAY) & (saturation < BACKGROUND_SATURATION)))


def _check_slide(h5: CanonicalH5, split: str, slide: str) -> list[Problem]:
    f, file = h5.h5, str(h5.path)
    key = f"images/{split}/{slide}"
    if key not in f:
        return [Problem(file, slide, key, "an image for every spot table", "no image",
                        "add the image or remove the spot table")]
    img = f[key]
    problems = validate.check_image(file, slide, img.shape, img.dtype)
    table = f[f"spots/{split}/{slide}"]
    names = table.dtype.names
    if names is None or not {"x", "y"} <= set(names):
        return problems + [Problem(file, slide, f"spots/{split}/{slide}",
                                   "a structured array with fields x, y",
                                   f"fields {list(names or [])}",
                                   "store spots as a structured array with x and y")]
    spots = h5.spots(slide)
    hw = img.shape[:2] if len(img.shape) >= 2 else None
    problems += validate.check_coordinates(file, slide, spots.x, spots.y, hw)
    if "spot_id" in spots.extra:
        problems += validate.check_spot_ids(file, slide, spots.extra["spot_id"])
    if split == "Train":
        if not spots.cell_types:
            problems.append(Problem(file, slide, "cell types", "numeric cell-type fields",
                                    "none", "add the abundance columns to the train table"))
        else:
            problems += validate.check_abundances(file, slide, spots.Y, spots.cell_types)
    return problems


def check_file(path: str) -> CheckResult:
    """Every problem of a canonical file; DataError only when it cannot be opened."""
    problems: list[Problem] = []
    background: dict[str, float] = {}
    with CanonicalH5(path) as h5:
        f = h5.h5
        for group in ("images", "spots"):
            for split in f[group]:
                if split not in SPLITS:
                    problems.append(Problem(path, "", f"{group}/{split}", f"splits {SPLITS}",
                                            f"group {split!r}", "rename it Train or Test",
                                            level="warning"))
        for split in SPLITS:
            images = set(f["images"].get(split, {}).keys())
            for slide in sorted(images - set(h5.slides(split))):
                problems.append(Problem(path, slide, f"spots/{split}/{slide}",
                                        "a spot table for every image", "no spot table",
                                        "add the slide's spots or remove the image"))
        if not h5.train_slides:
            problems.append(Problem(path, "", "spots/Train", "at least one train slide",
                                    "none", "import train slides with abundances"))
        columns = {}
        for split in SPLITS:
            for slide in h5.slides(split):
                try:
                    slide_problems = _check_slide(h5, split, slide)
                    problems += slide_problems
                    if split == "Train":
                        table = f[f"spots/Train/{slide}"]
                        if table.dtype.names:
                            columns[slide] = cell_type_fields(table[:0], h5.extra_fields(slide))
                    if not any(p.level == "error" for p in slide_problems):
                        background[slide] = background_share(h5, slide)
                except (OSError, KeyError, ValueError) as exc:
                    problems.append(Problem(path, slide, f"{split}/{slide}", "readable data",
                                            f"error: {exc}", "the file is corrupt or "
                                            "truncated: import it again"))
        problems += validate.check_same_cell_types(path, columns)
    return CheckResult(problems, background)


def _main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m data.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="canonical HDF5 file (or the challenge's file)")
    args = p.parse_args(argv)
    setup_logging(quiet=True)
    try:
        result = check_file(args.file)
    except OSError as exc:
        raise DataError(Problem(args.file, "", "", "a readable HDF5 file", f"error: {exc}",
                                "the file is truncated or corrupt: copy or import it again")
                        ) from exc
    out = sys.stdout
    for prob in result.problems:
        out.write(f"{prob}\n")
    for slide, share in result.background.items():
        out.write(f"info: {args.file}, slide {slide}: {share:.1%} of spots on background\n")
    n_err = sum(p.level == "error" for p in result.problems)
    n_warn = len(result.problems) - n_err
    out.write(f"{args.file}: {n_err} errors, {n_warn} warnings\n")
    return 0 if result.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["check_file", "background_share", "CheckResult", "main"]
