"""The model folder: a fitted stage-2 model as files (its format, writer and reader).

Layout::

    <folder>/model.json             format, cell types, training slides and fingerprints,
                                    the stage-1 spec of every feature part, the models with
                                    their recipe, target, weight and LOSO scores, versions,
                                    and the sha256 of every other file
    <folder>/<model id>.npz         arrays: scaler, PCA, coefficients (numpy, no pickle)
    <folder>/<model id>.tree<j>.txt LightGBM's own text model, one per cell type
    <folder>/abundance-<name>.npz   the abundance model; ood.npz the OOD reference
                                    (format 2: :mod:`regress.bundle_maps`)
    <folder>/README.md              the model card (:mod:`regress.card`)

Nothing here unpickles or executes code from the folder: arrays load with
``allow_pickle=False``, boosters from LightGBM's text format, the rest is JSON. A folder
of a newer format, or with a file missing or altered, is refused before anything is used.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.atomic import atomic_dir
from data.checksum import sha256_file
from data.errors import DataError, Problem
from regress.bundle_checks import REQUIRED_ARRAYS, array_problem, checked_tree_text, read_npz
from regress.bundle_meta import KINDS, MODEL_JSON, StructureError, check_structure

__all__ = ["BUNDLE_FORMAT", "KINDS", "Bundle", "SavedEstimator", "check_writable",
           "export_estimator", "load_bundle", "read_meta", "write_bundle"]

BUNDLE_FORMAT = 2  # 2: abundance model, OOD reference, model card


def export_estimator(est: Any, kind: str) -> tuple[dict[str, np.ndarray], list[str]]:
    """The arrays and LightGBM text models that reproduce ``est.predict``.

    Args:
        est: a fitted ``regress.models`` estimator of ``kind``.

    Returns:
        (name -> array, [one LightGBM text model per output column] for lgbm, else []).
    """
    if kind not in KINDS:
        raise DataError(Problem("model", "", "kind", f"one of {KINDS}", repr(kind),
                                "only stage-2 regressors can be saved as a model folder"))
    if kind == "constant":
        return {"mean": np.asarray(est.mean_, float)}, []
    arrays: dict[str, np.ndarray] = {}
    if est.scaler_ is not None:
        arrays["scaler_mean"], arrays["scaler_scale"] = est.scaler_.mean_, est.scaler_.scale_
    if est.pca_ is not None:
        arrays["pca_mean"], arrays["pca_components"] = est.pca_.mean_, est.pca_.components_
    if kind == "ridge":
        arrays["coef"], arrays["intercept"] = est.coef_, np.asarray(est.intercept_, float)
        return arrays, []
    trees = [m.booster_.model_to_string(num_iteration=m.best_iteration_ or None)
             for m in est.estimators_]
    return arrays, trees


@dataclass
class SavedEstimator:
    """A stage-2 estimator rebuilt from its files; ``predict`` follows the fitted
    estimator's arithmetic (scaler and PCA as scikit-learn computes them)."""

    kind: str
    arrays: Mapping[str, np.ndarray]
    boosters: Sequence[Any] = ()
    n_inputs: int | None = None  # features it takes (None: any, the constant)

    def _prep(self, X: np.ndarray) -> np.ndarray:
        Z = np.array(X, dtype=X.dtype if X.dtype in (np.float32, np.float64) else float)
        if "scaler_mean" in self.arrays:  # as StandardScaler: in X's dtype
            Z -= self.arrays["scaler_mean"].astype(Z.dtype)
            Z /= self.arrays["scaler_scale"].astype(Z.dtype)
        if "pca_components" in self.arrays:
            C = self.arrays["pca_components"]
            Z = Z @ C.T
            Z -= np.reshape(self.arrays["pca_mean"], (1, -1)) @ C.T
        return Z

    def predict(self, X: np.ndarray) -> np.ndarray:
        """float (n_spots, n_types) predictions on the estimator's target scale for
        features X (n_spots, n_features)."""
        if self.kind == "constant":
            return np.tile(self.arrays["mean"], (len(X), 1))
        Z = self._prep(X)
        if self.kind == "ridge":
            return Z @ self.arrays["coef"] + self.arrays["intercept"]
        return np.stack([b.predict(Z) for b in self.boosters], axis=1)


def check_writable(folder: str | Path) -> None:
    """A model folder may replace only nothing or another model folder.

    Raises:
        DataError: ``folder`` exists and is a file, or a folder without model.json.
    """
    folder = Path(folder)
    if folder.exists() and not (folder / MODEL_JSON).is_file():
        raise _refuse(folder, "", "a new folder or a model folder to replace",
                      "an existing file or folder that is not a model folder",
                      "pass another --model-dir (it would be replaced whole)")


def write_bundle(folder: str | Path, meta: dict[str, Any],
                 estimators: Mapping[str, tuple[dict[str, np.ndarray], list[str]]],
                 texts: Mapping[str, str] | None = None) -> Path:
    """Write a model folder atomically (a temporary folder beside it, then renamed over it).

    Args:
        meta: model.json's content without ``format`` and ``files`` (added here).
        estimators: model id -> (arrays, LightGBM text models) of :func:`export_estimator`.
        texts: file name -> text (the model card), checksummed like the arrays.
    """
    folder = Path(folder)
    check_writable(folder)
    with atomic_dir(folder) as tmp:
        tmp.mkdir()
        files = {}
        for model_id, (arrays, trees) in estimators.items():
            name = f"{model_id}.npz"
            np.savez(tmp / name, **arrays)
            files[name] = sha256_file(tmp / name)
            for j, text in enumerate(trees):
                name = f"{model_id}.tree{j}.txt"
                (tmp / name).write_text(text)
                files[name] = sha256_file(tmp / name)
        for name, text in (texts or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
            files[name] = sha256_file(tmp / name)
        doc = {"format": BUNDLE_FORMAT, **meta, "files": files}
        (tmp / MODEL_JSON).write_text(json.dumps(doc, indent=1))
    return folder


@dataclass
class Bundle:
    """A loaded model folder: ``meta`` is model.json; ``estimators`` maps model id to its
    :class:`SavedEstimator`."""

    folder: Path
    meta: dict[str, Any]
    estimators: dict[str, SavedEstimator]

    @property
    def cell_types(self) -> list[str]:
        return list(self.meta["cell_types"])


def _refuse(folder: Path, field: str, expected: str, found: str, fix: str) -> DataError:
    return DataError(Problem(str(folder), "", field, expected, found, fix))


def check_arrays(folder: Path, model_id: str, kind: str, arrays: Mapping[str, np.ndarray],
                 n_types: int) -> tuple[int | None, int | None]:
    """The arrays of one estimator (:func:`regress.bundle_checks.array_problem`); returns
    the features it takes and those its regressor sees (None where unknown)."""
    why, n_inputs, n_seen = array_problem(kind, arrays, n_types)
    if why:
        raise _refuse(folder, f"{model_id}.npz", f"arrays {list(REQUIRED_ARRAYS[kind])} "
                      f"(and scaler, PCA) of matching shapes, finite, with {n_types} outputs",
                      f"{why} (arrays {sorted(arrays)})", "fit the model again (hespot fit)")
    return n_inputs, n_seen


def load_boosters(folder: Path, model_id: str, n_types: int, n_inputs: int | None) -> list:
    """The LightGBM boosters of one lgbm estimator, each text model checked first."""
    import lightgbm as lgb

    boosters = []
    for j in range(n_types):
        name = f"{model_id}.tree{j}.txt"
        try:
            text = checked_tree_text((folder / name).read_bytes(), n_inputs)
            boosters.append(lgb.Booster(model_str=text))
        except (lgb.basic.LightGBMError, ValueError) as exc:
            raise _refuse(folder, name, "a LightGBM text model as hespot fit writes it",
                          str(exc)[:200], "fit the model again (hespot fit)") from exc
    return boosters


def read_meta(folder: str | Path) -> dict[str, Any]:
    """model.json, checked: format supported, every listed file present and unaltered.

    Raises:
        DataError: no folder or model.json, a newer format, a missing or altered file.
    """
    folder = Path(folder)
    path = folder / MODEL_JSON
    fix = "fit the model again (hespot fit) or restore the folder"
    if not path.is_file():
        raise _refuse(folder, MODEL_JSON, "a model folder written by hespot fit",
                      "no model.json", "run `make fit` (hespot fit) or pass --model")
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # not UTF-8 text, not JSON
        raise _refuse(folder, MODEL_JSON, "JSON", f"unreadable ({exc})", fix) from exc
    found = meta.get("format") if isinstance(meta, dict) else None
    if not isinstance(found, int) or not 1 <= found <= BUNDLE_FORMAT:
        raise _refuse(folder, "format", f"model folder format 1..{BUNDLE_FORMAT}",
                      repr(found), "upgrade hespot, or fit the model with this version")
    try:
        check_structure(meta)
    except StructureError as exc:
        raise _refuse(folder, f"{MODEL_JSON}: {exc.field}", exc.expected, exc.found,
                      "fit the model again (hespot fit); model.json was edited or "
                      "damaged") from exc
    for name, digest in meta["files"].items():
        if not (folder / name).is_file():
            raise _refuse(folder, name, "a file listed in model.json", "missing", fix)
        if sha256_file(folder / name) != digest:
            raise _refuse(folder, name, f"sha256 {digest[:16]}...", "another content "
                          "(the file was altered)", fix)
    return meta


def load_bundle(folder: str | Path) -> Bundle:
    """Read and check a model folder (:func:`read_meta`), then its arrays and boosters."""
    folder = Path(folder)
    meta = read_meta(folder)
    estimators = {}
    for entry in [*meta["models"], *meta.get("layers", [])]:
        kind, model_id = entry["kind"], entry["id"]
        if model_id in estimators:
            continue
        try:
            arrays = read_npz(folder / f"{model_id}.npz")
        except ValueError as exc:  # an object array would need pickle: never loaded
            raise _refuse(folder, f"{model_id}.npz", "numeric arrays (no pickle)",
                          f"refused: {exc}", "fit the model again with hespot fit") from exc
        n_types = len(meta["cell_types"])
        n_inputs, n_seen = check_arrays(folder, model_id, kind, arrays, n_types)
        boosters = load_boosters(folder, model_id, n_types, n_seen) if kind == "lgbm" \
            else []
        estimators[model_id] = SavedEstimator(kind, arrays, boosters, n_inputs)
    return Bundle(folder, meta, estimators)
