"""What the report's sections read, opened once (:class:`Inputs`), the exception a section
raises when its input does not exist (:class:`Absent`) and the record that lists a
section on the page (:class:`Section`)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.figure import Figure

from data.check import slide_tissue
from data.errors import DataError, Problem
from data.h5 import CanonicalH5
from data.spots import SpotTable
from data.wsi.tissue import TissueMask
from regress.report import plots
from regress.report.config import ReportConfig
from regress.results import rank_models

N_MAP_TYPES = 4


class Absent(Exception):
    """A section's input does not exist; the message says which and how to make it."""


class Inputs:
    """What the sections read, opened once: the HDF5 file, report.json, the store path,
    spot tables and thumbnails (cached), and the image folder the figures go to.

    Attributes:
        models: model ids whose predictions are mapped (``--models``, else the best
            non-constant model with out-of-fold predictions).
        types: cell types mapped (``--cell-types``, else the most abundant).
        written: the figures saved so far, in page order.
        img_dir: the folder figures are saved to (``build_report`` points it at the
            new report folder it builds beside the old one).

    Raises:
        DataError: ``--models`` or ``--cell-types`` names one that does not exist.
    """

    def __init__(self, cfg: ReportConfig, img_dir: Path):
        self.cfg, self.out, self.img_dir = cfg, Path(cfg.out), img_dir
        self.h5 = CanonicalH5(cfg.h5) if Path(cfg.h5).is_file() else None
        path = self.out / "report.json"
        self.report = json.loads(path.read_text()) if path.is_file() else None
        self.written: list[Path] = []
        self._tables: dict[str, SpotTable] = {}
        self._thumbs: dict[str, tuple[np.ndarray, plots.Extent]] = {}
        self._tissue: dict[str, TissueMask | None] = {}
        self.models = self._models()
        self.types = self._types()

    def close(self) -> None:
        """Close the HDF5 file."""
        if self.h5 is not None:
            self.h5.close()

    def need_h5(self) -> CanonicalH5:
        """The open HDF5 file, or Absent."""
        if self.h5 is None:
            raise Absent(f"no HDF5 file at {self.cfg.h5}: run `make import` (or pass --h5)")
        return self.h5

    def need_report(self) -> dict:
        """report.json with at least one model, or Absent."""
        if not self.report or not self.report.get("models"):
            raise Absent(f"no models in {self.out / 'report.json'}: run `make regress`")
        return self.report

    def need_models(self) -> list[str]:
        """The mapped models (at least one), or Absent."""
        self.need_report()
        if not self.models:
            raise Absent(f"no model with predictions under {self.out / 'predictions'}: run "
                         "`make regress`")
        return self.models

    def table(self, slide: str) -> SpotTable:
        """The spot table of ``slide`` (cached)."""
        if slide not in self._tables:
            self._tables[slide] = self.need_h5().spots(slide)
        return self._tables[slide]

    def thumb(self, slide: str) -> tuple[np.ndarray, plots.Extent]:
        """uint8 (h, w, 3) thumbnail of ``slide`` and its extent (cached)."""
        if slide not in self._thumbs:
            self._thumbs[slide] = plots.thumbnail(self.need_h5(), slide, self.cfg.thumb_px)
        return self._thumbs[slide]

    def tissue(self, slide: str) -> TissueMask | None:
        """The tissue of ``slide`` as ``hespot check`` sees it (cached; None: no tissue)."""
        if slide not in self._tissue:
            self._tissue[slide] = slide_tissue(self.need_h5(), slide)
        return self._tissue[slide]

    def figure(self, fig: Figure, name: str, alt: str, caption: str = "") -> str:
        """Save ``fig`` as img/<n>_<name>.png; the HTML that shows it."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        path = plots.save(fig, self.img_dir / f"{len(self.written):03d}_{slug}.png")
        self.written.append(path)
        cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
        return (f'<figure><img src="img/{path.name}" alt="{escape(alt)}">{cap}</figure>')

    def _models(self) -> list[str]:
        report = self.report or {}
        models = report.get("models", {})
        if self.cfg.models is not None:
            unknown = [m for m in self.cfg.models if m not in models]
            if unknown:
                raise DataError(Problem(str(self.out / "report.json"), "", "models",
                                        f"models of the report: {sorted(models)}",
                                        f"{unknown}", "pass --models with known model ids"))
            return list(self.cfg.models)
        best = [m for m in rank_models(report, include_constant=False)
                if (self.out / "predictions" / m / "oof.csv").is_file()]
        return best[:1]

    def _types(self) -> list[str]:
        known: list[str] = list(self.h5.cell_types) if self.h5 is not None else \
            list((self.report or {}).get("cell_types", []))
        if self.cfg.cell_types is not None:
            unknown = [t for t in self.cfg.cell_types if t not in known]
            if unknown:
                raise DataError(Problem(self.cfg.h5, "", "cell types", f"one of {known}",
                                        f"{unknown}", "pass --cell-types with known names"))
            return list(self.cfg.cell_types)
        if self.h5 is not None and self.h5.train_slides:
            Y = np.concatenate([self.table(s).Y for s in self.h5.train_slides])
            order = np.argsort(-Y.mean(axis=0), kind="stable")
            return [known[j] for j in order[:N_MAP_TYPES]]
        return known[:N_MAP_TYPES]


class Section(NamedTuple):
    """One section of the page: its group heading, anchor, title and builder (which
    returns the section's HTML or raises :class:`Absent`)."""

    group: str
    key: str
    title: str
    build: Callable[[Inputs], str]


#: every section, by anchor (filled by :func:`section`); the page orders them
SECTION_REGISTRY: dict[str, Section] = {}


def section(group: str, key: str, title: str
            ) -> Callable[[Callable[[Inputs], str]], Callable[[Inputs], str]]:
    """Register the decorated builder as the section ``key`` under ``group``."""
    def register(build: Callable[[Inputs], str]) -> Callable[[Inputs], str]:
        if key in SECTION_REGISTRY:
            raise ValueError(f"report section {key!r} registered twice")
        SECTION_REGISTRY[key] = Section(group, key, title, build)
        return build
    return register
