"""``<slide>.geojson``: the spots of one slide as QuPath detections (File > Import objects).

QuPath's own GeoJSON (``qupath.lib.io.PathObjectTypeAdapters``, v0.4+; its Python library
``qubalab`` reads and writes the same): a ``FeatureCollection`` whose features each have a
UUID ``id``, a ``Polygon`` geometry in level-0 pixels (x = column, y = row, origin at the
top left; the ring closed) and ``properties`` with ``objectType`` ``"detection"``, a
``name`` (the spot id), a ``classification`` ``{"name", "color": [r, g, b]}`` (the most
abundant cell type) and ``measurements`` ``{name: number}``: every cell type's abundance
(``"<type>"``) and, when given, its interval (``"<type> lower"``, ``"<type> upper"``).
Values that are not finite are left out (JSON has no NaN; QuPath reads a missing
measurement as NaN).

The file is written feature by feature in blocks of spots through :mod:`data.atomic`
(nothing half-written), so a whole-slide grid of 100k+ spots never sits in memory as
JSON objects.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from data.atomic import atomic_path

#: spots formatted per block written
BLOCK = 4096
#: vertices of a spot's circle
N_VERTICES = 32
#: a vertex's coordinate (level-0 pixels), and a measurement (the 7 significant digits
#: of the float32 that QuPath keeps)
COORD = "%.2f"
VALUE = "%.7g"
#: the namespace of the features' ids: uuid5(NAMESPACE, "<slide>/<spot id>"), so the same
#: spot gets the same id in every run
NAMESPACE = uuid.UUID("6f1c9a52-3d0e-5b8a-9c41-2a7d5e0b8f13")


def circle_ring(size_px: float, n_vertices: int) -> np.ndarray:
    """float64 (n_vertices + 1, 2): a circle of diameter ``size_px`` around (0, 0), closed
    (the last vertex repeats the first), counter-clockwise on screen."""
    angle = -2 * np.pi * np.arange(n_vertices + 1) / n_vertices
    ring = np.stack([np.cos(angle), np.sin(angle)], axis=1) * (size_px / 2)
    ring[-1] = ring[0]
    return ring


def square_ring(size_px: float, n_vertices: int) -> np.ndarray:
    """float64 (5, 2): the grid cell, a square of side ``size_px`` around (0, 0), closed."""
    h = size_px / 2
    return np.array([[-h, -h], [-h, h], [h, h], [h, -h], [-h, -h]], float)


#: outline name -> (size_px, n_vertices) -> closed ring around (0, 0)
OUTLINES: dict[str, Callable[[float, int], np.ndarray]] = {
    "circle": circle_ring,
    "square": square_ring,
}


def type_colours(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct 8-bit RGB colours, one per cell type (tab20, tab20b, tab20c, then
    evenly spaced hues)."""
    from matplotlib import colormaps

    table = [c for name in ("tab20", "tab20b", "tab20c") for c in colormaps[name].colors]
    if n > len(table):
        table += list(colormaps["hsv"](np.linspace(0, 1, n - len(table), endpoint=False)))
    return [tuple(int(round(255 * v)) for v in c[:3]) for c in table[:n]]


def _check(xy: np.ndarray, size_px: float, values: np.ndarray, types: Sequence[str],
           bounds: Sequence[np.ndarray | None], spot_ids: Sequence[str] | None,
           outline: str) -> None:
    n = len(xy)
    if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
        raise ValueError(f"spot xy must be finite (n_spots, 2), got shape {xy.shape}")
    if values.shape != (n, len(types)):
        raise ValueError(f"values of shape {values.shape}; expected (n_spots, n_types) = "
                         f"({n}, {len(types)})")
    for b in bounds:
        if b is not None and b.shape != values.shape:
            raise ValueError(f"interval bounds of shape {b.shape}; expected {values.shape}")
    if not (math.isfinite(size_px) and size_px > 0):
        raise ValueError(f"spot size must be a positive number of pixels, got {size_px}")
    if spot_ids is not None and len(spot_ids) != n:
        raise ValueError(f"{len(spot_ids)} spot ids for {n} spots")
    if outline not in OUTLINES:
        raise ValueError(f"outline must be one of {sorted(OUTLINES)}, got {outline!r}")
    if len(set(types)) != len(types):
        raise ValueError(f"cell types must be distinct: {list(types)}")


def _measurement_names(types: Sequence[str], lower: bool, upper: bool) -> list[str]:
    """Names in the order the columns of :func:`_columns` hold them."""
    names = list(types)
    names += [f"{t} lower" for t in types] if lower else []
    names += [f"{t} upper" for t in types] if upper else []
    return names


def _features(xy: np.ndarray, ring: np.ndarray, columns: np.ndarray, names: list[str],
              values: np.ndarray, classes: list[str], slide: str,
              spot_ids: Sequence[str]) -> Iterator[str]:
    """The features of a block of spots as JSON text, one string each.

    A row's numbers are formatted by one %-format of the whole row (templates built once),
    ten times faster than one call per number; rows with a value that is not finite take
    the slow path that leaves it out."""
    keys = [json.dumps(m) + ":" for m in names]
    row_template = ",".join(k + VALUE for k in keys)
    ring_template = ",".join([f"[{COORD},{COORD}]"] * len(ring))
    finite = np.isfinite(columns)
    whole = finite.all(axis=1)
    known = np.isfinite(values).any(axis=1)
    best = np.argmax(np.where(np.isfinite(values), values, -np.inf), axis=1)
    for i in range(len(xy)):
        coords = ring_template % tuple((ring + xy[i]).ravel().tolist())
        row = columns[i].tolist()
        if whole[i]:
            measurements = row_template % tuple(row)
        else:
            measurements = ",".join(k + VALUE % v for k, v, ok in zip(keys, row, finite[i],
                                                                      strict=True) if ok)
        fid = uuid.uuid5(NAMESPACE, f"{slide}/{spot_ids[i]}")
        cls = f',"classification":{classes[best[i]]}' if known[i] else ""
        yield (f'{{"type":"Feature","id":"{fid}","geometry":{{"type":"Polygon",'
               f'"coordinates":[[{coords}]]}},"properties":{{"objectType":"detection",'
               f'"name":{json.dumps(spot_ids[i])}{cls},"measurements":{{{measurements}}}}}}}')


def write_geojson(path: str | Path, xy: np.ndarray, size_px: float, values: np.ndarray,
                  types: Sequence[str], lower: np.ndarray | None = None,
                  upper: np.ndarray | None = None, *, outline: str = "circle",
                  spot_ids: Sequence[str] | None = None, slide: str = "",
                  n_vertices: int = N_VERTICES,
                  colours: Sequence[tuple[int, int, int]] | None = None) -> Path:
    """Write one slide's spots as a QuPath GeoJSON FeatureCollection, atomically.

    Args:
        path: the ``.geojson`` file written.
        xy: float (n_spots, 2) spot centres in level-0 pixels (x column, y row).
        size_px: the spot's diameter (``outline="circle"``) or the grid cell's side
            (``"square"``), in level-0 pixels.
        values: float (n_spots, n_types) abundances, one column per cell type.
        types: the n_types cell-type names (measurement and class names).
        lower, upper: float (n_spots, n_types) interval bounds, or None.
        outline: a key of :data:`OUTLINES`.
        spot_ids: (n_spots,) names of the spots (default: their row index).
        slide: the slide's name; with the spot id it makes each feature's UUID.
        n_vertices: vertices of a circle.
        colours: one 8-bit RGB colour per type (default :func:`type_colours`).

    Returns:
        ``path``.

    Raises:
        ValueError: shapes that do not match, a size that is not positive, an unknown
            outline, repeated type names.
    """
    xy = np.asarray(xy, float)
    values = np.asarray(values, float)
    bounds = [None if b is None else np.asarray(b, float) for b in (lower, upper)]
    _check(xy, size_px, values, types, bounds, spot_ids, outline)
    ring = OUTLINES[outline](float(size_px), max(3, int(n_vertices)))
    palette = list(colours) if colours is not None else type_colours(len(types))
    classes = [json.dumps({"name": t, "color": list(map(int, c))})
               for t, c in zip(types, palette, strict=True)]
    names = _measurement_names(types, bounds[0] is not None, bounds[1] is not None)
    columns = np.concatenate([values] + [b for b in bounds if b is not None], axis=1)
    ids = [str(s) for s in spot_ids] if spot_ids is not None else \
        [str(i) for i in range(len(xy))]
    with atomic_path(path, suffix=".geojson") as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"type":"FeatureCollection","features":[')
        for start in range(0, len(xy), BLOCK):
            block = slice(start, start + BLOCK)
            text = ",\n".join(_features(xy[block], ring, columns[block], names,
                                        values[block], classes, slide, ids[block]))
            f.write(("\n" if start == 0 else ",\n") + text)
        f.write("\n]}\n")
    return Path(path)


__all__ = ["OUTLINES", "circle_ring", "square_ring", "type_colours", "write_geojson"]
