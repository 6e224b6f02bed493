"""Seeded corruptions of an HDF5 file through h5py: an object deleted, renamed, moved or
aliased; a dataset replaced by one of another dtype, shape or rank, or emptied; values
set to NaN/inf/huge; a spot table's fields retyped, renamed, dropped or added; a dataset
that declares 10^9 rows or a 10^6 x 10^6 image without the data behind it; attributes
removed or given odd types; links to nothing. One time in seven the file's bytes are
corrupted instead (:mod:`mutate`)."""

from __future__ import annotations

import random
from pathlib import Path

import h5py
import numpy as np

from tests.system.fuzz.mutate import ODD_STRINGS, bytes_mutation, pick

ODD_NUMBERS = (np.nan, np.inf, -np.inf, 1e308, -1e308, -1.0, 0.0, 2.0**53, 1e-310, -0.0)
ODD_NAMES = ("x\x07y", "Ω", " S_1", "S_1 ", "A" * 300, "=1+1", "<b>", "...", "a b", "-",
             "\u202e1", "C1", "x", "y", "spot_id", "Test_Set")
#: attributes the readers look at, added to random objects
KNOWN_ATTRS = ("pixel_size_um", "source", "extra_fields", "hespot_image_ref", "scale",
               "threshold", "otsu", "image_path", "image_relpath", "reader", "height",
               "width", "file_size", "file_mtime_ns", "sha256")
NEW_DTYPES = (np.float32, np.float16, np.int64, np.int8, np.uint8, np.bool_, np.complex64,
              "S8", "S1", "O", ("f8", (2,)))


def _odd_attr(rng: random.Random) -> object:
    return pick(rng, (
        "", pick(rng, ODD_STRINGS[:60]), np.nan, np.inf, -1.0, 0, 1e308, 2**62, True,
        np.array([1.0, 2.0]), np.array([], float), np.array([[1, 2], [3, 4]]),
        np.bytes_(b"\xff\xfe\x00x"), np.complex64(1 + 2j), ["a", "\x07", "漢字"],
        np.array([np.nan, 1.0]), np.int8(-3), "../../../etc/passwd", "tifffile", "openslide",
        "evil"))


def _objects(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visit(names.append)
    return names


def _replace(f: h5py.File, name: str, data: object, **kwargs) -> None:
    attrs = dict(f[name].attrs) if name in f else {}
    del f[name]
    dset = f.create_dataset(name, data=data, **kwargs)
    for k, v in attrs.items():
        dset.attrs[k] = v


def _cast(values: np.ndarray, dtype: object) -> np.ndarray:
    dt = np.dtype(dtype)
    try:
        if dt.kind in "SU":
            return values.astype(str).astype(dt)
        if dt.kind == "O":
            return np.array([str(v) for v in values.ravel()], dtype=h5py.string_dtype()
                            ).reshape(values.shape)
        if dt.shape:
            return np.repeat(values.astype(dt.base)[..., None], dt.shape[0], -1)
        return values.astype(dt)
    except (TypeError, ValueError):
        return np.zeros(values.shape, dt)


def _structured(rng: random.Random, table: np.ndarray) -> tuple[np.ndarray, str]:
    """A spot table with one field retyped, renamed, dropped, added or given odd values."""
    names = list(table.dtype.names)
    field = pick(rng, names)
    how = rng.randrange(5)
    if how == 4 or not len(table):
        out = table.copy()
        if len(out):
            rows = rng.sample(range(len(out)), k=max(1, len(out) // rng.choice((1, 3, 50))))
            if out.dtype[field].kind == "S":
                value = pick(rng, (b"", b"\xff\xfe", b"dup", "漢".encode()))
            else:
                value = pick(rng, ODD_NUMBERS)
            out[field][rows] = value
            return out, f"field {field}: {len(rows)} rows = {value!r}"
        return out, "empty table left"
    fields = [(n, table.dtype[n]) for n in names]
    source = {n: n for n in names}
    if how == 0:
        new = pick(rng, NEW_DTYPES)
        fields = [(n, (h5py.string_dtype() if new == "O" else np.dtype(new)) if n == field
                   else t) for n, t in fields]
        what = f"field {field} retyped {new}"
    elif how == 1:
        new_name = pick(rng, ODD_NAMES)
        new_name += "_" if new_name in names else ""
        fields = [(new_name if n == field else n, t) for n, t in fields]
        source = {(new_name if n == field else n): n for n in names}
        what = f"field {field} renamed {new_name!r}"
    elif how == 2:
        fields = [(n, t) for n, t in fields if n != field] or fields
        what = f"field {field} dropped"
    else:
        extra = pick(rng, ODD_NAMES) + "_new"
        fields.append((extra, pick(rng, (np.float64, np.int32, "S4", ("f4", (3,))))))
        what = f"field {extra!r} added"
    out = np.zeros(table.shape, fields)
    for n, t in fields:
        if n in source:
            out[n] = _cast(table[source[n]], t)
    return out, what


def _image_like(rng: random.Random, shape: tuple[int, ...]) -> tuple[np.ndarray, str]:
    h, w = (shape + (1, 1))[:2]
    options = {
        "rank 2": lambda: np.zeros((h, w), np.uint8),
        "4 channels": lambda: np.zeros((h, w, 4), np.uint8),
        "rank 4": lambda: np.zeros((h, w, 3, 1), np.uint8),
        "transposed": lambda: np.zeros((w, h, 3), np.uint8),
        "1 x 1": lambda: np.zeros((1, 1, 3), np.uint8),
        "empty": lambda: np.zeros((0, 0, 3), np.uint8),
        "scalar": lambda: np.uint8(7),
        "float": lambda: np.full((h, w, 3), np.nan, np.float32),
        "noise": lambda: np.random.default_rng(rng.randrange(99)).integers(
            0, 256, (h, w, 3), dtype=np.uint8),
        "black": lambda: np.zeros((h, w, 3), np.uint8),
    }
    key = pick(rng, sorted(options))
    return options[key](), key


def _declare_huge(rng: random.Random, f: h5py.File, name: str, dset: h5py.Dataset) -> str:
    """Replace ``name`` by a chunked dataset declaring far more than the file holds."""
    attrs = dict(dset.attrs)
    dtype = dset.dtype
    del f[name]
    if dtype.names:
        rows = pick(rng, (10**9, 2**40, 10**7))
        new = f.create_dataset(name, shape=(rows,), dtype=dtype, chunks=(pick(rng, (1, 65536)),),
                               compression="gzip")
        what = f"{rows} rows declared, none stored"
    else:
        side = pick(rng, (10**6, 400_000, 100_000))
        chunk = pick(rng, ((512, 512, 3), (1, 1, 3), (16, 16, 3)))
        new = f.create_dataset(name, shape=(side, side, 3), dtype=np.uint8, chunks=chunk,
                               compression="gzip")
        what = f"{side} x {side} px declared, chunks {chunk}, none stored"
    for k, v in attrs.items():
        new.attrs[k] = v
    return what


def _dataset_op(rng: random.Random, f: h5py.File, name: str) -> str:
    dset = f[name]
    how = rng.randrange(5)
    if how == 0:
        return _declare_huge(rng, f, name, dset)
    if dset.dtype.names:
        table, what = _structured(rng, dset[()])
        if how == 1:
            table, what = table[:0], "0 rows"
        _replace(f, name, table)
        return what
    values = dset[()]
    if how <= 2 and np.ndim(values) == 3:
        data, what = _image_like(rng, values.shape)
        kw = {"chunks": True, "compression": "gzip"} if np.ndim(data) and data.size else {}
        _replace(f, name, data, **kw)
        return what
    new = pick(rng, NEW_DTYPES)
    _replace(f, name, _cast(np.asarray(values), new) if new != "O" else
             _cast(np.asarray(values).ravel()[:5], "O"))
    return f"retyped {new}"


def _attr_op(rng: random.Random, f: h5py.File, name: str) -> str:
    attrs = f[name].attrs
    keys = list(attrs)
    if keys and rng.random() < 0.4:
        key = pick(rng, keys)
        del attrs[key]
        return f"attribute {key} removed"
    key = pick(rng, keys) if keys and rng.random() < 0.6 else pick(rng, KNOWN_ATTRS)
    value = _odd_attr(rng)
    attrs[key] = value
    return f"attribute {key} = {str(value)[:40]!r}"


def _link_op(rng: random.Random, f: h5py.File, name: str) -> str:
    how = rng.randrange(6)
    parent, _, leaf = name.rpartition("/")
    if how == 0:
        del f[name]
        return "deleted"
    if how == 1:
        new = f"{parent}/{pick(rng, ODD_NAMES)}" if parent else pick(rng, ODD_NAMES)
        if new in f:
            return "rename target exists: unchanged"
        f.move(name, new)
        return f"renamed {new!r}"
    if how == 2:
        other = name.replace("Train", "Test") if "Train" in name else name.replace("Test",
                                                                                   "Train")
        if other == name or other in f:
            del f[name]
            f[name] = h5py.SoftLink("/nowhere/at/all")
            return "soft link to nothing"
        f.move(name, other)
        return f"moved to {other}"
    if how == 3:
        del f[name]
        f[name] = h5py.ExternalLink("missing.h5", "/x") if rng.random() < 0.5 else \
            h5py.SoftLink("/" + name)
        return "external link to a missing file, or a link to itself"
    del f[name]
    if how == 4:
        f.create_group(name)
        return "replaced by an empty group"
    f[name] = np.arange(3.0)
    return "replaced by a small dataset"


def h5_mutation(rng: random.Random, path: Path) -> str:
    """One corruption of an HDF5 file (structural, or one time in seven its bytes)."""
    if rng.random() < 1 / 7:
        return bytes_mutation(rng, path)
    with h5py.File(path, "r+") as f:
        names = _objects(f)
        datasets = [n for n in names if isinstance(f.get(n), h5py.Dataset)]
        how = rng.randrange(10)
        if how <= 4 and datasets:
            name = pick(rng, datasets)
            return f"{name}: {_dataset_op(rng, f, name)}"
        if how <= 7:
            name = pick(rng, [*names, "/"])
            return f"{name}: {_attr_op(rng, f, name)}"
        name = pick(rng, names)
        return f"{name}: {_link_op(rng, f, name)}"
