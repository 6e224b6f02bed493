"""What "the same outputs" means for each command of the fault suite
(``tests/system/faults.py``), and what a killed run may leave behind.

Each ``same_*(a, b)`` compares the outputs of one command in two OUT folders ``a`` (the
uninterrupted run's) and ``b``: byte for byte where the issue asks (submission, h5ad,
predictions, tuned.json, the model folder's arrays, report images), and otherwise the
content without timings and without the OUT folder's own path (settings name it).
:func:`partial_files` finds outputs under their final names that a kill left incomplete
(a page showing an image that is gone included);
:func:`temporaries` finds the temporaries a rerun did not clear.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np


def _arrays(store: Path) -> dict[str, np.ndarray]:
    import zarr

    out: dict[str, np.ndarray] = {}

    def walk(group, prefix: str) -> None:
        for name, arr in group.arrays():
            out[prefix + name] = arr[:]
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    walk(zarr.open_group(str(store), mode="r"), "")
    return out


def same_store(a: Path, b: Path) -> bool:
    x, y = _arrays(a), _arrays(b)
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


def same_scores(a: Path, b: Path) -> bool:
    def scores(out: Path) -> dict:
        report = json.loads((out / "report.json").read_text())
        return {m: (e["per_slide"], e["mean"], e["per_type"])
                for m, e in report["models"].items()}
    return scores(a) == scores(b)


def same_bytes(a: Path, b: Path, *names: str) -> bool:
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)


def same_submission(a: Path, b: Path) -> bool:
    return same_bytes(a, b, "submission.csv", "predictions.h5ad", "predictions.csv",
                      "rank_scores.csv")


def _h5_content(path: Path) -> dict:
    """name -> (attributes, values) of every group and dataset of an HDF5 file."""
    found: dict = {}
    with h5py.File(path, "r") as f:
        found["/"] = (dict(f.attrs), None)
        f.visititems(lambda name, obj: found.__setitem__(name, (
            dict(obj.attrs), obj[()] if isinstance(obj, h5py.Dataset) else None)))
    return found


def _equal(x: object, y: object) -> bool:
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, tuple | list) and isinstance(y, tuple | list):
        return len(x) == len(y) and all(_equal(i, j) for i, j in zip(x, y, strict=True))
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return (np.shape(x) == np.shape(y) and np.asarray(x).dtype == np.asarray(y).dtype
                and np.array_equal(x, y))
    return type(x) is type(y) and x == y


def same_h5(a: Path, b: Path) -> bool:
    """The canonical file's groups, datasets (dtype, shape, values) and attributes."""
    return _equal(_h5_content(a), _h5_content(b))


def _drop(obj: object, keys: set[str]) -> object:
    """``obj`` (parsed JSON) without the timing keys ``keys``, at any depth."""
    if isinstance(obj, dict):
        return {k: _drop(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [_drop(v, keys) for v in obj]
    return obj


def _text(path: Path, out: Path) -> str:
    """The text of ``path`` with the run's OUT folder ``out`` (named in settings) as OUT."""
    return path.read_text().replace(str(out), "OUT")


def same_tune(a: Path, b: Path) -> bool:
    """tuned.json's bytes; the ablation of report.json but its timings and OUT's path."""
    def ablation(out: Path) -> object:
        return _drop(json.loads(_text(out / "tune" / "report.json", out))["ablation"],
                     {"seconds"})
    return same_bytes(a / "tune", b / "tune", "tuned.json") and ablation(a) == ablation(b)


def missing_images(page: Path) -> list[str]:
    """The images an HTML page shows (``<img src>``, relative to it) that are not there."""
    srcs = re.findall(r'<img src="([^"]+)"', page.read_text())
    return [src for src in srcs if not (page.parent / src).is_file()]


def same_report(a: Path, b: Path) -> bool:
    """The page but its build time and OUT's path; every image, byte for byte; the page
    shows every image of img/ and each is there."""
    def page(out: Path) -> str:
        return re.sub(r"Built in [0-9.]+ s", "", _text(out / "report" / "index.html", out))
    imgs = sorted(p.name for p in (a / "report" / "img").iterdir())
    shown = sorted(Path(src).name for src in re.findall(r'<img src="([^"]+)"', page(b)))
    return (page(a) == page(b) and shown == imgs
            and not missing_images(b / "report" / "index.html")
            and imgs == sorted(p.name for p in (b / "report" / "img").iterdir())
            and same_bytes(a / "report" / "img", b / "report" / "img", *imgs))


def same_model(a: Path, b: Path) -> bool:
    """Every file of the model folder byte for byte; model.json and the model card
    (README.md) but their creation time and OUT's path."""
    def meta(out: Path) -> object:
        found = _drop(json.loads(_text(out / "model" / "model.json", out)), {"created"})
        found.get("files", {}).pop("README.md", None)  # its checksum covers the time
        return found

    def card(out: Path) -> str:
        created = json.loads((out / "model" / "model.json").read_text())["created"]
        return _text(out / "model" / "README.md", out).replace(created, "CREATED")
    names = sorted(p.name for p in (a / "model").iterdir())
    texts = ("model.json", "README.md")
    return (names == sorted(p.name for p in (b / "model").iterdir()) and meta(a) == meta(b)
            and card(a) == card(b)
            and same_bytes(a / "model", b / "model", *(n for n in names if n not in texts)))


def same_predict(a: Path, b: Path) -> bool:
    """predictions.csv, rank_scores.csv and .h5ad byte for byte, and the features stage 1
    stored."""
    return (same_bytes(a, b, "predictions.csv", "rank_scores.csv", "predictions.h5ad")
            and same_store(a / "embeddings.zarr", b / "embeddings.zarr"))


def same_finetune(a: Path, b: Path) -> bool:
    """As the resume test compares: per fold the same epochs kept, each with the same
    weights, optimiser and schedule state and history but its timings; the same
    out-of-fold and test predictions (bytes) and report scores."""
    import torch

    def checkpoints(out: Path) -> dict:
        found = {}
        for path in sorted(out.glob("finetune/*/fold_*/epoch_*.pt")):
            state = torch.load(path, weights_only=True)
            state["history"] = _drop(state["history"], {"seconds", "train_seconds",
                                                        "images_per_s"})
            found[str(path.relative_to(out))] = state
        return found

    def tensors_equal(x: object, y: object) -> bool:
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor):
            return x.dtype == y.dtype and torch.equal(x, y)
        if isinstance(x, dict) and isinstance(y, dict):
            return x.keys() == y.keys() and all(tensors_equal(x[k], y[k]) for k in x)
        if isinstance(x, list | tuple) and isinstance(y, list | tuple):
            return len(x) == len(y) and all(map(tensors_equal, x, y))
        return x == y

    preds = sorted(str(p.relative_to(a)) for p in a.glob("predictions/*/*.csv"))
    return (bool(preds) and tensors_equal(checkpoints(a), checkpoints(b))
            and same_bytes(a, b, *preds) and same_scores(a, b))


def _whole(path: Path, out: Path, ref: Path) -> bool:
    """Whether ``path``, an output found under its final name in ``out`` after a kill, is
    complete: the reference's (in ``ref``) bytes, but OUT's path; or, for outputs with
    timings or of epochs the reference pruned, a file that reads to its end."""
    rel = path.relative_to(out)
    if (ref / rel).is_file():
        mine, theirs = path.read_bytes(), (ref / rel).read_bytes()
        if mine == theirs or mine.replace(bytes(out), b"OUT") == theirs.replace(bytes(ref),
                                                                                b"OUT"):
            return True
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".md":  # rendered from the report.json written just before it
            from regress.outputs import render_markdown
            from regress.results import rank_models
            report = json.loads((path.parent / "report.json").read_text())
            return path.read_text() == render_markdown(report, rank_models(report))
        elif path.suffix in (".h5", ".h5ad"):
            _h5_content(path)
        elif path.suffix == ".npz":
            with np.load(path) as z:
                [z[k] for k in z.files]
        elif path.suffix == ".pt":
            import torch
            torch.load(path, weights_only=True)
        elif path.suffix == ".png":
            from PIL import Image
            with Image.open(path) as im:
                im.load()
        elif path.suffix == ".html":
            return path.read_text().rstrip().endswith("</html>")
        else:
            return False  # text or chunks: deterministic, so they must be the reference's
    except Exception:  # noqa: BLE001 - any failure to read it means it is not whole
        return False
    return True


def temporaries(out: Path) -> list[str]:
    """Temporaries (hidden names, :mod:`data.atomic`'s) under ``out``; lock files aside."""
    return sorted(str(p.relative_to(out)) for p in out.rglob(".*") if p.name != ".hespot.lock")


def partial_files(ref: Path, out: Path, outputs: tuple[str, ...]) -> list[str]:
    """Files of ``outputs`` under their final names in ``out`` that are not whole
    (temporaries, hidden, and lock files are not final names), and pages that show an image
    that is not there (``page -> img/...``: the report folder is not all of one run)."""
    bad = []
    for name in outputs:
        top = out / name
        files = [top] if top.is_file() else [p for p in top.rglob("*") if p.is_file()]
        for path in files:
            rel = path.relative_to(out)
            if (any(part.startswith(".") for part in rel.parts)
                    or path.suffix in (".lock", ".partial")):  # zarr's temporaries: .partial
                continue
            if not _whole(path, out, ref):
                bad.append(str(rel))
            elif path.suffix == ".html":
                bad += [f"{rel} -> {src} (missing)" for src in missing_images(path)]
    return bad
