"""Seeded corruptions of files, by format: bytes (any file), delimited text (CSV/TSV),
JSON, HDF5 (through h5py: objects, dtypes, shapes, attributes, declared sizes) and TIFF
(tags rewritten in place). Every mutator takes a ``random.Random`` and a path, changes
the file and returns one line saying what it did (recorded with the case, so a failure
reads as its recipe).

``hypothesis`` is not installed here: these are plain seeded mutators; the same
(seed, kind, case) always gives the same corruption of the same file.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable
from pathlib import Path

#: odd cell values and names: numbers at the edges, empty, unicode, control characters,
#: markup, formulas, paths, very long
ODD_STRINGS = (
    "", " ", "nan", "NaN", "inf", "-inf", "Infinity", "1e308", "-1e308", "1e400", "1e-320",
    "-1", "0", "-0", "+5", " 3 ", "3.0.1", "0x10", "1,5", "true", "None", "null", "9" * 400,
    "ñandú", "漢字", "😀", "\u202egnp.", "\ufeffx", "\x00", "a\x07b", "\x1b[31m", "\r", "a\nb",
    '"', "'", ",,", "\t", "=cmd|' /C calc'!A0", "@SUM(1)", "<img src=x onerror=alert(1)>",
    "../../etc/passwd", "/", ".", "..", "A" * 5000, "Z" * 100_000, "a/b", "C1",
)
#: odd JSON values of every type
ODD_JSON = (None, True, False, 0, -1, 1, 1.5, 2**31, 2**63, 10**30, -(10**30), 1e308,
            float("nan"), float("inf"), float("-inf"), "", "x", "../../x", "\x00", "漢字",
            "A" * 10_000, [], [1, 2], [[]], {}, {"a": 1}, [None], "1")
#: 32-bit patterns that break size fields
ODD_INTS = (0, 1, 2, 7, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1_000_000)


def pick(rng: random.Random, options):
    return options[rng.randrange(len(options))]


def safely(mutation: Callable[[random.Random, Path], str], rng: random.Random,
           path: Path) -> str:
    """``mutation(rng, path)``; where it cannot apply (a file an earlier corruption made
    unreadable to it), a corruption of the file's bytes instead."""
    try:
        return mutation(rng, path)
    except Exception as exc:  # noqa: BLE001 - any parser's error on a corrupted file
        return f"({mutation.__name__}: {type(exc).__name__}) {bytes_mutation(rng, path)}"


# ---- bytes --------------------------------------------------------------------------------
def _offset(rng: random.Random, size: int) -> int:
    """A random offset, one time in three inside the first 512 bytes (headers)."""
    if size <= 0:
        return 0
    return rng.randrange(min(size, 512)) if rng.random() < 1 / 3 else rng.randrange(size)


def bit_flips(rng: random.Random, path: Path) -> str:
    data = bytearray(path.read_bytes())
    n = rng.choice((1, 2, 4, 16))
    spots = [_offset(rng, len(data)) for _ in range(n)] if data else []
    for i in spots:
        data[i] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return f"{n} bit flips at {spots[:4]}"


def byte_sets(rng: random.Random, path: Path) -> str:
    data = bytearray(path.read_bytes())
    if not data:
        return "empty file left empty"
    i = _offset(rng, len(data))
    value = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    n = rng.choice((1, 4, 64))
    data[i:i + n] = bytes([value]) * len(data[i:i + n])
    path.write_bytes(bytes(data))
    return f"{n} bytes set to {value:#x} at {i}"


def int_patch(rng: random.Random, path: Path) -> str:
    data = bytearray(path.read_bytes())
    if len(data) < 8:
        return "too short to patch"
    i = _offset(rng, len(data) - 8)
    value, order = pick(rng, ODD_INTS), rng.choice("<>")
    data[i:i + 4] = struct.pack(order + "I", value)
    path.write_bytes(bytes(data))
    return f"uint32 {value:#x} ({order}) at {i}"


def truncate(rng: random.Random, path: Path) -> str:
    size = path.stat().st_size
    at = rng.choice((0, 1, _offset(rng, size), size // 2, max(0, size - 1)))
    with open(path, "r+b") as f:
        f.truncate(at)
    return f"truncated to {at} of {size} bytes"


def splice(rng: random.Random, path: Path) -> str:
    """A range deleted, duplicated or filled with random bytes."""
    data = path.read_bytes()
    i = _offset(rng, len(data))
    n = rng.choice((1, 8, 100, 4096))
    how = rng.choice(("delete", "duplicate", "insert"))
    if how == "delete":
        data = data[:i] + data[i + n:]
    elif how == "duplicate":
        data = data[:i + n] + data[i:i + n] + data[i + n:]
    else:
        data = data[:i] + rng.randbytes(n) + data[i:]
    path.write_bytes(data)
    return f"{n} bytes {how}d at {i}"


BYTES: tuple[Callable[[random.Random, Path], str], ...] = (
    bit_flips, byte_sets, int_patch, truncate, splice)


def bytes_mutation(rng: random.Random, path: Path) -> str:
    return f"{path.name}: {pick(rng, BYTES)(rng, path)}"


# ---- delimited text -------------------------------------------------------------------------
def _sep(path: Path, header: str) -> str:
    return "\t" if path.suffix in (".tsv", ".txt") or "\t" in header else ","


def _write_rows(path: Path, rows: list[list[str]], sep: str, encoding: str = "utf-8") -> None:
    text = "\n".join(sep.join(r) for r in rows) + "\n"
    path.write_bytes(text.encode(encoding, "surrogatepass"))


def csv_mutation(rng: random.Random, path: Path) -> str:
    """One structural or value change of a delimited table (or, one time in five, of
    its bytes)."""
    if rng.random() < 0.2:
        return bytes_mutation(rng, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    sep = _sep(path, lines[0] if lines else "")
    rows = [ln.split(sep) for ln in lines] or [[""]]
    r = rng.randrange(len(rows))
    c = rng.randrange(max(1, len(rows[r])))
    odd = pick(rng, ODD_STRINGS)
    how = rng.randrange(14)
    if how <= 3:
        rows[r][c:c + 1] = [odd]
        what = f"cell ({r}, {c}) = {odd[:20]!r}"
    elif how == 4:
        for row in rows[1:]:
            row[c:c + 1] = [odd]
        what = f"column {c} = {odd[:20]!r}"
    elif how == 5:
        for row in rows:
            del row[c:c + 1]
        what = f"column {c} removed"
    elif how == 6:
        dup = rows[0][rng.randrange(len(rows[0]))] if rows[0] else ""
        rows[0][c:c + 1] = [dup]
        what = f"header {c} renamed {dup!r} (a duplicate)"
    elif how == 7:
        rows = rows[:1] + [row for i, row in enumerate(rows[1:]) if rng.random() < 0.5]
        what = "random rows removed"
    elif how == 8:
        rows = rows[:1] if rng.random() < 0.5 else []
        what = "header only" if rows else "empty file"
    elif how == 9:
        rows[r] = rows[r] + [odd] if rng.random() < 0.5 else rows[r][:-1]
        what = f"row {r} ragged"
    elif how == 10:
        rows += [list(rows[-1]) for _ in range(rng.choice((1, 50, 3000)))]
        what = "last row repeated"
    elif how == 11:
        scale = pick(rng, ("1e6", "-1", "0", "1e300"))
        for row in rows[1:]:
            if c < len(row):
                try:
                    row[c] = repr(float(row[c]) * float(scale))
                except ValueError:
                    pass
        what = f"column {c} scaled by {scale}"
    elif how == 12:
        sep = pick(rng, (";", "|", " ", "\t" if sep == "," else ","))
        what = f"separator {sep!r}"
    else:
        _write_rows(path, rows, sep, pick(rng, ("utf-16", "latin-1", "utf-8-sig")))
        return f"{path.name}: re-encoded"
    try:
        _write_rows(path, rows, sep)
    except UnicodeEncodeError:
        _write_rows(path, rows, sep, "utf-8")
    return f"{path.name}: {what}"


# ---- JSON -----------------------------------------------------------------------------------
def _paths(doc: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:8]):
            out += _paths(v, (*prefix, i))
    return out


def _odd_for(rng: random.Random, value: object) -> object:
    """A value of the wrong type, or an edge value of the right one."""
    if isinstance(value, bool) or rng.random() < 0.5:
        return pick(rng, ODD_JSON)
    if isinstance(value, int | float):
        return pick(rng, (-value, 0, value * 1000, -1, float("nan"), float("inf"), 2**64,
                          value + 0.5, str(value)))
    if isinstance(value, str):
        return pick(rng, ODD_STRINGS)
    if isinstance(value, list):
        return pick(rng, ([], value * 2, value[:1], value[::-1], [value]))
    return pick(rng, ({}, [value], None))


def json_mutation(rng: random.Random, path: Path, paths_filter: Callable | None = None) -> str:
    """One value of a JSON file deleted, given a wrong type or an edge value (or, one time
    in six, the file's bytes changed)."""
    if rng.random() < 1 / 6:
        return bytes_mutation(rng, path)
    doc = json.loads(path.read_text())
    paths = [p for p in _paths(doc) if paths_filter is None or paths_filter(p)] or [()]
    where = pick(rng, paths)
    if not where:
        doc = _odd_for(rng, doc)
        what = "the whole document replaced"
    else:
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        key = where[-1]
        if rng.random() < 0.3:
            del parent[key]
            what = f"{'/'.join(map(str, where))} deleted"
        else:
            parent[key] = _odd_for(rng, parent[key])
            shown = repr(parent[key])[:30]
            what = f"{'/'.join(map(str, where))} = {shown}"
    path.write_text(json.dumps(doc, allow_nan=True))
    return f"{path.name}: {what}"



# ---- text lines (LightGBM models, markdown) -------------------------------------------------
def text_mutation(rng: random.Random, path: Path) -> str:
    """A line deleted, duplicated or one of its numbers or values made odd (or the bytes)."""
    if rng.random() < 0.25:
        return bytes_mutation(rng, path)
    lines = path.read_text(errors="surrogateescape").splitlines()
    if not lines:
        return f"{path.name}: empty, left so"
    i = rng.randrange(len(lines))
    how = rng.randrange(4)
    if how == 0:
        del lines[i]
        what = f"line {i} deleted"
    elif how == 1:
        lines.insert(i, lines[i])
        what = f"line {i} duplicated"
    else:
        key, sep, value = lines[i].partition("=")
        parts = value.split(" ") if sep else [key]
        j = rng.randrange(len(parts))
        parts[j] = pick(rng, ODD_STRINGS[:48])
        lines[i] = f"{key}={' '.join(parts)}" if sep else parts[0]
        what = f"line {i} value {j} = {parts[j][:20]!r}"
    path.write_text("\n".join(lines) + "\n", errors="surrogateescape")
    return f"{path.name}: {what}"


# ---- numpy archives -------------------------------------------------------------------------
def npz_mutation(rng: random.Random, path: Path) -> str:
    """One array of an ``.npz`` retyped, reshaped, emptied, given NaN/inf, made an object
    array, dropped, or an array added (or the archive's bytes changed)."""
    import numpy as np

    if rng.random() < 0.35:
        return bytes_mutation(rng, path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    key = pick(rng, sorted(arrays))
    a = arrays[key]
    changes = {
        "NaN": lambda: np.where(np.arange(a.size).reshape(a.shape) % 2 == 0, np.nan, a),
        "inf": lambda: np.full(a.shape, np.inf),
        "1e308": lambda: np.full(a.shape, 1e308),
        "empty": lambda: np.zeros((0, *a.shape[1:])),
        "transposed": lambda: a.T,
        "one more rank": lambda: a[None],
        "scalar": lambda: np.float64(1.0),
        "int8": lambda: a.astype(np.int8),
        "complex": lambda: a.astype(np.complex128),
        "strings": lambda: a.astype(str),
        "objects": lambda: np.array([1, None], dtype=object),
        "one more row": lambda: np.concatenate([a, a[:1]]) if a.ndim else a,
        "bool": lambda: a.astype(bool),
    }
    how = pick(rng, sorted([*changes, "dropped", "added"]))
    if how == "dropped":
        del arrays[key]
    elif how == "added":
        arrays["zz_" + key] = np.ones(3)
    else:
        arrays[key] = changes[how]()
    np.savez(path, **arrays)
    return f"{path.name}: {key} {how}"
