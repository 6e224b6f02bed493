"""The valid inputs every case starts from, made once per run under ``<root>/base``:

- ``synthetic.h5``: the synthetic fixture (3 train + 1 test slides, 256 px, 25 spots);
- ``sample.h5``: two sections of the bundled her2st sample (train C2 with the 41 cell
  types of the subset tier, test C6), each a 640 px window of the real image with its
  spots, spot ids and pixel size, written as import-her2st writes;
- ``wsi.tif`` / ``wsi_jpeg.tif`` / ``strip.tif``: small slides (pyramidal zlib and JPEG
  tiles, a plain strip TIFF), and ``wsi_ref.h5``, ``wsi.tif`` imported by reference;
- ``store.zarr``: stage 1 of ``synthetic.h5`` (tiny_random, 32 px, 1 view);
- ``out/``: ``regress`` (ridge, lgbm) on it, and ``out/model``: ``fit``'s model folder;
- ``table/``: an import-table manifest of a PNG train slide, a JPEG test slide and a TIFF
  train slide, each with its spots CSV;
- ``visium/``: two Space Ranger outs folders (new and headerless positions files), their
  images and one abundance table.

The commands run as the cases do (a fork, :func:`harness.run_forked`), so the parent
never starts torch's or LightGBM's threads.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
from PIL import Image

from data.config import SAMPLE_DIR
from data.h5 import SlideRecord, write_h5
from data.images import load_image
from data.importers.her2st import gather
from data.spots import make_spot_table
from data.synthetic import SyntheticConfig, write_synthetic
from data.wsi.pyramid import write_array_pyramid
from tests.system.fuzz.harness import Case, run_forked

EMBED = ("--backbones", "tiny_random", "--patch-px", "32", "--tta", "1", "--threads", "1",
         "--runner", "eager", "--quiet")
REGRESS = ("--features", "tiny_random", "--targets", "spot_rank", "--quiet")
WINDOW = 640


@dataclass(frozen=True)
class Bases:
    root: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name


def _command(root: Path, *argv: str) -> None:
    case = Case("base", 0, 0, tuple(argv), (), "none", (), timeout=600)
    logs = (root / "base.out", root / "base.err")
    outcome = run_forked(case, root, logs)
    if outcome.rc != 0:
        raise RuntimeError(f"building the fuzz inputs: hespot {' '.join(argv)} failed "
                           f"(exit {outcome.rc}):\n{outcome.stderr[-3000:]}")


def tissue_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """uint8 (h, w, 3): pale glass with a pink-purple textured block in the middle."""
    rng = np.random.default_rng(seed)
    image = np.full((h, w, 3), 235, np.uint8)
    block = rng.integers(0, 40, (h // 2, w // 2, 3), dtype=np.uint8)
    image[h // 4:h // 4 + h // 2, w // 4:w // 4 + w // 2] = (np.array([190, 100, 160],
                                                                      np.uint8) - block)
    return image


def _sample(path: Path) -> None:
    """Two her2st sections, cropped to a window around their spots' median."""
    records = []
    for s in gather(SAMPLE_DIR, "subset", 0.69, sections=["C2", "C6"]):
        cx, cy = int(np.median(s.x)), int(np.median(s.y))
        x0, y0 = cx - WINDOW // 2, cy - WINDOW // 2
        inside = (s.x >= x0) & (s.x < x0 + WINDOW) & (s.y >= y0) & (s.y < y0 + WINDOW)
        image = load_image(s.image_path, s.name)[y0:y0 + WINDOW, x0:x0 + WINDOW]
        Y = s.Y[inside] if s.Y is not None else None
        table = make_spot_table(s.x[inside] - x0, s.y[inside] - y0, Y, s.cell_types,
                                {"spot_id": s.extra["spot_id"][inside]})
        records.append(SlideRecord(s.name, s.split, table, image, s.pixel_size_um, s.source))
    write_h5(path, records)


def _slides(root: Path) -> None:
    image = tissue_image(600, 600)
    write_array_pyramid(root / "wsi.tif", image, 4.0, n_levels=2, compression="zlib")
    write_array_pyramid(root / "wsi_jpeg.tif", image, 4.0, n_levels=3, compression="jpeg")
    tifffile.imwrite(root / "strip.tif", image[:300, :300], photometric="rgb",
                     resolution=(2500, 2500), resolutionunit="CENTIMETER")


def _spots(n: int, h: int, w: int, types: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"x": rng.uniform(5, w - 5, n).round(1),
                          "y": rng.uniform(5, h - 5, n).round(1),
                          "spot_id": [f"s{seed}_{i}" for i in range(n)]})
    Y = rng.dirichlet(np.ones(types), n)
    for j in range(types):
        frame[f"type {j}/A"] = Y[:, j].round(4)
    return frame


def _table(root: Path) -> None:
    root.mkdir()
    image = tissue_image(96, 128, 1)
    Image.fromarray(image).save(root / "s0.png")
    Image.fromarray(image).save(root / "s1.jpg", quality=80)
    tifffile.imwrite(root / "s2.tif", image, photometric="rgb")
    _spots(12, 96, 128, 3, 0).to_csv(root / "s0.csv", index=False)
    _spots(8, 96, 128, 3, 1).iloc[:, :3].to_csv(root / "s1.csv", index=False)
    _spots(10, 96, 128, 3, 2).to_csv(root / "s2.csv", index=False)
    pd.DataFrame({"slide": ["A1", "B1", "C1"], "image": ["s0.png", "s1.jpg", "s2.tif"],
                  "spots": ["s0.csv", "s1.csv", "s2.csv"], "split": ["train", "test", "train"],
                  "pixel_size_um": [1.0, 1.0, ""]}).to_csv(root / "manifest.csv", index=False)


def _visium(root: Path) -> None:
    """Two outs folders: S1 (new positions file, abundances), S2 (headerless list)."""
    image = tissue_image(200, 240, 3)
    for k, slide in enumerate(("S1", "S2")):
        spatial = root / slide / "outs" / "spatial"
        spatial.mkdir(parents=True)
        rng = np.random.default_rng(k)
        n = 14
        pos = pd.DataFrame({"barcode": [f"AC{k}G-{i}" for i in range(n)],
                            "in_tissue": (np.arange(n) % 5 != 0).astype(int),
                            "array_row": np.arange(n) // 4, "array_col": np.arange(n) % 4,
                            "pxl_row_in_fullres": rng.uniform(10, 190, n).round(),
                            "pxl_col_in_fullres": rng.uniform(10, 230, n).round()})
        if k == 0:
            pos.to_csv(spatial / "tissue_positions.csv", index=False)
        else:
            pos.to_csv(spatial / "tissue_positions_list.csv", index=False, header=False)
        (spatial / "scalefactors_json.json").write_text(json.dumps(
            {"spot_diameter_fullres": 24.5, "tissue_hires_scalef": 0.17,
             "fiducial_diameter_fullres": 36.7, "tissue_lowres_scalef": 0.05}))
    Image.fromarray(image).save(root / "S1.png")
    tifffile.imwrite(root / "S2.tif", image, photometric="rgb", tile=(64, 64))
    rng = np.random.default_rng(5)
    Y = rng.dirichlet(np.ones(4), 14)
    pd.DataFrame(Y.round(4), index=[f"AC0G-{i}" for i in range(14)],
                 columns=["B cells", "T cells", "CAFs MSC/iCAF-like", "Cancer Her2 SC"]
                 ).to_csv(root / "S1_abundances.csv")


def build(root: Path) -> Bases:
    """Write every base input under ``root`` (about 20 s here)."""
    root.mkdir(parents=True, exist_ok=True)
    write_synthetic(root / "synthetic.h5", SyntheticConfig(size=256, grid=5, n_types=4))
    _sample(root / "sample.h5")
    _slides(root)
    _table(root / "table")
    _visium(root / "visium")
    _command(root, "import-wsi", "--slide", str(root / "wsi.tif"), "--out",
             str(root / "wsi_ref.h5"), "--quiet")
    _command(root, "embed", "--h5", str(root / "synthetic.h5"), "--store",
             str(root / "store.zarr"), *EMBED)
    _command(root, "regress", "--h5", str(root / "synthetic.h5"), "--store",
             str(root / "store.zarr"), "--out", str(root / "out"), "--models", "ridge,lgbm",
             "--lgbm-trees", "20", *REGRESS)
    _command(root, "fit", "--h5", str(root / "synthetic.h5"), "--store",
             str(root / "store.zarr"), "--out", str(root / "out"), "--models",
             "ridge-spot_rank,lgbm-spot_rank", "--quiet")
    return Bases(root)
