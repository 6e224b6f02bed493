"""Check a file against the canonical layout: ``python -m data.check FILE``.

Lists every problem (file, slide, field, what was expected, how to fix it) and, per
slide, the share of spots whose centre falls off the tissue (:mod:`data.wsi.tissue`). A
file of test slides only is valid (stage 1 embeds it; a fitted model predicts it).
Exit status: 0 when no errors (warnings allowed), 1 when any error, 2 when the file
cannot be opened at all.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import h5py
import numpy as np

from data import validate
from data.cli import Parser, entry_point, setup_logging
from data.errors import DataError, Problem, raise_errors
from data.h5 import H5_ERRORS, SPLITS, CanonicalH5
from data.spots import cell_type_fields, is_ascii
from data.wsi.tissue import NoTissue, TissueMask, detect_tissue

log = logging.getLogger("hespot")


@dataclass(frozen=True)
class CheckResult:
    """Problems found and, per slide, the fraction of spots on background."""

    problems: list[Problem]
    background: dict[str, float]

    @property
    def ok(self) -> bool:
        return not any(p.level == "error" for p in self.problems)


def slide_tissue(h5: CanonicalH5, slide: str) -> TissueMask | None:
    """The slide's tissue as every stage sees it: the mask recorded at import (the one a
    grid was laid on), else :func:`data.wsi.tissue.detect_tissue` on a thumbnail of its
    image; None when the slide shows no tissue at all (unreadable files raise)."""
    mask = h5.tissue(slide)
    if mask is None:
        try:
            mask = detect_tissue(h5.image(slide))
        except NoTissue:
            return None
    return mask


def off_tissue_share(tissue: TissueMask | None, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of the points (x column, y row; level-0 pixels, (n,) each) whose centre is
    not on ``tissue`` (all of them when there is no tissue; 0 for no points)."""
    if len(x) == 0:
        return 0.0
    if tissue is None:
        return 1.0
    return float(1.0 - tissue.on_tissue(x, y).mean())


def background_share(h5: CanonicalH5, slide: str) -> float:
    """Fraction of the slide's spots whose centre is not on its tissue
    (:func:`slide_tissue`; 1.0 when the slide shows no tissue at all)."""
    if h5.n_spots(slide) == 0:
        return 0.0
    x, y = h5.coords(slide)
    return off_tissue_share(slide_tissue(h5, slide), x, y)


def _check_slide(h5: CanonicalH5, split: str, slide: str) -> list[Problem]:
    f, file = h5.h5, str(h5.path)
    key = f"images/{split}/{slide}"
    if key not in f:
        return [Problem(file, slide, key, "an image for every spot table", "no image",
                        "add the image or remove the spot table")]
    problems = validate.check_name(file, slide, "slide name", slide)
    problems += validate.check_pixel_size(file, slide, f[key].attrs.get("pixel_size_um"))
    if h5.image_ref(slide) is not None:
        shape, dtype, chunks = h5.image_shape(slide), np.dtype(np.uint8), None
        problems += validate.check_image(file, slide, shape, dtype)
        if problems:
            return problems
        try:
            h5.image(slide).verify()  # the file is there, the same size, its tiles readable
        except DataError as exc:
            return exc.problems
    else:
        shape, dtype, chunks = f[key].shape, f[key].dtype, f[key].chunks
        image = validate.check_image(file, slide, shape, dtype, chunks) or \
            validate.check_stored(file, slide, "image", shape, dtype.itemsize,
                                  f[key].id.get_storage_size())
        problems += image
        if any(p.field == "image" for p in image):
            return problems
    table = f[f"spots/{split}/{slide}"]
    names = table.dtype.names if isinstance(table, h5py.Dataset) else None
    if names is None or not {"x", "y"} <= set(names):
        return problems + [Problem(file, slide, f"spots/{split}/{slide}",
                                   "a structured array with fields x, y",
                                   f"fields {list(names or [])}" if names is not None or
                                   isinstance(table, h5py.Dataset) else "a group",
                                   "store spots as a structured array with x and y")]
    stored = validate.check_stored(file, slide, f"spots/{split}/{slide}", table.shape,
                                   table.dtype.itemsize, table.id.get_storage_size(),
                                   table.chunks)
    if stored:
        return problems + stored
    # the table is read field by field and in row blocks: memory and time stay small for
    # tables of millions of spots; rows are named by their index in the whole table
    x, y = h5.coords(slide)
    hw = shape[:2] if len(shape) >= 2 else None
    problems += validate.check_coordinates(file, slide, x, y, hw)
    types = cell_type_fields(table[:0], h5.extra_fields(slide)) if split == "Train" else []
    if "spot_id" in names and "spot_id" not in types:
        ids = table.fields("spot_id")[()]
        if ids.dtype.kind == "S" and not is_ascii(ids):
            ids = np.char.decode(ids, "utf-8")  # UTF-8 checked; ASCII bytes compare as is
        problems += validate.check_spot_ids(file, slide, ids)
    if split == "Train":
        if not types:
            problems.append(Problem(file, slide, "cell types", "numeric cell-type fields",
                                    "none", "add the abundance columns to the train table"))
        else:
            problems += validate.check_abundance_blocks(
                file, slide, (Y for _, Y in h5.abundance_blocks(slide)), types)
    return problems


def check_file(path: str, with_background: bool = True,
               slides: Sequence[str] | None = None) -> CheckResult:
    """Every problem of a canonical file; DataError only when it cannot be opened.

    Args:
        with_background: also measure each slide's off-tissue share (reads a thumbnail).
        slides: check only these slides (default: all); cell-type columns are compared
            among the train slides checked.
    """
    try:
        return _check_file(path, with_background, slides)
    except H5_ERRORS as exc:  # groups or links that HDF5 cannot follow: a damaged file
        raise DataError(Problem(path, "", "", "a readable HDF5 file", f"error: {exc}",
                                "the file is truncated or corrupt: copy or import it "
                                "again")) from exc


def _check_file(path: str, with_background: bool, slides: Sequence[str] | None
                ) -> CheckResult:
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
        columns = {}
        for split in SPLITS:
            for slide in h5.slides(split):
                if slides is not None and slide not in slides:
                    continue
                try:
                    slide_problems = _check_slide(h5, split, slide)
                    problems += slide_problems
                    if split == "Train":
                        table = f[f"spots/Train/{slide}"]
                        if isinstance(table, h5py.Dataset) and table.dtype.names:
                            columns[slide] = cell_type_fields(table[:0], h5.extra_fields(slide))
                    if with_background and not any(p.level == "error"
                                                   for p in slide_problems):
                        background[slide] = background_share(h5, slide)
                except DataError as exc:  # a part read whole: its tissue mask
                    problems += exc.problems
                except H5_ERRORS as exc:
                    problems.append(Problem(path, slide, f"{split}/{slide}", "readable data",
                                            f"error: {exc}", "the file is corrupt or "
                                            "truncated: import it again"))
        problems += validate.check_same_cell_types(path, columns)
    return CheckResult(problems, background)


def preflight(path: str, slides: Sequence[str] | None = None) -> None:
    """The rules of ``hespot check`` (the background share aside) before a stage reads a
    canonical file: structure, images, spot tables (finite coordinates inside the image,
    numeric non-negative finite abundances, the same cell types on every train slide).
    Cheap (no pixel is read but a referenced slide's coarsest level); warnings are logged.

    Raises:
        DataError: every error found, each naming the file, slide and field.
    """
    t0 = time.perf_counter()
    raise_errors(check_file(str(path), with_background=False, slides=slides).problems)
    log.debug("%s checked in %.2f s", path, time.perf_counter() - t0)


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    p = Parser(prog="python -m data.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="canonical HDF5 file (or the challenge's file)")
    args = p.parse_args(argv)
    setup_logging(quiet=True)
    try:
        result = check_file(args.file)
    except H5_ERRORS as exc:
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


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["check_file", "preflight", "background_share", "slide_tissue", "off_tissue_share",
           "CheckResult", "main"]
