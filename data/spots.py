"""The spot table contract: the structured array stored under ``spots/<split>/<slide>``
(fields x, y, cell types, extras) and :class:`SpotTable`, the reader's view of it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

COORDS = ("x", "y")


@dataclass(frozen=True)
class SpotTable:
    """The spots of one slide.

    Attributes:
        slide: slide name.
        split: "Train" or "Test".
        x: float64 (n_spots,) pixel column of each spot centre.
        y: float64 (n_spots,) pixel row of each spot centre.
        cell_types: names of the abundance columns (empty for a test slide).
        Y: float64 (n_spots, n_types) abundances, or None for a test slide.
        extra: other fields, name -> (n_spots,) array (strings decoded to ``str``).
    """

    slide: str
    split: str
    x: np.ndarray
    y: np.ndarray
    cell_types: tuple[str, ...] = ()
    Y: np.ndarray | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)

    @property
    def spot_ids(self) -> np.ndarray:
        """(n_spots,) str: ``spot_id`` when present, else the row index as a string."""
        if "spot_id" in self.extra:
            return np.asarray(self.extra["spot_id"], dtype=str)
        return np.arange(len(self)).astype(str)


def _is_string(dt: np.dtype) -> bool:
    return dt.kind in ("S", "U", "O")


def cell_type_fields(table: np.ndarray, extra_fields: Iterable[str] = ()) -> list[str]:
    """Names of the cell-type columns of a structured spot table, in stored order."""
    skip = set(COORDS) | set(extra_fields)
    names = table.dtype.names or ()
    return [n for n in names if n not in skip and not _is_string(table.dtype[n])]


def make_spot_table(
    x: np.ndarray,
    y: np.ndarray,
    Y: np.ndarray | None = None,
    cell_types: Iterable[str] = (),
    extra: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """Build the structured array stored under ``spots/<split>/<slide>``.

    Args:
        x, y: (n_spots,) pixel column and row of the spot centres.
        Y: (n_spots, n_types) abundances, or None.
        cell_types: n_types column names.
        extra: more (n_spots,) fields; str arrays are stored as fixed-length UTF-8 bytes.

    Returns:
        Structured ndarray (n_spots,) with fields x, y, cell types, extras.
    """
    cell_types = list(cell_types)
    extra = dict(extra or {})
    fields: list[tuple[str, np.dtype]] = [("x", np.float64), ("y", np.float64)]
    fields += [(c, np.float64) for c in cell_types]
    columns = {}
    for name, values in extra.items():
        values = np.asarray(values)
        if _is_string(values.dtype):
            encoded = np.char.encode(values.astype(str), "utf-8")
            values = encoded.astype(f"S{max(1, encoded.dtype.itemsize)}")
        fields.append((name, values.dtype))
        columns[name] = values
    table = np.zeros(len(x), dtype=fields)
    table["x"], table["y"] = x, y
    for j, c in enumerate(cell_types):
        table[c] = Y[:, j]
    for name, values in columns.items():
        table[name] = values
    return table
