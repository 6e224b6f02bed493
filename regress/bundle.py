"""The model folder: a fitted stage-2 model as files (its format, writer and reader).

Layout::

    <folder>/model.json             format, cell types, training slides and fingerprints,
                                    the stage-1 spec of every feature part, the models with
                                    their recipe, target, weight and LOSO scores, versions,
                                    and the sha256 of every other file
    <folder>/<model id>.npz         arrays: scaler, PCA, coefficients (numpy, no pickle)
    <folder>/<model id>.tree<j>.txt LightGBM's own text model, one per cell type

Nothing here unpickles or executes code from the folder: arrays load with
``allow_pickle=False``, boosters from LightGBM's text format, the rest is JSON. A folder
of a newer format, or with a file missing or altered, is refused before anything is used.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data.atomic import atomic_dir
from data.errors import DataError, Problem

BUNDLE_FORMAT = 1
MODEL_JSON = "model.json"
KINDS = ("constant", "ridge", "lgbm")


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


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def write_bundle(folder: str | Path, meta: dict[str, Any],
                 estimators: Mapping[str, tuple[dict[str, np.ndarray], list[str]]]) -> Path:
    """Write a model folder atomically (a temporary folder beside it, then renamed over it).

    Args:
        meta: model.json's content without ``format`` and ``files`` (added here).
        estimators: model id -> (arrays, LightGBM text models) of :func:`export_estimator`.
    """
    folder = Path(folder)
    with atomic_dir(folder) as tmp:
        tmp.mkdir()
        files = {}
        for model_id, (arrays, trees) in estimators.items():
            name = f"{model_id}.npz"
            np.savez(tmp / name, **arrays)
            files[name] = sha256_of(tmp / name)
            for j, text in enumerate(trees):
                name = f"{model_id}.tree{j}.txt"
                (tmp / name).write_text(text)
                files[name] = sha256_of(tmp / name)
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
    except (OSError, json.JSONDecodeError) as exc:
        raise _refuse(folder, MODEL_JSON, "JSON", f"unreadable ({exc})", fix) from exc
    found = meta.get("format") if isinstance(meta, dict) else None
    if not isinstance(found, int) or found > BUNDLE_FORMAT:
        raise _refuse(folder, "format", f"model folder format <= {BUNDLE_FORMAT}",
                      repr(found), "upgrade hespot, or fit the model with this version")
    for name, digest in meta.get("files", {}).items():
        if not (folder / name).is_file():
            raise _refuse(folder, name, "a file listed in model.json", "missing", fix)
        if sha256_of(folder / name) != digest:
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
        if kind not in KINDS:
            raise _refuse(folder, f"models/{model_id}/kind", f"one of {KINDS}", repr(kind),
                          "fit the model again with this version of hespot")
        try:
            with np.load(folder / f"{model_id}.npz", allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except ValueError as exc:  # an object array: it would need pickle, never loaded
            raise _refuse(folder, f"{model_id}.npz", "numeric arrays (no pickle)",
                          f"refused: {exc}", "fit the model again with hespot fit") from exc
        boosters = []
        if kind == "lgbm":
            import lightgbm as lgb

            n = len(meta["cell_types"])
            boosters = [lgb.Booster(model_str=(folder / f"{model_id}.tree{j}.txt").read_text())
                        for j in range(n)]
        estimators[model_id] = SavedEstimator(kind, arrays, boosters)
    return Bundle(folder, meta, estimators)
