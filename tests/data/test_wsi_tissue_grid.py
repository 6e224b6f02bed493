"""Tissue detection (data.wsi.tissue) on synthetic slides and spot grids (data.wsi.grid):
Visium geometry (100 µm hexagonal, array_col parity) and square grids."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from scipy.spatial import cKDTree

from data.errors import ConfigError, DataError
from data.wsi.grid import GridSpec, lay_grid
from data.wsi.tissue import MAX_OD, MIN_OD, TEXTURE, TissueMask, detect_tissue, optical_density
from tests.helpers import ArrayImage

PINK = (215, 130, 195)  # eosin
PURPLE = (120, 70, 165)  # haematoxylin


def glass(h: int, w: int, seed: int = 0, sd: float = 3.0) -> np.ndarray:
    """Blank glass: near-white with a little sensor noise."""
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(240, sd, (h, w, 3)), 0, 255).astype(np.uint8)


def stain(pixels: np.ndarray, where: np.ndarray, seed: int = 1,
          pink=PINK, purple=PURPLE, nuclei: float = 0.3) -> None:
    """Paint H&E-like tissue (pink with purple nuclei, textured) where ``where``."""
    rng = np.random.default_rng(seed)
    n = int(where.sum())
    colours = np.where(rng.random(n)[:, None] < nuclei, purple, pink).astype(float)
    colours += rng.normal(0, 12, (n, 3))
    pixels[where] = np.clip(colours, 0, 255).astype(np.uint8)


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


H, W, CY, CX, R = 1200, 1600, 560.0, 700.0, 380.0


@pytest.fixture(scope="module")
def disc_slide() -> np.ndarray:
    pixels = glass(H, W)
    stain(pixels, disc(H, W, CY, CX, R))
    return pixels


# --------------------------------------------------------------------------- tissue


def _true_disc_at_mask(mask: TissueMask) -> np.ndarray:
    """The true disc sampled at the mask pixels' centres (level-0 coordinates)."""
    h, w = mask.mask.shape
    fy, fx = mask.scale
    yy, xx = np.mgrid[:h, :w]
    return ((yy + 0.5) * fy - CY) ** 2 + ((xx + 0.5) * fx - CX) ** 2 <= R * R


@pytest.mark.parametrize("mask_px", [400, 2048])
def test_disc_of_tissue_found(disc_slide, mask_px):
    tissue = detect_tissue(ArrayImage(disc_slide), mask_px=mask_px)
    assert max(tissue.mask.shape) <= mask_px
    assert tissue.mask.dtype == bool
    truth = _true_disc_at_mask(tissue)
    iou = (truth & tissue.mask).sum() / (truth | tissue.mask).sum()
    assert iou > 0.9, iou
    assert tissue.share == pytest.approx(np.pi * R * R / (H * W), rel=0.05)
    assert MIN_OD <= tissue.threshold <= MAX_OD
    # the disc's centre is tissue, the corners are glass
    assert tissue.on_tissue(np.array([CX, 5.0, W - 3.0]),
                            np.array([CY, 5.0, H - 3.0])).tolist() == [True, False, False]


def test_tissue_with_a_pale_hole_is_filled(disc_slide):
    pixels = disc_slide.copy()
    hole = disc(H, W, CY, CX, 40)  # a gap in the tissue (white), inside the disc
    pixels[hole] = 238
    tissue = detect_tissue(ArrayImage(pixels), mask_px=400)
    assert tissue.on_tissue(np.array([CX]), np.array([CY]))[0]


def test_blank_slide_raises_naming_threshold():
    image = ArrayImage(glass(800, 900, sd=3.0), name="B7")
    with pytest.raises(DataError, match="threshold") as exc:
        detect_tissue(image, mask_px=512)
    msg = str(exc.value)
    assert "B7.tif" in msg and "slide B7" in msg and "field tissue" in msg


def test_black_and_white_only_is_blank():
    """Scanner fill (black) and glass (white): neither is tissue."""
    pixels = glass(600, 600)
    pixels[:, :200] = 0
    with pytest.raises(DataError, match="threshold"):
        detect_tissue(ArrayImage(pixels), mask_px=300)


def test_all_tissue_pale_half_found_by_texture():
    """A view that is all tissue, pale pink and dark purple halves: the pale half (cells
    5 px across, OD 0.07 and 0.11) is below every density threshold but textured, so it is
    tissue too."""
    h, w = 600, 800
    pixels = np.zeros((h, w, 3), np.uint8)
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    cells = np.kron(np.random.default_rng(4).random((h // 5, w // 5)) < 0.5,
                    np.ones((5, 5), bool))
    stain(pixels, left & cells, seed=1, pink=(225, 165, 210), purple=(225, 165, 210))
    stain(pixels, left & ~cells, seed=3, pink=(238, 195, 228), purple=(238, 195, 228))
    stain(pixels, ~left, seed=2, pink=(150, 60, 160), purple=(110, 40, 150), nuclei=0.5)
    assert optical_density(np.array([[(225, 165, 210), (238, 195, 228)]], np.uint8)).max() \
        < MIN_OD
    tissue = detect_tissue(ArrayImage(pixels), mask_px=400)
    assert tissue.share > 0.97


def test_all_dense_tissue_is_not_split_by_otsu():
    """A view that is all smooth (untextured) tissue of two densities: Otsu's threshold
    lies between them, the cap keeps both."""
    rng = np.random.default_rng(3)
    pixels = np.empty((600, 800, 3), np.uint8)
    pixels[:, :400] = (170, 90, 150)   # OD 0.29
    pixels[:, 400:] = (90, 30, 110)    # OD 0.58
    pixels = np.clip(pixels + rng.normal(0, 1, pixels.shape), 0, 255).astype(np.uint8)
    tissue = detect_tissue(ArrayImage(pixels), mask_px=400)
    assert tissue.otsu > tissue.threshold == MAX_OD  # the cap on Otsu was needed
    assert tissue.share > 0.97


def test_tinted_glass_is_not_tissue(disc_slide):
    """Stain diffused onto the glass (a smooth pink haze, as around the bundled C3-C6
    sections) is as dense as pale tissue but smooth: not tissue."""
    pixels = disc_slide.copy()
    haze = disc(H, W, CY, CX + 420, 330) & ~disc(H, W, CY, CX, R)
    pixels[haze] = np.clip(pixels[haze].astype(int) + (-2, -22, -8), 0, 255)  # OD ~0.05
    tissue = detect_tissue(ArrayImage(pixels), mask_px=400)
    truth = _true_disc_at_mask(tissue)
    iou = (truth & tissue.mask).sum() / (truth | tissue.mask).sum()
    assert iou > 0.9, iou
    assert not tissue.on_tissue(np.array([CX + 600]), np.array([CY]))[0]


def test_fat_inside_the_outline_is_tissue(disc_slide):
    """Fat (big white cells with thin walls) inside the section and a gap narrower than
    the closing are tissue; glass outside is not."""
    pixels = disc_slide.copy()
    yy, xx = np.mgrid[:H, :W]
    fat = disc(H, W, CY, CX, 200) & ((yy % 40 > 3) & (xx % 40 > 3))  # 36 px cells, 4 px walls
    pixels[fat] = 242
    gap = (np.abs(xx - (CX - 250)) < 15) & disc(H, W, CY, CX, R)  # a 30 µm tear
    pixels[gap] = 240
    tissue = detect_tissue(ArrayImage(pixels), mask_px=800)
    inside = disc(H, W, CY, CX, R - 20)
    ys, xs = np.nonzero(inside[::8, ::8])
    assert tissue.on_tissue(xs * 8.0, ys * 8.0).mean() > 0.99
    assert tissue.share == pytest.approx(np.pi * R * R / (H * W), rel=0.05)


def test_small_specks_dropped_large_pieces_kept(disc_slide):
    pixels = disc_slide.copy()
    specks = [(100, 1300), (1000, 1400), (150, 150)]
    for cy, cx in specks:  # 40 x 40 px = 1600 µm² at 1 µm/px, far below 20000 µm²
        stain(pixels, disc(H, W, cy, cx, 20), seed=cy)
    tissue = detect_tissue(ArrayImage(pixels, mpp=1.0), mask_px=400)
    ys, xs = np.array(specks, float).T
    assert not tissue.on_tissue(xs, ys).any()
    assert tissue.on_tissue(np.array([CX]), np.array([CY]))[0]
    # the same specks, 100x bigger in µm² (pixels of 10 µm): kept as tissue pieces
    kept = detect_tissue(ArrayImage(pixels, mpp=10.0), mask_px=400)
    assert kept.on_tissue(xs, ys).all()
    # unknown pixel size: a speck's share of the view decides (these are big enough)
    assert detect_tissue(ArrayImage(pixels, mpp=None), mask_px=400).on_tissue(xs, ys).all()


def test_mask_scale_maps_to_level0(disc_slide):
    tissue = detect_tissue(ArrayImage(disc_slide), mask_px=400)
    fy, fx = tissue.scale
    h, w = tissue.mask.shape
    assert (fy, fx) == (4.0, 4.0)
    assert (h, w) == (H // 4, W // 4)


# --------------------------------------------------------------------------- TissueMask


def _half_mask() -> TissueMask:
    """20 x 20 mask pixels of 4 x 4 level-0 pixels; tissue on the left half."""
    mask = np.zeros((20, 20), bool)
    mask[:, :10] = True
    return TissueMask(mask, (4.0, 4.0), 0.1, 0.12)


def test_on_tissue_maps_level0_points():
    tm = _half_mask()
    x = np.array([0.0, 39.9, 40.0, 79.0, -5.0, 500.0])
    y = np.array([0.0, 10.0, 10.0, 79.0, 10.0, 10.0])
    # points off the mask are clipped to its edge
    assert tm.on_tissue(x, y).tolist() == [True, True, False, False, True, False]
    assert tm.share == 0.5


def test_coverage():
    tm = _half_mask()
    x = np.array([20.0, 60.0, 40.0])
    y = np.array([40.0, 40.0, 40.0])
    cov = tm.coverage(x, y, radius_px=16.0)  # 4 mask pixels
    assert cov[0] == pytest.approx(1.0)
    assert cov[1] == pytest.approx(0.0)
    assert 0.3 < cov[2] < 0.6  # on the edge: about half
    # discs under one mask pixel: the centre pixel alone
    small = tm.coverage(x, y, radius_px=2.0)
    assert small.tolist() == tm.on_tissue(x, y).astype(float).tolist()
    # near the border the outside counts as no tissue
    assert 0.5 < tm.coverage(np.array([0.0]), np.array([40.0]), 16.0)[0] < 0.75


def test_mask_roundtrip_through_hdf5(tmp_path, disc_slide):
    tissue = detect_tissue(ArrayImage(disc_slide), mask_px=400)
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        tissue.write(f, "tissue/Test/S1")
    with h5py.File(path, "r") as f:
        dset = f["tissue/Test/S1"]
        assert dset.attrs["method"] == "od-texture"
        back = TissueMask.read(dset)
    np.testing.assert_array_equal(back.mask, tissue.mask)
    assert back.mask.dtype == bool
    assert back.scale == tissue.scale
    assert back.threshold == pytest.approx(tissue.threshold)
    assert back.otsu == pytest.approx(tissue.otsu)
    assert back.share == tissue.share
    assert (back.texture, back.method) == (TEXTURE, "od-texture")
    assert "optical density" in back.rule


def test_mask_of_an_older_version_reads_with_its_method(tmp_path):
    """A mask stored before the texture rule (no texture attribute) keeps its method."""
    path = tmp_path / "old.h5"
    with h5py.File(path, "w") as f:
        dset = f.create_dataset("m", data=np.ones((4, 4), np.uint8))
        dset.attrs.update({"scale": [2.0, 2.0], "threshold": 0.156, "otsu": 0.156,
                           "method": "otsu-saturation"})
    with h5py.File(path, "r") as f:
        back = TissueMask.read(f["m"])
    assert back.method == "otsu-saturation" and np.isnan(back.texture)
    assert back.rule == "otsu-saturation, threshold 0.156"


# --------------------------------------------------------------------------- grid spec


def test_grid_spec_parse():
    v = GridSpec.parse("visium")
    assert (v.kind, v.pitch_um) == ("visium", 100.0)
    assert v.spot_um == pytest.approx(55.0)
    assert GridSpec.parse(" Visium ") == v
    s = GridSpec.parse("square:50")
    assert (s.kind, s.pitch_um) == ("square", 50.0)
    assert s.spot_um == pytest.approx(27.5)
    assert GridSpec.parse("square:12.5").pitch_um == 12.5


@pytest.mark.parametrize("text", ["hex", "square:-1", "square:x", "square:0", "square",
                                  "square:", "square:nan", "square:inf", ""])
def test_grid_spec_bad_values(text):
    with pytest.raises(ConfigError, match="--grid must be visium or square"):
        GridSpec.parse(text)


# --------------------------------------------------------------------------- lay_grid


@pytest.mark.parametrize("mpp", [0.5, 1.0, 2.3])
def test_visium_grid_geometry(mpp):
    shape = (int(2000 / mpp), int(2600 / mpp))  # 2 x 2.6 mm
    grid = lay_grid(shape, mpp, GridSpec.parse("visium"))
    pitch = 100.0 / mpp
    assert len(grid) > 300
    pts = np.column_stack([grid.x, grid.y])
    tree = cKDTree(pts)
    d, _ = tree.query(pts, k=2)
    np.testing.assert_allclose(d[:, 1], pitch, rtol=1e-9)  # nearest neighbour: 100 µm
    # hexagonal: interior spots have exactly 6 neighbours at one pitch
    n_near = np.array([len(v) - 1 for v in tree.query_ball_point(pts, pitch * 1.01)])
    interior = ((grid.x > 1.5 * pitch) & (grid.x < shape[1] - 1.5 * pitch)
                & (grid.y > 1.5 * pitch) & (grid.y < shape[0] - 1.5 * pitch))
    assert interior.sum() > 100
    assert (n_near[interior] == 6).all()
    assert n_near.max() == 6
    # every centre inside the image
    assert (grid.x >= 0).all() and (grid.x < shape[1]).all()
    assert (grid.y >= 0).all() and (grid.y < shape[0]).all()
    # Visium convention: array_col counts half pitches, same parity as array_row
    assert ((grid.array_col - grid.array_row) % 2 == 0).all()
    np.testing.assert_allclose(grid.x, pitch / 2 + grid.array_col * pitch / 2)
    np.testing.assert_allclose(grid.y, pitch / 2 + grid.array_row * pitch * np.sqrt(3) / 2)
    assert set(np.unique(grid.array_row % 2)) == {0, 1}
    ids = grid.spot_ids
    assert len(set(ids)) == len(ids)
    assert ids[0] == f"r{grid.array_row[0]}_c{grid.array_col[0]}"


def test_visium_grid_covers_the_image():
    """No strip wider than a pitch is left without spots along any edge."""
    mpp, shape = 1.0, (1000, 1300)
    grid = lay_grid(shape, mpp, GridSpec.parse("visium"))
    assert grid.x.min() <= 100 and grid.x.max() >= shape[1] - 100
    assert grid.y.min() <= 100 and grid.y.max() >= shape[0] - 100


@pytest.mark.parametrize("mpp", [0.25, 1.0])
def test_square_grid_pitch(mpp):
    shape = (int(1000 / mpp), int(1500 / mpp))
    grid = lay_grid(shape, mpp, GridSpec.parse("square:50"))
    pitch = 50.0 / mpp
    pts = np.column_stack([grid.x, grid.y])
    tree = cKDTree(pts)
    d, _ = tree.query(pts, k=2)
    np.testing.assert_allclose(d[:, 1], pitch)
    n_near = np.array([len(v) - 1 for v in tree.query_ball_point(pts, pitch * 1.01)])
    assert n_near.max() == 4
    assert len(grid) == 20 * 30  # 1000 / 50 rows x 1500 / 50 columns
    np.testing.assert_allclose(grid.x, pitch / 2 + grid.array_col * pitch)
    np.testing.assert_allclose(grid.y, pitch / 2 + grid.array_row * pitch)
    assert (grid.x < shape[1]).all() and (grid.y < shape[0]).all()


def test_grid_smaller_than_a_pitch():
    grid = lay_grid((30, 30), 1.0, GridSpec.parse("visium"))
    assert len(grid) == 0
    assert grid.x.dtype == float and grid.array_row.dtype == np.int64


def test_grid_subset():
    grid = lay_grid((500, 500), 1.0, GridSpec.parse("square:100"))
    keep = grid.x > 250
    sub = grid.subset(keep)
    assert len(sub) == int(keep.sum()) == 10
    np.testing.assert_array_equal(sub.array_col, grid.array_col[keep])
