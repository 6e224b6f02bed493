"""What every importer shares: checked table reading, validation, then one atomic write.

Images are copied into the canonical file (window by window where the format allows) or
held there by reference and read in place (:mod:`data.wsi.reference`): ``--images auto``
references images over :data:`REFERENCE_MIN_PIXELS` that have windowed reads and copies
the rest; no importer ever holds a whole whole-slide image.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd

from data import validate
from data.cli import check_name, config_parser, require_settings, resolve_config, setup_logging
from data.config import IMAGE_MODES, ImportSettings
from data.errors import DataError, Problem, raise_errors
from data.h5 import SlideRecord, write_h5
from data.images import is_file, load_image
from data.spots import make_spot_table
from data.wsi.base import SlideImage
from data.wsi.readers import READERS, open_image
from data.wsi.reference import ImageRef
from data.wsi.tissue import TissueMask

log = logging.getLogger("hespot")

C = TypeVar("C")

#: --images auto: images bigger than this (pixels, about 12k x 12k) are referenced
REFERENCE_MIN_PIXELS = 150_000_000


@dataclass
class PendingSlide:
    """A slide gathered by an importer, not yet validated or written.

    Attributes:
        x, y: float (n_spots,) pixel column and row in the full-resolution image.
        Y: float (n_spots, n_types) abundances, or None for a test slide.
        extra: more (n_spots,) fields, e.g. ``spot_id``.
        spots_path, abundance_path: the files the spot ids and abundances came from,
            named in problems about them (the importer's label when None).
    """

    name: str
    image_path: Path
    x: np.ndarray
    y: np.ndarray
    Y: np.ndarray | None = None
    cell_types: list[str] = field(default_factory=list)
    extra: dict[str, np.ndarray] = field(default_factory=dict)
    pixel_size_um: float | None = None
    source: str = ""
    spots_path: Path | None = None
    abundance_path: Path | None = None
    image_mode: str = "auto"
    reader: str = "auto"
    tissue: TissueMask | None = None

    @property
    def split(self) -> str:
        return "Train" if self.Y is not None else "Test"


def require_path(path: Path, what: str, fix: str, slide: str = "", is_dir: bool = False) -> Path:
    """Return ``path`` if it exists as a file (or folder), else raise a DataError."""
    if not is_file(path, folder=is_dir):
        raise DataError(Problem(str(path), slide, "", what, "no such " +
                                ("folder" if is_dir else "file"), fix))
    return path


def read_table(path: Path, slide: str = "", required: Sequence[str] = (),
               sep: str | None = None, **kwargs) -> pd.DataFrame:
    """Read a CSV/TSV (separator sniffed from the suffix) and check required columns."""
    require_path(path, "a table file", "check the path", slide)
    if sep is None:
        sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        df = pd.read_csv(path, sep=sep, **kwargs)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(Problem(str(path), slide, "", "a readable delimited table",
                                f"error: {exc}", "check the file's format")) from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(Problem(str(path), slide, ", ".join(missing),
                                f"columns {list(required)}",
                                f"columns {list(df.columns)[:12]}",
                                "rename the columns (names are case-sensitive)"))
    return df


def read_keyed_table(path: Path, slide: str, key: str, expected: str) -> pd.DataFrame:
    """A table whose first column keys its rows (spot keys, barcodes), the keys as
    stripped strings.

    Raises:
        DataError: the file is unreadable, or a key repeats (naming the first repeated
        one; ``key`` and ``expected`` name the field and what it should hold).
    """
    table = read_table(path, slide, index_col=0)
    table.index = table.index.astype(str).str.strip()
    if table.index.duplicated().any():
        dup = table.index[table.index.duplicated()][0]
        raise DataError(Problem(str(path), slide, key, expected, f"{dup!r} repeated",
                                "remove the duplicated rows"))
    return table


def check_unique_slides(table: pd.DataFrame, path: Path) -> None:
    """Refuse a manifest that names a slide twice (before any slide's files are read).

    Raises:
        DataError: naming the manifest, the first repeated slide and how many repeat.
    """
    names = table["slide"].astype(str)
    if names.duplicated().any():
        raise DataError(Problem(str(path), names[names.duplicated()].iloc[0], "slide",
                                "unique slide names", f"{int(names.duplicated().sum())} repeated",
                                "give each slide its own name"))


def numeric_columns(df: pd.DataFrame, columns: Sequence[str], path: Path,
                    slide: str) -> np.ndarray:
    """float64 (n_rows, len(columns)); a DataError names the first non-numeric cell."""
    out = np.empty((len(df), len(columns)))
    for j, c in enumerate(columns):
        values = pd.to_numeric(df[c], errors="coerce")
        bad = values.isna() & df[c].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(Problem(str(path), slide, c, "numeric values",
                                    f"{df[c].iloc[i]!r} at row {i}",
                                    "remove text from the column"))
        out[:, j] = values.to_numpy(dtype=float)
    return out


def importer_parser(prog: str, description: str | None, cls: type) -> argparse.ArgumentParser:
    """An importer's parser: ``--config``, ``--quiet``, ``--out`` and, for settings with
    images (:class:`ImportSettings`), ``--images`` and ``--reader``; the importer adds
    its own flags."""
    p = config_parser(prog, description, cls, common=("quiet",))
    p.add_argument("--out", help="canonical HDF5 file to write (required)")
    if issubclass(cls, ImportSettings):
        p.add_argument("--images", choices=IMAGE_MODES,
                       help="copy pixels into the HDF5, or reference the image files and "
                       "read them in place (auto: reference images over "
                       f"{REFERENCE_MIN_PIXELS / 1e6:.0f} Mpx that have windowed reads; "
                       f"default {cls.images})")
        p.add_argument("--reader", choices=("auto", *READERS),
                       help="image reader (auto: by suffix; OpenSlide for slides it "
                       "recognises)")
    return p


def importer_settings(cls: type[C], parser: argparse.ArgumentParser,
                      argv: Sequence[str] | None, **required: str) -> C:
    """An importer's settings (defaults < ``--config`` JSON < flags) with logging set up;
    ``out`` and the ``required`` settings (name -> what it is) given, and the image options
    of a ``--config`` file known, checked before any work."""
    cfg = resolve_config(cls, parser.parse_args(argv))
    setup_logging(cfg.quiet)
    require_settings(cfg, **required, out="the canonical HDF5 file to write")
    if isinstance(cfg, ImportSettings):
        check_name("--images mode", cfg.images, IMAGE_MODES)
        check_name("--reader", cfg.reader, ("auto", *READERS))
    return cfg


def import_slides(slides: Sequence[PendingSlide], cfg: ImportSettings, label: str) -> int:
    """Give ``slides`` the settings' image mode and reader, then validate and write them
    (:func:`write_slides`) to ``cfg.out``; returns the exit code, 0."""
    for s in slides:
        s.image_mode, s.reader = cfg.images, cfg.reader
    write_slides(slides, Path(cfg.out), label)
    return 0


def validate_slides(slides: Sequence[PendingSlide], label: str) -> list[Problem]:
    """Every check data.check runs, on the gathered slides, before anything is written.
    A file of test slides only is valid (stage 1 embeds it; a fitted model predicts it).
    """
    problems: list[Problem] = []
    if not slides:
        return [Problem(label, "", "slides", "at least one slide", "none",
                        "check the source folder or manifest")]
    names = [s.name for s in slides]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        problems.append(Problem(label, dups[0], "slide", "unique slide names",
                                f"duplicated: {dups}", "give each slide its own name"))
    for s in slides:
        problems += validate.check_name(label, s.name, "slide name", s.name)
        with open_image(s.image_path, s.name, s.reader) as image:
            h, w = image.shape
            size = validate.check_image(str(s.image_path), s.name, (h, w, 3), np.uint8)
            if size:
                problems += size
                continue
            if image.reader != "pil":  # a damaged slide is named now, not after the import
                image.verify()
        problems += validate.check_coordinates(str(s.image_path), s.name, s.x, s.y, (h, w))
        if "spot_id" in s.extra:
            problems += validate.check_spot_ids(str(s.spots_path or label), s.name,
                                                s.extra["spot_id"])
        if s.Y is not None:
            problems += validate.check_abundances(str(s.abundance_path or label), s.name, s.Y,
                                                  s.cell_types)
    problems += validate.check_same_cell_types(
        label, {s.name: s.cell_types for s in slides if s.Y is not None})
    return problems


def slide_image(s: PendingSlide, out: Path) -> tuple[object, float | None]:
    """What the writer stores for ``s`` (:class:`SlideRecord`'s ``image``) and its pixel
    size (the importer's value, else the file's)."""
    image = open_image(s.image_path, s.name, s.reader)
    pixel = s.pixel_size_um if s.pixel_size_um is not None else image.pixel_size_um
    mode = s.image_mode
    if mode == "auto":
        big = image.shape[0] * image.shape[1] > REFERENCE_MIN_PIXELS
        mode = "reference" if big and image.reader != "pil" else "copy"
    if mode == "reference":
        with image:
            ref = ImageRef.of(image, out)
        log.info("slide %s: image %s referenced (%s reader, read in place)", s.name,
                 s.image_path, ref.reader)
        return replace(ref, pixel_size_um=pixel), pixel
    if image.reader == "pil":  # no windowed reads: decoded whole, one image at a time
        image.close()
        return (lambda p=s.image_path, n=s.name: load_image(p, n)), pixel
    return image, pixel


def write_slides(slides: Sequence[PendingSlide], out: Path, label: str) -> Path:
    """Validate, then write the canonical file atomically (one image in memory at a time)."""
    raise_errors(validate_slides(slides, label))

    def records():
        for s in slides:
            table = make_spot_table(s.x, s.y, s.Y, s.cell_types, s.extra)
            log.info("writing %s slide %s: %d spots", s.split, s.name, len(s.x))
            image, pixel = slide_image(s, out)
            try:
                yield SlideRecord(s.name, s.split, table, image, pixel, s.source,
                                  tissue=s.tissue)
            finally:
                if isinstance(image, SlideImage):
                    image.close()

    path = write_h5(out, records())
    log.info("wrote %s", path)
    return path
