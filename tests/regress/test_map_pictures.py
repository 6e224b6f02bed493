"""The pictures of ``hespot map`` (regress.outputs.sheets, map_canvas, map_panels) on the
synthetic fixture: every PNG written and readable, one per cell type under a safe and
unique name however the type is named, the tissue outline drawn, rank scores drawn (and
said) for a model without abundances, and spots that neither vanish nor move."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import regress.outputs.sheets as sheets
from data.h5 import CanonicalH5
from data.wsi.tissue import TissueMask
from regress.outputs.map_canvas import (
    map_canvas,
    spot_raster,
    spots_box,
    tissue_outline,
    under_raster,
)
from regress.outputs.map_panels import type_panels
from regress.outputs.maps import Maps

AWKWARD = ["B-cells/Naive", "T cells CD4+", "T cells (CD4)", "<script>alert(1)</script>",
           "Ünïcode & co", "maps", "b-cells/naive", "x" * 200, "..", "CAFs MSC/iCAF-like s1"]


def make_maps(slide: str, x: np.ndarray, y: np.ndarray, types: list[str], abundance: bool = True,
              ood: bool = True, seed: int = 0) -> Maps:
    """A Maps of one slide's spots with random abundances (rows summing to 1), intervals
    around them and OOD scores."""
    rng = np.random.default_rng(seed)
    n = len(x)
    frame = pd.DataFrame({"slide": slide, "row": np.arange(n),
                          "spot_id": [f"{slide}_{i}" for i in range(n)], "x": x, "y": y})
    A = rng.dirichlet(np.ones(len(types)), size=n)
    return Maps(frame, types, rank_score=rng.normal(size=A.shape),
                abundance=A if abundance else None, lower=A * 0.5 if abundance else None,
                upper=A * 1.5 + 0.01 if abundance else None,
                ood_score=rng.gamma(4, 0.25, n) if ood else None,
                slides={slide: {"ood_score": 1.7, "ood_threshold": 1.4, "ood_flagged": True,
                                "flagged_spots": 3}} if ood else {})


@pytest.fixture(scope="module")
def test_slide(synthetic_h5):
    with CanonicalH5(synthetic_h5) as h5:
        slide = h5.test_slides[0]
        x, y = h5.coords(slide)
    return slide, x, y


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert("RGB"))


def _orange(rgb: np.ndarray) -> int:
    """Pixels of about the outline's orange (#ff8f00), antialiased."""
    r, g, b = (rgb[..., k].astype(int) for k in range(3))
    return int(((r > 210) & (g > 100) & (g < 190) & (b < 90)).sum())


def test_every_picture_is_written_and_readable(synthetic_h5, test_slide, tmp_path):
    slide, x, y = test_slide
    maps = make_maps(slide, x, y, AWKWARD)
    with CanonicalH5(synthetic_h5) as h5:
        pics = sheets.write_slide_pictures(tmp_path, slide, maps, h5)
    folder = tmp_path / slide
    assert pics.sheet == folder / "maps.png"
    assert pics.uncertainty == folder / "uncertainty.png" and pics.ood == folder / "ood.png"
    assert list(pics.types) == AWKWARD and pics.quantity == "abundance"
    names = [p.name for p in pics.types.values()]
    assert len({n.lower() for n in names}) == len(AWKWARD)            # unique, any case
    assert all(p.parent == folder for p in pics.types.values())
    assert not {"maps.png", "uncertainty.png", "ood.png"} & set(names)
    assert all(" " not in n and "/" not in n and not n.startswith(".") for n in names)
    for path in [pics.sheet, pics.uncertainty, pics.ood, *pics.types.values()]:
        image = _png(path)
        assert image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 5                                       # not a blank picture
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["maps.png", "uncertainty.png", "ood.png", *names])          # no temporaries left


def test_file_names_are_safe_unique_and_stable():
    names = sheets.type_file_names(AWKWARD)
    assert names == sheets.type_file_names(AWKWARD)
    assert names[0] == "type_B-cells_Naive.png" and names[1] == "type_T_cells_CD4.png"
    assert names[2] == "type_T_cells_CD4_2.png" and names[6] == "type_b-cells_naive_2.png"
    assert names[8] == "type_type.png"
    assert all(len(n) <= len("type_.png") + sheets.MAX_STEM + 3 for n in names)


def test_a_model_without_abundances_draws_rank_scores(synthetic_h5, test_slide, tmp_path):
    slide, x, y = test_slide
    maps = make_maps(slide, x, y, ["C1", "C2", "C3"], abundance=False, ood=False)
    panels, quantity = type_panels(maps, np.arange(len(x)))
    assert quantity == "rank score" and all("rank score" in p[0] for p in panels)
    earlier = make_maps(slide, x, y, ["C1", "Other"])           # a run with abundances
    sheets.write_slide_pictures(tmp_path, slide, earlier, None)
    (tmp_path / slide / "notes.txt").write_text("the user's")
    with CanonicalH5(synthetic_h5) as h5:
        pics = sheets.write_slide_pictures(tmp_path, slide, maps, h5)
    assert pics.quantity == "rank score" and pics.uncertainty is None and pics.ood is None
    assert sorted(p.name for p in (tmp_path / slide).iterdir()) == sorted(
        ["maps.png", "type_C1.png", "type_C2.png", "type_C3.png", "notes.txt"])
    assert set(pics.files()) == {"contact sheet"}


def test_the_tissue_outline_is_drawn(synthetic_h5, test_slide, tmp_path, monkeypatch):
    slide, x, y = test_slide
    mask = np.zeros((64, 64), bool)
    mask[8:56, 8:56] = True                          # a square of tissue, 8 px per mask px
    monkeypatch.setattr(sheets, "slide_tissue",
                        lambda h5, s: TissueMask(mask, (8.0, 8.0), 0.1, 0.1))
    maps = make_maps(slide, x, y, ["C1", "C2"], ood=False)
    with CanonicalH5(synthetic_h5) as h5:
        pics = sheets.write_slide_pictures(tmp_path, slide, maps, h5)
    for path in (pics.sheet, pics.types["C1"]):
        assert _orange(_png(path)) > 100, path
    pics = sheets.write_slide_pictures(tmp_path / "none", slide, maps, h5=None)
    assert _orange(_png(pics.sheet)) == 0 and _orange(_png(pics.types["C1"])) == 0


def test_outline_is_in_level0_pixels():
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    lines = tissue_outline(TissueMask(mask, (4.0, 2.0), 0.1, 0.1))
    assert len(lines) == 1
    xy = lines[0]
    assert abs(xy[:, 0].min() - 19) <= 2 and abs(xy[:, 0].max() - 41) <= 2    # cols 10-19 x2
    assert abs(xy[:, 1].min() - 18) <= 4 and abs(xy[:, 1].max() - 62) <= 4    # rows 5-14 x4
    assert tissue_outline(TissueMask(np.ones((4, 4), bool), (1.0, 1.0), 0.1, 0.1)) == []
    assert tissue_outline(None) == []


def test_every_spot_keeps_its_pixel_and_colour():
    gx, gy = np.meshgrid(np.arange(10) * 100.0 + 50, np.arange(8) * 100.0 + 50)
    x, y = gx.ravel(), gy.ravel()
    box = spots_box(x, y, 100)
    raster = spot_raster(x, y, box, 200, spacing=100.0)          # 20 px apart: discs
    step = (raster.box[1] - raster.box[0]) / raster.index.shape[1]
    cols = ((x - raster.box[0]) / step).astype(int)
    rows = ((y - raster.box[3]) / step).astype(int)
    assert (raster.index[rows, cols] == np.arange(len(x))).all()
    assert (raster.index == -1).mean() > 0.3                     # gaps between discs
    dense = spot_raster(x, y, box, 30, spacing=100.0)            # 3 px apart: tiles
    assert set(np.unique(dense.index)) >= set(range(len(x)))     # no spot vanishes
    canvas = map_canvas(x, y, box, 200, 100.0, None, None, [])
    values = np.zeros(len(x))
    values[0], values[1] = 1.0, np.nan
    from matplotlib.colors import Normalize
    rgb = canvas.rgb(values, Normalize(0, 1), "viridis")
    assert (rgb[rows[1], cols[1]] == 255).all()                  # NaN: background shows
    assert tuple(rgb[rows[0], cols[0]]) == (253, 231, 36)        # viridis at 1: yellow


def test_the_thumbnail_lands_under_its_spots():
    thumb = np.zeros((100, 100, 3), np.uint8)
    thumb[:, 50:] = 200                                  # right half bright, 10 px/level-0
    x, y = np.array([100.0, 900.0]), np.array([500.0, 500.0])
    raster = spot_raster(x, y, (0.0, 1000.0, 1000.0, 0.0), 100, spacing=800.0)
    under = under_raster(thumb, (0.0, 1000.0, 1000.0, 0.0), raster)
    assert under.shape == (100, 100, 3)
    assert under[50, 10, 0] < under[50, 90, 0]           # dark left, bright right
    assert under[50, 10, 0] == int(255 * 0.45)           # faded towards white


def test_bad_slide_names_and_missing_slides_are_refused(test_slide, tmp_path):
    slide, x, y = test_slide
    maps = make_maps(slide, x, y, ["C1"])
    with pytest.raises(ValueError, match="no spots of slide 'S_9'"):
        sheets.write_slide_pictures(tmp_path, "S_9", maps, None)
    maps.frame["slide"] = "../up"
    with pytest.raises(ValueError, match="cannot name a folder"):
        sheets.write_slide_pictures(tmp_path, "../up", maps, None)
