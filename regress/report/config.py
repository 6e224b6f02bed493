"""The settings of the report page (a leaf module: everything imports it from here)."""

from __future__ import annotations

from dataclasses import dataclass

from data.cli import DEFAULT_H5, DEFAULT_OUT, DEFAULT_STORE


@dataclass(frozen=True)
class ReportConfig:
    """Settings of the report (defaults < --config JSON < flags).

    ``models``: models whose predictions are mapped (default: the best per-spot model of
    report.json other than the constant). ``cell_types``: types mapped (default: the 4 of
    highest mean abundance over the train spots).
    """

    h5: str = DEFAULT_H5
    store: str = DEFAULT_STORE
    out: str = DEFAULT_OUT
    models: tuple[str, ...] | None = None
    cell_types: tuple[str, ...] | None = None
    thumb_px: int = 1024
    screenshot: bool = False
    quiet: bool = False
