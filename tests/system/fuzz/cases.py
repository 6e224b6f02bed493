"""The kinds of input fuzzed and, per kind, how a case is made: the valid base input
copied into the case folder (:mod:`bases`), one to three seeded corruptions, and the
command that reads it.

=========  ===============================================  ===============================
kind       input                                            commands
=========  ===============================================  ===============================
h5         the synthetic canonical HDF5 (or one holding     check, embed, regress, predict
           its slide by reference to a TIFF)
sample     the sample's canonical HDF5 (her2st C2 + C6)     check, embed
spots      a spots CSV of an import-table manifest          import-table, import-wsi --spots
manifest   an import-table or import-visium manifest        import-table, import-visium
image      a slide image of the manifest (PNG, JPEG, TIFF)  import-table
visium     Space Ranger outs folders (positions,            import-visium
           scale factors), their images, abundances
wsi        a small pyramidal or strip TIFF                  import-wsi
store      the embeddings store                             regress, predict
model      the model folder of hespot fit                   predict
outputs    regress's report.json and predictions            submit
=========  ===============================================  ===============================
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.system.fuzz.bases import EMBED, REGRESS, Bases
from tests.system.fuzz.mutate import csv_mutation, json_mutation, pick, safely
from tests.system.fuzz.mutate_folders import model_mutation, store_mutation
from tests.system.fuzz.mutate_h5 import h5_mutation
from tests.system.fuzz.mutate_image import image_mutation, tiff_mutation

C = "{case}"
#: predict's time limit: it runs stage 1 as a fresh interpreter (importing torch) for a
#: slide its store does not hold (one whose content a corruption changed)
PREDICT_S = 300.0


@dataclass(frozen=True)
class Spec:
    """What a kind's maker returns: the command and what it may write."""

    argv: tuple[str, ...]
    outputs: tuple[str, ...] = ()
    valid: str = "none"
    timeout: float = 60.0


def copy(b: Bases, name: str, folder: Path, as_name: str | None = None) -> Path:
    src, dst = b / name, folder / (as_name or Path(name).name)
    if src.is_dir():
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)
    return dst


def times(rng: random.Random) -> int:
    return rng.choices((1, 2, 3), (7, 2, 1))[0]


def _h5_command(rng: random.Random, b: Bases, folder: Path, weights: tuple) -> Spec:
    h5 = f"{C}/in.h5"
    which = rng.choices(("check", "embed", "regress", "predict"), weights)[0]
    if which == "check":
        return Spec(("check", h5))
    if which == "embed":
        return Spec(("embed", "--h5", h5, "--store", f"{C}/out.zarr", *EMBED), ("out.zarr",),
                    "store", 120)
    copy(b, "store.zarr", folder)
    if which == "regress":
        return Spec(("regress", "--h5", h5, "--store", f"{C}/store.zarr", "--out", f"{C}/out",
                     "--models", "ridge", *REGRESS), ("out",), "regress")
    copy(b, "out/model", folder)
    return Spec(("predict", "--model", f"{C}/model", "--h5", h5, "--store",
                 f"{C}/store.zarr", "--out", f"{C}/pred", "--threads", "1", "--quiet"),
                ("pred", "store.zarr"), "predict", PREDICT_S)


def h5_case(rng: random.Random, b: Bases, folder: Path) -> tuple[Spec, list[str]]:
    if rng.random() < 0.25:
        copy(b, "wsi_ref.h5", folder, "in.h5")
        copy(b, "wsi.tif", folder)
    else:
        copy(b, "synthetic.h5", folder, "in.h5")
    muts = [safely(h5_mutation, rng, folder / "in.h5") for _ in range(times(rng))]
    return _h5_command(rng, b, folder, (70, 12, 14, 4)), muts


def sample_case(rng: random.Random, b: Bases, folder: Path) -> tuple[Spec, list[str]]:
    copy(b, "sample.h5", folder, "in.h5")
    muts = [safely(h5_mutation, rng, folder / "in.h5") for _ in range(times(rng))]
    return _h5_command(rng, b, folder, (75, 25, 0, 0)), muts


def _import_table() -> Spec:
    return Spec(("import-table", "--manifest", f"{C}/manifest.csv", "--out", f"{C}/out.h5",
                 "--quiet"), ("out.h5",), "h5")


def spots_case(rng: random.Random, b: Bases, folder: Path) -> tuple[Spec, list[str]]:
    for p in (b / "table").iterdir():
        shutil.copyfile(p, folder / p.name)
    csv = pick(rng, ("s0.csv", "s1.csv", "s2.csv"))
    muts = [safely(csv_mutation, rng, folder / csv) for _ in range(times(rng))]
    if rng.random() < 0.2:
        copy(b, "wsi.tif", folder)
        return Spec(("import-wsi", "--slide", f"{C}/wsi.tif", "--spots", f"{C}/{csv}",
                     "--out", f"{C}/out.h5", "--quiet"), ("out.h5",), "h5"), muts
    return _import_table(), muts


def _visium_manifest(folder: Path) -> Path:
    path = folder / "visium.csv"
    path.write_text("slide,outs,image,abundances\nS1,S1/outs,S1.png,S1_abundances.csv\n"
                    "S2,S2/outs,S2.tif,\n")
    return path


def _import_visium(*flags: str) -> Spec:
    return Spec(("import-visium", *flags, "--out", f"{C}/out.h5", "--quiet"), ("out.h5",),
                "h5")


def manifest_case(rng: random.Random, b: Bases, folder: Path) -> tuple[Spec, list[str]]:
    if rng.random() < 0.3:
        for p in (b / "visium").iterdir():
            copy(b, f"visium/{p.name}", folder)
        path = _visium_manifest(folder)
        muts = [safely(csv_mutation, rng, path) for _ in range(times(rng))]
        return _import_visium("--manifest", f"{C}/visium.csv"), muts
    for p in (b / "table").iterdir():
        shutil.copyfile(p, folder / p.name)
    muts = [safely(csv_mutation, rng, folder / "manifest.csv") for _ in range(times(rng))]
    return _import_table(), muts


def _odd_image(rng: random.Random, path: Path) -> str:
    """Replace a slide image by a valid but unusual one (mode, depth, size)."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB"))
    mode = pick(rng, ("L", "LA", "RGBA", "P", "1", "I;16", "I", "F", "CMYK", "tiny"))
    if mode == "tiny":
        image = Image.fromarray(rgb[:1, :1])
    elif mode in ("I;16", "I", "F"):
        image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).convert(mode)
    else:
        image = Image.fromarray(rgb).convert(mode)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".tif": "TIFF"}[path.suffix]
    try:
        image.save(path, fmt)
    except (OSError, ValueError, KeyError):
        image.convert("RGB").save(path, fmt)
        return f"{path.name}: {mode} (unsupported by {fmt}: saved RGB)"
    return f"{path.name}: saved as mode {mode}"


def image_case(rng: random.Random, b: Bases, folder: Path) -> tuple[Spec, list[str]]:
    for p in (b / "table").iterdir():
        shutil.copyfile(p, folder / p.name)
    path = folder / pick(rng, ("s0.png", "s1.jpg", "s2.tif"))
    muts = [safely(_odd_image, rng, path)] if rng.random() < 0.25 else []
    muts += [safely(image_mutation, rng, path) for _ in range(times(rng) - len(muts) + 1)]
    return _import_table(), muts


VISIUM_FILES = ("S1/outs/spatial/tissue_positions.csv", "S2/outs/spatial/tissue_positions_list"
                ".csv", "S1/outs/spatial/scalefactors_json.json", "S2/outs/spatial/"
                "scalefactors_json.json", "S1_abundances.csv", "S1.png", "S2.tif")


def visium_case(rng: random.Random, b: Bases, folder: Path) -> tuple[Spec, list[str]]:
    for p in (b / "visium").iterdir():
        copy(b, f"visium/{p.name}", folder)
    muts = []
    for _ in range(times(rng)):
        name = pick(rng, VISIUM_FILES)
        path = folder / name
        mutate = json_mutation if name.endswith(".json") else csv_mutation \
            if name.endswith(".csv") else image_mutation
        muts.append(f"{name}: {safely(mutate, rng, path)}")
    return _import_visium("--outs", f"{C}/S1/outs", "--image", f"{C}/S1.png",
                          "--abundances", f"{C}/S1_abundances.csv", "--outs", f"{C}/S2/outs",
                          "--image", f"{C}/S2.tif"), muts


def wsi_case(rng: random.Random, b: Bases, folder: Path) -> tuple[Spec, list[str]]:
    base = rng.choices(("wsi.tif", "wsi_jpeg.tif", "strip.tif"), (5, 3, 2))[0]
    copy(b, base, folder, "slide.tif")
    path = folder / "slide.tif"
    muts = [f"{base}: {safely(tiff_mutation, rng, path)}" for _ in range(times(rng))]
    extra = ("--images", "copy") if rng.random() < 0.25 else ()
    return Spec(("import-wsi", "--slide", f"{C}/slide.tif", "--out", f"{C}/out.h5", *extra,
                 "--quiet"), ("out.h5",), "h5"), muts


def store_case(rng: random.Random, b: Bases, folder: Path) -> tuple[Spec, list[str]]:
    copy(b, "synthetic.h5", folder, "in.h5")
    copy(b, "store.zarr", folder)
    muts = [store_mutation(rng, folder / "store.zarr") for _ in range(times(rng))]
    if rng.random() < 0.92:  # predict re-embeds a slide it misses: a fresh interpreter
        return Spec(("regress", "--h5", f"{C}/in.h5", "--store", f"{C}/store.zarr", "--out",
                     f"{C}/out", "--models", "ridge", *REGRESS), ("out",), "regress"), muts
    copy(b, "out/model", folder)
    return Spec(("predict", "--model", f"{C}/model", "--h5", f"{C}/in.h5", "--store",
                 f"{C}/store.zarr", "--out", f"{C}/pred", "--threads", "1", "--quiet"),
                ("pred", "store.zarr"), "predict", PREDICT_S), muts


def model_case(rng: random.Random, b: Bases, folder: Path) -> tuple[Spec, list[str]]:
    copy(b, "synthetic.h5", folder, "in.h5")
    copy(b, "store.zarr", folder)
    copy(b, "out/model", folder)
    muts = [model_mutation(rng, folder / "model") for _ in range(times(rng))]
    return Spec(("predict", "--model", f"{C}/model", "--h5", f"{C}/in.h5", "--store",
                 f"{C}/store.zarr", "--out", f"{C}/pred", "--threads", "1", "--quiet"),
                ("pred", "store.zarr"), "predict", PREDICT_S), muts


def outputs_case(rng: random.Random, b: Bases, folder: Path) -> tuple[Spec, list[str]]:
    copy(b, "synthetic.h5", folder, "in.h5")
    (folder / "out").mkdir()
    for name in ("report.json", "report.md", "predictions"):
        copy(b, f"out/{name}", folder / "out")
    csvs = sorted((folder / "out" / "predictions").rglob("*.csv"))
    muts = []
    for _ in range(times(rng)):
        if rng.random() < 0.4:
            muts.append(safely(json_mutation, rng, folder / "out" / "report.json"))
        else:
            path = pick(rng, csvs)
            muts.append(f"{path.parent.name}/{safely(csv_mutation, rng, path)}")
    outs = ("out/submission.csv", "out/submission.json", "out/predictions.h5ad",
            "out/predictions.csv", "out/rank_scores.csv")
    return Spec(("submit", "--h5", f"{C}/in.h5", "--out", f"{C}/out", "--quiet"), outs,
                "submit"), muts


KINDS: dict[str, Callable[[random.Random, Bases, Path], tuple[Spec, list[str]]]] = {
    "h5": h5_case, "sample": sample_case, "spots": spots_case, "manifest": manifest_case,
    "image": image_case, "visium": visium_case, "wsi": wsi_case, "store": store_case,
    "model": model_case, "outputs": outputs_case,
}
