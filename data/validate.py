"""Schema checks shared by the importers (before writing) and ``data.check`` (after).

Each function returns a list of :class:`~data.errors.Problem`; nothing here raises.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from data.errors import Problem

ROW_SUM_TOLERANCE = 0.05
#: the longest image side accepted (px): the largest whole-slide scans are ~200k px; a file
#: declaring more is refused before anything is allocated
MAX_SIDE = 500_000
#: the biggest stored chunk accepted (bytes, uncompressed): one chunk is inflated at a time,
#: so a dataset chunked as one huge block (or a compression bomb) is refused
MAX_CHUNK_BYTES = 256 * 2**20
#: the longest slide or cell-type name accepted
MAX_NAME = 200
#: the most a dataset's filters can shrink it (deflate's ceiling is 1032:1): a dataset
#: declaring more bytes than this times what the file stores for it is refused unread
MAX_COMPRESSION = 1100
#: datasets declaring at most this many bytes are read whatever the file stores
MIN_CHECKED_BYTES = 16 * 2**20


def check_name(file: str, slide: str, field: str, name: str, path_safe: bool = True
               ) -> list[Problem]:
    """A name written into outputs: no control characters, at most :data:`MAX_NAME`
    characters, no leading/trailing spaces; with ``path_safe`` (slide names, which become
    HDF5/Zarr groups and file names) also no path separators and no ``.``/``..``. Markup
    characters are allowed: every HTML writer escapes them, the CSV writers defuse
    formulas (:func:`data.atomic.csv_safe`). Cell types may hold ``/`` (her2st's do)."""
    bad = ""
    if not name or name.strip() != name:
        bad = "empty, or leading/trailing spaces"
    elif len(name) > MAX_NAME:
        bad = f"{len(name)} characters"
    elif path_safe and ("/" in name or "\\" in name or name in (".", "..")):
        bad = "a path separator or a dot name"
    elif any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        bad = "control characters"
    if not bad:
        return []
    rule = "no /, \\, '..', " if path_safe else ""
    return [Problem(file, slide, field, f"a plain name ({rule}no control characters, at "
                    f"most {MAX_NAME} characters)", f"{name[:60]!r}: {bad}",
                    "rename it in the source table or manifest and import again")]


def check_image(file: str, slide: str, shape: tuple[int, ...], dtype: np.dtype,
                chunks: tuple[int, ...] | None = None) -> list[Problem]:
    """An image must be uint8 (H, W, 3), at most :data:`MAX_SIDE` a side, stored in chunks of
    at most :data:`MAX_CHUNK_BYTES` (checked from the metadata: nothing is read)."""
    out = []
    if any(int(n) > MAX_SIDE for n in shape[:2]):
        return [Problem(file, slide, "image shape", f"at most {MAX_SIDE:,} px a side",
                        str(tuple(shape)), "the file declares an impossible size: it is "
                        "damaged or hostile; import the slide again")]
    if chunks is not None and int(np.prod(chunks)) * np.dtype(dtype).itemsize > MAX_CHUNK_BYTES:
        return [Problem(file, slide, "image chunks", f"chunks of at most "
                        f"{MAX_CHUNK_BYTES // 2**20} MB", str(tuple(chunks)),
                        "re-import the slide (hespot writes 512 x 512 chunks)")]
    if np.dtype(dtype) != np.uint8:
        out.append(Problem(file, slide, "image dtype", "uint8", str(dtype),
                           "re-import the slide from an 8-bit RGB image"))
    if len(shape) != 3 or shape[2] != 3:
        out.append(Problem(file, slide, "image shape", "(H, W, 3)", str(tuple(shape)),
                           "re-import the slide from an RGB image"))
    return out


def check_pixel_size(file: str, slide: str, value: object) -> list[Problem]:
    """An image's ``pixel_size_um`` attribute: absent, or one positive finite number."""
    if value is None:
        return []
    number = np.asarray(value)
    if number.shape == () and number.dtype.kind in "fiu" and np.isfinite(number) and \
            number > 0:
        return []
    return [Problem(file, slide, "pixel_size_um", "a positive number of µm per pixel",
                    repr(value)[:60], "import the slide again (or give --pixel-size)")]


def check_stored(file: str, slide: str, field: str, shape: tuple[int, ...], itemsize: int,
                 stored: int, chunks: tuple[int, ...] | None = None) -> list[Problem]:
    """A dataset's declared size must be backed by the file (at most
    :data:`MAX_COMPRESSION` times the bytes stored for it) and its chunks at most
    :data:`MAX_CHUNK_BYTES`, both from the metadata: a header claiming 10^9 rows or a
    10^6 x 10^6 image in a small file is refused before anything is allocated or read."""
    if chunks is not None and int(np.prod(chunks, dtype=float)) * itemsize > MAX_CHUNK_BYTES:
        return [Problem(file, slide, field, f"chunks of at most {MAX_CHUNK_BYTES // 2**20} "
                        "MB", f"chunks {tuple(chunks)} of {itemsize}-byte items",
                        "the file is damaged or hostile: write it again (hespot import-*)")]
    declared = float(np.prod(shape, dtype=float)) * itemsize
    if declared > MIN_CHECKED_BYTES and declared > MAX_COMPRESSION * max(stored, 1):
        return [Problem(file, slide, field, "a size backed by the data the file stores",
                        f"shape {tuple(shape)} ({declared / 2**20:,.0f} MB) with {stored:,} "
                        "bytes stored", "the file is truncated, damaged or hostile: import "
                        "the slide again")]
    return []


def check_coordinates(file: str, slide: str, x: np.ndarray, y: np.ndarray,
                      image_hw: tuple[int, int] | None) -> list[Problem]:
    """Spots exist, coordinates are finite numbers inside the image."""
    if len(x) == 0:
        return [Problem(file, slide, "spots", "at least one spot", "0 spots",
                        "drop the slide or add its spots")]
    out = []
    for name, v in (("x", x), ("y", y)):
        if not np.issubdtype(np.asarray(v).dtype, np.number):
            out.append(Problem(file, slide, name, "numeric pixel coordinates",
                               f"dtype {np.asarray(v).dtype}", "store x, y as numbers"))
            return out
        bad = ~np.isfinite(np.asarray(v, dtype=float))
        if bad.any():
            out.append(Problem(file, slide, name, "finite pixel coordinates",
                               f"{int(bad.sum())} NaN/inf values (first at row "
                               f"{int(np.flatnonzero(bad)[0])})", "remove or fix those spots"))
    if out or image_hw is None:
        return out
    h, w = image_hw
    outside = (x < 0) | (x >= w) | (y < 0) | (y >= h)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        out.append(Problem(file, slide, "x, y", f"spot centres inside the {w} x {h} image "
                           "(x = column, y = row)",
                           f"{int(outside.sum())} spots outside, first at row {i}: "
                           f"x={x[i]:.1f}, y={y[i]:.1f}",
                           "check that x is the column and y the row, in full-resolution "
                           "pixels (not a downscaled image's)"))
    n_dup = count_repeated_positions(x, y)
    if n_dup:
        out.append(Problem(file, slide, "x, y", "one spot per position",
                           f"{n_dup} spots share a position with another",
                           "check for duplicated rows", level="warning"))
    return out


def count_repeated_positions(x: np.ndarray, y: np.ndarray) -> int:
    """How many spots repeat the (x, y) of an earlier one: n minus the distinct positions.
    One sort of (x, y) as complex numbers (lexicographic), O(n log n) and 16 bytes a spot."""
    xy = np.empty(len(x), np.complex128)
    xy.real, xy.imag = x, y
    xy.sort()
    return int(np.count_nonzero(xy[1:] == xy[:-1]))


def check_spot_ids(file: str, slide: str, ids: np.ndarray) -> list[Problem]:
    """Spot ids must be unique within a slide (``ids``: str, or the stored UTF-8 bytes)."""
    values, counts = np.unique(np.asarray(ids), return_counts=True)
    dup = values[counts > 1]
    if len(dup):
        example = dup[0].decode("utf-8", "replace") if isinstance(dup[0], bytes) else dup[0]
        return [Problem(file, slide, "spot_id", "unique spot ids",
                        f"{len(dup)} duplicated, e.g. {str(example)!r}",
                        "remove the duplicated rows")]
    return []


def check_abundances(file: str, slide: str, Y: np.ndarray,
                     cell_types: Sequence[str]) -> list[Problem]:
    """Abundances: numeric, no NaN, not negative; rows summing to about 1 (warning)."""
    Y = np.asarray(Y)
    if not np.issubdtype(Y.dtype, np.number):
        return [Problem(file, slide, "cell types", "numeric abundances", f"dtype {Y.dtype}",
                        "remove text from the abundance columns")]
    return check_abundance_blocks(file, slide, [Y], cell_types)


def check_abundance_blocks(file: str, slide: str, blocks: Iterable[np.ndarray],
                           cell_types: Sequence[str]) -> list[Problem]:
    """:func:`check_abundances`' rules on a table read in consecutive row blocks (numeric
    (b, n_types) each, e.g. :meth:`data.h5.CanonicalH5.abundance_blocks`): memory of one
    block, rows named by their index in the whole table."""
    counts = {"NaN": 0, "negative": 0}
    first: dict[str, tuple[int, int]] = {}
    n_rows = n_off = 0
    lo, hi = np.inf, -np.inf
    for Y in blocks:
        for kind, mask in (("NaN", np.isnan(Y)), ("negative", Y < 0)):
            if mask.any():
                counts[kind] += int(mask.sum())
                if kind not in first:
                    rows, cols = np.nonzero(mask)
                    first[kind] = (n_rows + int(rows[0]), int(cols[0]))
        if Y.size and not first:
            sums = Y.sum(axis=1)
            n_off += int(np.count_nonzero(np.abs(sums - 1.0) > ROW_SUM_TOLERANCE))
            lo, hi = min(lo, float(sums.min())), max(hi, float(sums.max()))
        n_rows += len(Y)
    out = [Problem(file, slide, cell_types[first[kind][1]], "finite abundances >= 0",
                   f"{counts[kind]} {kind} values (first at row {first[kind][0]})",
                   "fix or drop those spots") for kind in counts if kind in first]
    if not out and n_off:
        out.append(Problem(file, slide, "cell types", "rows summing to about 1 (proportions)",
                           f"{n_off} of {n_rows} rows off by more than {ROW_SUM_TOLERANCE} "
                           f"(sums {lo:.3g}..{hi:.3g})",
                           "fine if the targets are not proportions; otherwise normalise",
                           level="warning"))
    return out


def check_same_cell_types(file: str, columns: Mapping[str, Sequence[str]]) -> list[Problem]:
    """Every train slide has the same cell-type columns in the same order."""
    if not columns:
        return []
    first_slide, first = next(iter(columns.items()))
    out = [p for c in first for p in check_name(file, first_slide, "cell type", c, False)]
    for slide, cols in columns.items():
        if list(cols) != list(first):
            missing = sorted(set(first) - set(cols))
            extra = sorted(set(cols) - set(first))
            found = f"missing {missing}, extra {extra}" if missing or extra else "another order"
            out.append(Problem(file, slide, "cell types",
                               f"the same columns as slide {first_slide} ({len(first)} types)",
                               found, "give every train slide the same cell-type columns"))
    return out
