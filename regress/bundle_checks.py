"""Checks of a model folder's arrays and LightGBM text models before anything uses them
(:mod:`regress.bundle`). A folder whose checksums were rewritten to match altered files
gets this far: every shape, value and tree is checked here, so that no file can make
numpy broadcast wrongly or LightGBM read out of bounds, loop or abort (LightGBM parses a
model's trees in a parallel region, where its own format errors end the process).
"""

from __future__ import annotations

import math
import re
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

#: arrays each kind needs (beyond the optional scaler_* and pca_* pairs)
REQUIRED_ARRAYS = {"constant": ("mean",), "ridge": ("coef", "intercept"), "lgbm": ()}
#: per internal node (num_leaves - 1 values) and per leaf (num_leaves values)
NODE_FIELDS = ("split_feature", "split_gain", "threshold", "decision_type", "left_child",
               "right_child", "internal_value", "internal_weight", "internal_count")
LEAF_FIELDS = ("leaf_value", "leaf_weight", "leaf_count")
INT_FIELDS = {"split_feature", "decision_type", "left_child", "right_child",
              "internal_count", "leaf_count"}


def array_problem(kind: str, arrays: Mapping[str, np.ndarray], n_types: int
                  ) -> tuple[str, int | None, int | None]:
    """(what is wrong or "", the features the estimator takes, the features its regressor
    sees after the scaler and PCA; None where the arrays do not say) of one estimator's
    arrays: those its kind needs, numeric and finite, scaler, PCA and coefficients of
    matching shapes, ``n_types`` outputs."""
    missing = [k for k in REQUIRED_ARRAYS[kind] if k not in arrays]
    if missing:
        return f"no arrays {missing}", None, None
    for name, a in arrays.items():
        if a.dtype.kind not in "fiu":
            return f"{name}: {a.dtype} values", None, None
        if not np.isfinite(a).all():
            return f"{name}: values that are not finite", None, None
    if kind == "constant":
        ok = arrays["mean"].shape == (n_types,)
        return ("" if ok else f"mean of shape {arrays['mean'].shape}"), None, None
    shapes = {k: a.shape for k, a in arrays.items()}
    d = k = None
    if "scaler_mean" in arrays or "scaler_scale" in arrays:
        mean, scale = shapes.get("scaler_mean"), shapes.get("scaler_scale")
        if mean is None or mean != scale or len(mean) != 1 or not np.all(arrays["scaler_scale"]):
            return f"scaler of shapes {mean}, {scale} (or a zero scale)", None, None
        d = k = mean[0]
    if "pca_components" in arrays or "pca_mean" in arrays:
        comp, mean = shapes.get("pca_components"), shapes.get("pca_mean")
        if comp is None or len(comp) != 2 or mean != (comp[1],) or d not in (None, comp[1]):
            return f"PCA of shapes {comp}, {mean} after {d} features", None, None
        d, k = comp[1], comp[0]
    if kind == "ridge":
        coef, intercept = shapes["coef"], shapes["intercept"]
        if len(coef) != 2 or coef[1] != n_types or k not in (None, coef[0]) or \
                intercept != (n_types,):
            return f"coef {coef}, intercept {intercept} for {k} features", None, None
        k = coef[0]
        d = k if d is None else d
    return "", d, k


def _numbers(text: str, field: str, count: int) -> list[float] | None:
    parts = text.split(" ")
    if len(parts) != count:
        return None
    try:
        values = [int(p) if field in INT_FIELDS else float(p) for p in parts]
    except ValueError:
        return None
    return values if all(math.isfinite(v) for v in values) else None


def _tree_problem(block: str, n_features: int) -> str:
    """What is wrong with one ``Tree=`` block, or ""."""
    fields = {}
    for line in block.splitlines()[1:]:
        key, sep, value = line.partition("=")
        if line and not sep:
            return f"line {line[:40]!r}"
        fields[key] = value
    try:
        n = int(fields["num_leaves"])
        flat = int(fields.get("num_cat", "x")) == 0 and int(fields.get("is_linear", "0")) == 0
        shrinkage = float(fields.get("shrinkage", "1"))
    except (KeyError, ValueError):
        return "num_leaves, num_cat, is_linear or shrinkage missing or not numbers"
    if not 1 <= n <= 1 << 17 or not flat or not math.isfinite(shrinkage):
        return f"{n} leaves, categorical or linear leaves, or shrinkage {shrinkage}"
    if n == 1:  # a single leaf: LightGBM writes (and reads) its value alone
        empty = all(fields.get(f, "") == "" for f in NODE_FIELDS)
        ok = empty and _numbers(fields.get("leaf_value", ""), "leaf_value", 1) is not None
        return "" if ok else "a single leaf without one finite value, or with splits"
    needed = {f: n for f in LEAF_FIELDS} | {f: n - 1 for f in NODE_FIELDS}
    values = {}
    for field, count in needed.items():
        values[field] = _numbers(fields.get(field, ""), field, count)
        if values[field] is None:
            return f"{field}: not {count} finite numbers"
    for i in range(n - 1):
        if not 0 <= values["split_feature"][i] < n_features or \
                values["decision_type"][i] not in (0, 2, 4, 6, 8, 10):
            return f"node {i}: feature {values['split_feature'][i]} of {n_features} or " \
                   f"decision type {values['decision_type'][i]}"
        for side in ("left_child", "right_child"):
            c = values[side][i]
            if not (i < c < n - 1 if c >= 0 else ~c < n):
                return f"node {i}: {side} {c} (children come after their node)"
    return ""


_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
#: the header lines hespot fit's LightGBM models have, and the form of their values
HEADER = {"version": r"v\d+", "num_class": r"1", "num_tree_per_iteration": r"1",
          "label_index": r"\d+", "max_feature_idx": r"\d+", "objective": r"regression",
          "feature_names": r"[A-Za-z0-9_]+( [A-Za-z0-9_]+)*",
          "feature_infos": rf"(none|\[{_NUMBER}:{_NUMBER}\])( (none|\[{_NUMBER}:{_NUMBER}\]))*",
          "tree_sizes": r"\d+( \d+)*"}


def _header(text: str) -> dict[str, str]:
    """The header's key -> value; ValueError for a line or value of another form."""
    lines = text.splitlines()
    if not lines or lines[0] != "tree":
        raise ValueError("no 'tree' first line")
    found = {}
    for line in lines[1:]:
        key, _, value = line.partition("=")
        if line and not (key in HEADER and re.fullmatch(HEADER[key], value)):
            raise ValueError(f"header line {line[:60]!r}")
        found[key] = value
    missing = [k for k in HEADER if k not in found]
    if missing:
        raise ValueError(f"no header lines {missing}")
    return found


def checked_tree_text(data: bytes, n_inputs: int | None) -> str:
    """The header and trees of a LightGBM text model (one output, numeric splits), checked,
    for ``lightgbm.Booster(model_str=...)``: what follows the trees (importances and
    training parameters, which prediction does not read) is left out.

    The header's lines must be of the forms hespot fit writes, its ``tree_sizes`` must
    delimit the ``Tree=`` blocks exactly, each tree must hold every array LightGBM reads
    with as many finite numbers as it has nodes or leaves, its splits must use features of
    the header's ``max_feature_idx`` (``n_inputs - 1`` when known) and its children must
    lie after their node (no loop, no index outside).

    Raises:
        ValueError: what is wrong, in a few words.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    start = text.find("\nTree=") + 1
    if not start:
        raise ValueError("no Tree= block")
    header = _header(text[:start])
    n_features = int(header["max_feature_idx"]) + 1
    if n_inputs not in (None, n_features) or len(header["feature_names"].split(" ")) != \
            n_features or len(header["feature_infos"].split(" ")) != n_features:
        raise ValueError(f"{n_features} features in the header (the arrays give {n_inputs})")
    raw, pos = text.encode(), len(text[:start].encode())
    for i, size in enumerate(int(v) for v in header["tree_sizes"].split(" ")):
        block = raw[pos:pos + size]
        if size <= 0 or pos + size > len(raw) or not re.match(rb"Tree=\d+\r?\n", block):
            raise ValueError(f"tree_sizes do not delimit Tree= blocks (tree {i})")
        why = _tree_problem(block.decode(), n_features)
        if why:
            raise ValueError(f"tree {i}: {why}")
        pos += size
    if not raw[pos:].startswith(b"end of trees"):
        raise ValueError("no 'end of trees' after the trees")
    return raw[:pos].decode() + "end of trees\n"


def read_npz(path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` without pickle, each member's declared size checked
    against its size in the archive before it is read.

    Raises:
        ValueError: an object array (it would need pickle), a member whose header claims
            more than it holds, or an archive that does not read.
    """
    from numpy.lib import format as npy

    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {}
            for name in npz.files:
                info = npz.zip.getinfo(f"{name}.npy")
                with npz.zip.open(info) as f:
                    version = npy.read_magic(f)
                    read = npy.read_array_header_1_0 if version == (1, 0) else \
                        npy.read_array_header_2_0
                    shape, _, dtype = read(f)
                if float(np.prod(shape, dtype=float)) * dtype.itemsize > info.file_size:
                    raise ValueError(f"{name}: shape {shape} of {dtype} in {info.file_size} "
                                     "bytes")
                arrays[name] = npz[name]
    except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise ValueError(f"unreadable archive ({type(exc).__name__}: {exc})") from exc
    return arrays
