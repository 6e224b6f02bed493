"""Settings of data's commands: one frozen dataclass per command (defaults < ``--config``
JSON < flags, :func:`data.cli.resolve_config`), as every package keeps its commands'
settings in its ``config.py`` (``embed/config.py``, ``regress/config.py``, ...).

A leaf module: the defaults the commands share are defined here. Paths are strings (as
JSON gives them); a setting without a default (``None`` below, e.g. ``out``) is required
and checked by :func:`data.cli.require_settings` before any work.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: the bundled her2st sample (``import-her2st``'s default ``--src``)
SAMPLE_DIR = Path(__file__).resolve().parent / "samples" / "her2st"
#: proportions tiers of her2st: subset (41 types), minor (22), major (8)
TIERS = ("subset", "minor", "major")
DEFAULT_PIXEL_SIZE_UM = 0.69
#: ``--images``: copy pixels into the HDF5, reference the files, or choose by size
IMAGE_MODES = ("auto", "reference", "copy")
#: import-wsi: a grid spot is kept when at least this share of its disc is tissue
MIN_TISSUE = 0.5
#: make-wsi: tile compressions
COMPRESSIONS = ("jpeg", "zlib", "none")


@dataclass(frozen=True)
class ImportHer2stConfig:
    """Settings of ``hespot import-her2st``."""

    src: str = str(SAMPLE_DIR)            # her2st folder
    tier: str = "subset"                  # one of TIERS
    pixel_size: float = DEFAULT_PIXEL_SIZE_UM
    sections: tuple[str, ...] | None = None   # None: every section
    out: str | None = None                # canonical HDF5 file to write (required)
    quiet: bool = False


@dataclass(frozen=True)
class ImportSettings:
    """What the importers of images and spot tables share (their own settings follow)."""

    out: str | None = None                # canonical HDF5 file to write (required)
    images: str = "auto"                  # one of IMAGE_MODES
    reader: str = "auto"                  # image reader (data.wsi.readers)
    quiet: bool = False


@dataclass(frozen=True)
class ImportVisiumConfig(ImportSettings):
    """Settings of ``hespot import-visium``: one group of ``outs``, ``image`` (and
    ``abundances``, ``slide``) per slide, in order, or a ``manifest``."""

    outs: tuple[str, ...] = ()            # Space Ranger outs/ folders
    image: tuple[str, ...] = ()           # full-resolution images
    abundances: tuple[str, ...] = ()      # CSVs keyed by barcode
    slide: tuple[str, ...] = ()           # slide names (default: the folder names)
    manifest: str | None = None           # CSV: slide, outs, image[, abundances]


@dataclass(frozen=True)
class ImportTableConfig(ImportSettings):
    """Settings of ``hespot import-table``."""

    manifest: str | None = None           # CSV: slide, image, spots, split (required)


@dataclass(frozen=True)
class ImportWsiConfig(ImportSettings):
    """Settings of ``hespot import-wsi``: one ``slide`` (and ``name``, ``spots``) each."""

    images: str = "reference"             # read in place unless told to copy
    slide: tuple[str, ...] = ()           # slide images (at least one)
    name: tuple[str, ...] = ()            # slide names (default: the files' stems)
    spots: tuple[str, ...] = ()           # spots CSVs; none: a grid over the tissue
    grid: str = "visium"                  # visium or square:<pitch µm>
    min_tissue: float = MIN_TISSUE
    mpp: float | None = None              # µm per pixel (overrides the file's)


@dataclass(frozen=True)
class MakeWsiConfig:
    """Settings of ``hespot make-wsi``."""

    image: str | None = None              # source image (required)
    repeat: str = "1x1"                   # tiles, rows x columns
    mpp: float | None = None              # µm per pixel to record
    tile: int = 256
    compression: str = "jpeg"             # one of COMPRESSIONS
    out: str | None = None                # required
    quiet: bool = False
