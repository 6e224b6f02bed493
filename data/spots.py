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


def is_ascii(col: np.ndarray) -> bool:
    """Whether a non-empty fixed-length bytes array holds plain ASCII only."""
    return bool(col.size) and int(np.ascontiguousarray(col).view(np.uint8).max()) < 128


def decode_utf8(col: np.ndarray) -> np.ndarray:
    """str array of a stored fixed-length UTF-8 bytes field (``np.char.decode``; plain ASCII,
    the usual spot ids, by a cast ten times faster with the same result)."""
    col = np.asarray(col)
    if is_ascii(col):
        return col.astype(f"U{col.dtype.itemsize}")
    return np.char.decode(col, "utf-8")


def encode_utf8(values: np.ndarray) -> np.ndarray:
    """Fixed-length UTF-8 bytes (at least ``S1``) of a str array, as stored in a spot table
    (``np.char.encode``; plain ASCII by a cast, the same bytes ten times faster)."""
    text = np.asarray(values).astype(str)
    if text.size and text.dtype.itemsize and \
            np.ascontiguousarray(text).view(np.uint32).max() < 128:
        return text.astype(f"S{max(1, text.dtype.itemsize // 4)}")
    encoded = np.char.encode(text, "utf-8")
    return encoded.astype(f"S{max(1, encoded.dtype.itemsize)}")


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
            values = encode_utf8(values)
        fields.append((name, values.dtype))
        columns[name] = values
    table = np.zeros(len(x), dtype=fields)
    table["x"], table["y"] = x, y
    for j, c in enumerate(cell_types):
        table[c] = Y[:, j]
    for name, values in columns.items():
        table[name] = values
    return table
