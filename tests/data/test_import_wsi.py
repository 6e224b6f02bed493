"""``hespot import-wsi`` (data.importers.wsi) end to end on a small pyramidal TIFF of
synthetic tissue: grid spots on tissue, the image held by reference (and copied), spots
from a CSV, square grids, one-message user errors, references that survive a move and
fail clearly when the image is gone or replaced; ``import-table --images reference``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.check import main as check_main
from data.errors import DataError
from data.h5 import CanonicalH5
from data.importers import table as import_table
from data.importers import wsi as import_wsi
from data.patches import crop_patches
from data.wsi.grid import GridSpec, lay_grid
from data.wsi.pyramid import write_array_pyramid
from data.wsi.readers import open_image

# The synthetic slide: 4.8 x 6 mm at 4 µm/px (coarse, to keep tissue detection and the
# grid's coverage quick), an ellipse of tissue 2.6 x 3.6 mm across.
MPP = 4.0
H, W = 1200, 1500
CY, CX, AY, AX = 600.0, 720.0, 330.0, 450.0  # the tissue ellipse (pixels)
SPOT_R = 27.5 / MPP  # a Visium spot's radius in pixels


def _tile(a: np.ndarray, h: int, w: int) -> np.ndarray:
    reps = (h // a.shape[0] + 1, w // a.shape[1] + 1) + (1,) * (a.ndim - 2)
    return np.tile(a, reps)[:h, :w]


def glass(h: int, w: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 8, (256, 256, 3), dtype=np.uint8)
    return _tile(noise, h, w) + np.uint8(236)


def ellipse(h: int, w: int, cy=CY, cx=CX, ay=AY, ax=AX, grow: float = 0.0) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    return ((yy - cy) / (ay + grow)) ** 2 + ((xx - cx) / (ax + grow)) ** 2 <= 1


def inside(x, y, grow: float = 0.0) -> np.ndarray:
    return ((y - CY) / (AY + grow)) ** 2 + ((x - CX) / (AX + grow)) ** 2 <= 1


def tissue_slide(seed: int = 1) -> np.ndarray:
    """Glass with an ellipse of H&E-like tissue (pink, purple nuclei, texture)."""
    rng = np.random.default_rng(seed)
    pixels = glass(H, W, seed)
    texture = _tile(rng.normal(0, 10, (256, 256, 3)), H, W)
    nuclei = _tile(rng.random((256, 256)) < 0.25, H, W)
    colour = np.where(nuclei[..., None], (115, 65, 160), (210, 125, 190)) + texture
    blob = ellipse(H, W)
    pixels[blob] = np.clip(colour[blob], 0, 255).astype(np.uint8)
    return pixels


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """(path of a zlib pyramidal TIFF at 4 µm/px, its level-0 pixels)."""
    pixels = tissue_slide()
    path = tmp_path_factory.mktemp("slides") / "S1.tif"
    write_array_pyramid(path, pixels, MPP, n_levels=3, compression="zlib")
    return path, pixels


def _wsi(*args) -> int:
    return import_wsi.main([str(a) for a in args] + ["--quiet"])


@pytest.fixture(scope="module")
def ref_h5(slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "wsi.h5"
    assert _wsi("--slide", slide[0], "--images", "reference", "--out", out) == 0
    return out


@pytest.fixture(scope="module")
def copy_h5(slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("copy") / "wsi.h5"
    assert _wsi("--slide", slide[0], "--images", "copy", "--out", out) == 0
    return out


@pytest.fixture(scope="module")
def small(slide, tmp_path_factory):
    """(path, pixels) of a 500 x 600 px crop of the slide (tissue and glass), its own
    two-level pyramid: for tests that write or rewrite slides."""
    pixels = slide[1][200:700, 100:700].copy()
    path = tmp_path_factory.mktemp("small") / "small.tif"
    write_array_pyramid(path, pixels, MPP, n_levels=2, compression="zlib")
    return path, pixels


def assert_one_error(capsys, rc, out, *needles) -> str:
    """Exit 2, one ``hespot: ...`` message naming each needle, no traceback, no output."""
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err + captured.out, err
    assert err.startswith("hespot: "), err
    assert err.count("hespot: ") == 1, err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert str(needle) in err, f"{needle!r} not in {err!r}"
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if ".tmp." in p.name]
    return err


# --------------------------------------------------------------------------- grid import


def test_grid_spots_lie_on_the_tissue(ref_h5):
    with CanonicalH5(ref_h5) as h5:
        assert h5.train_slides == [] and h5.test_slides == ["S1"]
        t = h5.spots("S1")
        assert t.split == "Test" and t.Y is None and t.cell_types == ()
        assert set(t.extra) == {"spot_id", "array_row", "array_col"}
        assert h5.pixel_size_um("S1") == pytest.approx(MPP)
    full = lay_grid((H, W), MPP, GridSpec.parse("visium"))
    n_in_blob = int(inside(full.x, full.y).sum())
    assert 0.9 * n_in_blob <= len(t) <= 1.1 * n_in_blob
    # every spot kept is on (or within a spot radius of) the tissue ...
    assert inside(t.x, t.y, grow=SPOT_R).all()
    # ... and every grid spot well inside the tissue was kept
    deep = inside(full.x, full.y, grow=-(SPOT_R + 4))
    kept = set(zip(t.x.round(6), t.y.round(6), strict=True))
    assert all((x, y) in kept
               for x, y in zip(full.x[deep].round(6), full.y[deep].round(6), strict=True))
    # the stored grid coordinates are the laid grid's
    pos = {(r, c): (x, y) for r, c, x, y in zip(full.array_row, full.array_col, full.x,
                                                 full.y, strict=True)}
    for r, c, x, y, sid in zip(t.extra["array_row"], t.extra["array_col"], t.x, t.y,
                               t.extra["spot_id"], strict=True):
        assert pos[int(r), int(c)] == pytest.approx((x, y))
        assert sid == f"r{r}_c{c}"
    assert (t.extra["array_col"] % 2 == t.extra["array_row"] % 2).all()


def test_image_referenced_and_tissue_stored(ref_h5, slide):
    path, pixels = slide
    with CanonicalH5(ref_h5) as h5:
        ref = h5.image_ref("S1")
        assert ref is not None
        assert ref.reader == "tifffile"  # auto: generic pyramidal TIFFs go to tifffile
        assert (ref.height, ref.width) == (H, W)
        assert ref.pixel_size_um == pytest.approx(MPP)
        assert ref.image_relpath and ref.image_path == str(path.resolve())
        image = h5.image("S1")
        assert image.reader == "tifffile"
        assert len(image.levels) == 3
        assert h5.image_shape("S1") == (H, W, 3)
        np.testing.assert_array_equal(h5.read_window("S1", 500, 700, 600, 934),
                                      pixels[500:700, 600:934])
        assert "images/Test/S1" in h5.h5 and "spots/Test/S1" in h5.h5
        mask = h5.tissue("S1")
        assert mask is not None
        assert mask.share == pytest.approx(np.pi * AX * AY / (H * W), rel=0.05)
        assert mask.on_tissue(np.array([CX, 20.0]), np.array([CY, 20.0])).tolist() == \
            [True, False]
    # the file is not bigger than its spots and mask: the pixels stayed in the TIFF
    assert ref_h5.stat().st_size < path.stat().st_size / 10


def test_check_accepts_the_imported_file(ref_h5, capsys):
    assert check_main([str(ref_h5)]) == 0
    out = capsys.readouterr().out
    assert "0 errors" in out
    assert "slide S1: 0.0% of spots on background" in out


def test_copy_has_the_same_pixels_and_patches(ref_h5, copy_h5, slide):
    path, pixels = slide
    with CanonicalH5(ref_h5) as ref, CanonicalH5(copy_h5) as cp, open_image(path) as tif:
        assert ref.image_ref("S1") is not None
        assert cp.image_ref("S1") is None
        assert cp.image("S1").reader == "hdf5"
        assert cp.pixel_size_um("S1") == pytest.approx(MPP)
        np.testing.assert_array_equal(cp.spots("S1").x, ref.spots("S1").x)
        np.testing.assert_array_equal(cp.spots("S1").y, ref.spots("S1").y)
        for y0, y1, x0, x1 in [(0, H, 0, W), (511, 1025, 300, 301), (H - 1, H, 0, 7)]:
            window = cp.read_window("S1", y0, y1, x0, x1)
            np.testing.assert_array_equal(window, tif.read_window(y0, y1, x0, x1))
            np.testing.assert_array_equal(window, ref.read_window("S1", y0, y1, x0, x1))
        np.testing.assert_array_equal(cp.read_window("S1", 0, H, 0, W), pixels)
        assert ref.fingerprint("S1") != cp.fingerprint("S1")
        a = crop_patches(ref, "S1", 56)
        b = crop_patches(cp, "S1", 56)
        assert a.shape == (len(ref.spots("S1")), 56, 56, 3)
        np.testing.assert_array_equal(a, b)
        assert a.std() > 10  # patches of tissue, not of padding
        mask_ref, mask_cp = ref.tissue("S1"), cp.tissue("S1")
        np.testing.assert_array_equal(mask_ref.mask, mask_cp.mask)


def test_reader_openslide_reference(small, tmp_path):
    """``--reader openslide``: the reference records it and reads through OpenSlide the
    same spots, tissue and pixels as the default reader."""
    outs = {}
    for reader in ("openslide", "auto"):
        outs[reader] = tmp_path / f"{reader}.h5"
        assert _wsi("--slide", small[0], "--images", "reference", "--reader", reader,
                    "--out", outs[reader]) == 0
    with CanonicalH5(outs["openslide"]) as h5, CanonicalH5(outs["auto"]) as auto:
        assert h5.image_ref("small").reader == "openslide"
        assert h5.image("small").reader == "openslide"
        assert auto.image("small").reader == "tifffile"
        assert len(h5.spots("small")) > 10
        np.testing.assert_array_equal(h5.spots("small").x, auto.spots("small").x)
        np.testing.assert_array_equal(h5.tissue("small").mask, auto.tissue("small").mask)
        np.testing.assert_array_equal(crop_patches(h5, "small", 48),
                                      crop_patches(auto, "small", 48))


def test_spots_from_csv(slide, tmp_path):
    path, pixels = slide
    spots = tmp_path / "spots.csv"
    df = pd.DataFrame({"x": [720.0, 900.5, 10.0], "y": [600.0, 500.25, 1190.0],
                       "spot_id": ["a", "b", "c"], "barcode": ["AAA", "CCC", "GGG"],
                       "batch": [1, 2, 1]})
    df.to_csv(spots, index=False)
    out = tmp_path / "s.h5"
    assert _wsi("--slide", path, "--spots", spots, "--name", "mine", "--images", "reference",
                "--mpp", "2.5", "--out", out) == 0
    with CanonicalH5(out) as h5:
        assert h5.test_slides == ["mine"]
        t = h5.spots("mine")
        np.testing.assert_array_equal(t.x, df.x)
        np.testing.assert_array_equal(t.y, df.y)
        np.testing.assert_array_equal(t.spot_ids, df.spot_id)
        np.testing.assert_array_equal(t.extra["barcode"], df.barcode)
        np.testing.assert_array_equal(t.extra["batch"], df.batch)
        assert h5.tissue("mine") is None  # no grid, no mask
        assert h5.pixel_size_um("mine") == 2.5  # --mpp wins over the file's
        assert h5.image("mine").reader == "tifffile"
        patches = crop_patches(h5, "mine", 32)
    np.testing.assert_array_equal(patches[0], pixels[600 - 16:600 + 16, 720 - 16:720 + 16])


def test_square_grid(slide, tmp_path):
    out = tmp_path / "sq.h5"
    assert _wsi("--slide", slide[0], "--grid", "square:50", "--images", "reference",
                "--out", out) == 0
    pitch = 50 / MPP
    with CanonicalH5(out) as h5:
        t = h5.spots("S1")
    assert len(t) == pytest.approx(np.pi * AX * AY / pitch ** 2, rel=0.1)
    assert inside(t.x, t.y, grow=0.55 * pitch / 2).all()
    np.testing.assert_allclose(t.x, pitch / 2 + t.extra["array_col"] * pitch)
    np.testing.assert_allclose(t.y, pitch / 2 + t.extra["array_row"] * pitch)
    assert np.diff(np.unique(t.x)).min() == pytest.approx(pitch)
    assert np.diff(np.unique(t.y)).min() == pytest.approx(pitch)


def _spots_csv(path, x, y):
    pd.DataFrame({"x": x, "y": y}).to_csv(path, index=False)
    return path


def test_two_slides_with_names_and_spots(slide, tmp_path):
    second = tmp_path / "other.tif"
    shutil.copy(slide[0], second)
    a = _spots_csv(tmp_path / "a.csv", [100.0, 200.0], [50.0, 60.0])
    b = _spots_csv(tmp_path / "b.csv", [300.0], [70.0])
    out = tmp_path / "two.h5"
    assert _wsi("--slide", slide[0], "--slide", second, "--spots", a, "--spots", b,
                "--name", "A", "--name", "B", "--images", "reference", "--out", out) == 0
    with CanonicalH5(out) as h5:
        assert h5.test_slides == ["A", "B"]
        np.testing.assert_array_equal(h5.spots("A").x, [100.0, 200.0])
        np.testing.assert_array_equal(h5.spots("B").x, [300.0])
        assert h5.image_ref("B").image_path == str(second.resolve())


# --------------------------------------------------------------------------- bad inputs


def test_no_pixel_size_asks_for_mpp(small, tmp_path, capsys):
    path = tmp_path / "nompp.tif"
    write_array_pyramid(path, small[1], None, n_levels=2, compression="zlib")
    out = tmp_path / "o.h5"
    assert_one_error(capsys, _wsi("--slide", path, "--out", out), out,
                     path, "slide nompp", "pixel size", "--mpp")
    # with --mpp it imports, laying the grid at that pixel size
    assert _wsi("--slide", path, "--mpp", "4", "--images", "reference", "--out", out) == 0
    with CanonicalH5(out) as h5:
        assert h5.pixel_size_um("nompp") == 4.0
        t = h5.spots("nompp")
    assert len(t) > 10
    assert np.diff(np.unique(t.x)).min() == pytest.approx(100 / 4.0 / 2)  # half a pitch


def test_blank_slide_names_the_threshold(tmp_path, capsys):
    path = tmp_path / "blank.tif"
    write_array_pyramid(path, glass(500, 600), MPP, n_levels=2, compression="zlib")
    out = tmp_path / "o.h5"
    assert_one_error(capsys, _wsi("--slide", path, "--out", out), out,
                     path, "slide blank", "field tissue", "threshold")


def test_spots_csv_without_y(small, tmp_path, capsys):
    spots = tmp_path / "spots.csv"
    pd.DataFrame({"x": [10.0, 20.0], "row": [5.0, 6.0]}).to_csv(spots, index=False)
    out = tmp_path / "o.h5"
    assert_one_error(capsys, _wsi("--slide", small[0], "--spots", spots, "--out", out), out,
                     spots, "slide small", "field y")


def test_spots_outside_the_slide(small, tmp_path, capsys):
    spots = _spots_csv(tmp_path / "spots.csv", [10.0, 605.0], [10.0, 20.0])
    out = tmp_path / "o.h5"
    assert_one_error(capsys, _wsi("--slide", small[0], "--spots", spots, "--out", out), out,
                     small[0], "slide small", "field x, y", "x=605.0", "600 x 500 image")


def test_non_numeric_spot_coordinate(small, tmp_path, capsys):
    spots = tmp_path / "spots.csv"
    pd.DataFrame({"x": ["10", "left"], "y": [10.0, 20.0]}).to_csv(spots, index=False)
    out = tmp_path / "o.h5"
    assert_one_error(capsys, _wsi("--slide", small[0], "--spots", spots, "--out", out), out,
                     spots, "slide small", "field x", "'left'")


def test_unsupported_format(tmp_path, capsys):
    path = tmp_path / "slide.bmp"
    path.write_bytes(b"BM" + bytes(200))
    out = tmp_path / "o.h5"
    assert_one_error(capsys, _wsi("--slide", path, "--out", out), out,
                     path, "slide slide", "'.bmp'")


def test_missing_slide(tmp_path, capsys):
    path = tmp_path / "gone.svs"
    out = tmp_path / "o.h5"
    assert_one_error(capsys, _wsi("--slide", path, "--out", out), out, path, "no such file")


def _truncated(small, tmp_path):
    path = tmp_path / "cut.tif"
    data = small[0].read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def test_truncated_slide(small, tmp_path, capsys):
    path = _truncated(small, tmp_path)
    out = tmp_path / "o.h5"
    assert_one_error(capsys, _wsi("--slide", path, "--out", out), out, path, "slide cut",
                     "truncated")


@pytest.mark.parametrize("images", ["copy", "reference"])
def test_truncated_slide_with_spots(small, tmp_path, capsys, images):
    """Spots given, so no tissue detection reads the pixels: the import must still find
    that the slide cannot be read."""
    path = _truncated(small, tmp_path)
    spots = _spots_csv(tmp_path / "spots.csv", [100.0, 500.0], [100.0, 400.0])
    out = tmp_path / "o.h5"
    rc = _wsi("--slide", path, "--spots", spots, "--images", images, "--out", out)
    assert_one_error(capsys, rc, out, path, "slide cut", "truncated")


@pytest.mark.parametrize("grid", ["hex", "square:-1", "square:x"])
def test_bad_grid(small, tmp_path, capsys, grid):
    out = tmp_path / "o.h5"
    assert_one_error(capsys, _wsi("--slide", small[0], "--grid", grid, "--out", out), out,
                     "--grid", repr(grid))


@pytest.mark.parametrize("mpp", ["0", "-2", "500"])
def test_bad_mpp(small, tmp_path, capsys, mpp):
    out = tmp_path / "o.h5"
    assert_one_error(capsys, _wsi("--slide", small[0], "--mpp", mpp, "--out", out), out,
                     "--mpp", mpp)


def test_spots_count_must_match_slides(small, tmp_path, capsys):
    spots = _spots_csv(tmp_path / "spots.csv", [10.0], [10.0])
    out = tmp_path / "o.h5"
    rc = _wsi("--slide", small[0], "--slide", small[0], "--spots", spots, "--out", out)
    assert_one_error(capsys, rc, out, "--spots", "2 slides")


def test_duplicate_slide_names(small, tmp_path, capsys):
    spots = _spots_csv(tmp_path / "spots.csv", [10.0], [10.0])
    out = tmp_path / "o.h5"
    rc = _wsi("--slide", small[0], "--slide", small[0], "--spots", spots, "--spots", spots,
              "--out", out)
    assert_one_error(capsys, rc, out, "slide small", "unique slide names")


def test_failed_import_keeps_the_existing_output(small, tmp_path, capsys):
    out = tmp_path / "o.h5"
    out.write_bytes(b"old")
    assert _wsi("--slide", small[0], "--grid", "hex", "--out", out) == 2
    assert out.read_bytes() == b"old"
    assert capsys.readouterr().err.startswith("hespot: ")


# --------------------------------------------------------------------------- references


def _import_with_spots(small, root):
    """slides/small.tif and h5/s.h5 under ``root``, the slide referenced (relative path
    ../slides/small.tif)."""
    (root / "slides").mkdir(parents=True)
    (root / "h5").mkdir()
    image = root / "slides" / "small.tif"
    shutil.copy(small[0], image)
    spots = _spots_csv(root / "spots.csv", [300.0, 450.0, 100.0], [250.0, 200.0, 300.0])
    out = root / "h5" / "s.h5"
    assert _wsi("--slide", image, "--spots", spots, "--images", "reference", "--out", out) == 0
    return out, image


def _same_file(a, b) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def test_reference_survives_moving_the_folder(small, tmp_path):
    out, image = _import_with_spots(small, tmp_path / "a")
    with CanonicalH5(out) as h5:
        ref = h5.image_ref("small")
        fingerprint = h5.fingerprint("small")
        before = crop_patches(h5, "small", 40)
    assert ref.image_relpath == "../slides/small.tif"
    (tmp_path / "a").rename(tmp_path / "b")
    assert not image.exists()  # the absolute path is gone: only the relative one works
    moved = tmp_path / "b" / "h5" / "s.h5"
    with CanonicalH5(moved) as h5:
        im = h5.image("small")
        assert im.reader == "tifffile"
        assert _same_file(im.path, tmp_path / "b" / "slides" / "small.tif")
        after = crop_patches(h5, "small", 40)
        assert h5.fingerprint("small") == fingerprint
    np.testing.assert_array_equal(after, before)
    np.testing.assert_array_equal(after[0], small[1][250 - 20:250 + 20, 300 - 20:300 + 20])
    assert check_main([str(moved)]) == 0


def test_reference_to_a_deleted_image(small, tmp_path, capsys):
    out, image = _import_with_spots(small, tmp_path)
    image.unlink()
    with CanonicalH5(out) as h5:
        assert h5.image_ref("small") is not None
        assert h5.image_shape("small") == (500, 600, 3)  # from the reference alone
        with pytest.raises(DataError, match="no such file") as exc:
            h5.image("small")
        assert str(image) in str(exc.value) and "slide small" in str(exc.value)
        with pytest.raises(DataError, match="no such file"):
            h5.fingerprint("small")
    capsys.readouterr()
    assert check_main([str(out)]) == 1
    assert str(image) in capsys.readouterr().out


def test_reference_to_a_resized_image_refused(small, tmp_path, capsys):
    out, image = _import_with_spots(small, tmp_path)
    write_array_pyramid(image, small[1][:400, :550], MPP, n_levels=2, compression="zlib")
    with CanonicalH5(out) as h5, pytest.raises(DataError, match="image size") as exc:
        h5.image("small")
    msg = str(exc.value)
    assert "small.tif" in msg and "500 x 600" in msg and "400 x 550" in msg
    assert "slide small" in msg
    assert check_main([str(out)]) == 1
    assert "image size" in capsys.readouterr().out


def test_reference_to_a_changed_image_changes_the_fingerprint(small, tmp_path, caplog):
    out, image = _import_with_spots(small, tmp_path)
    with CanonicalH5(out) as h5:
        before = h5.fingerprint("small")
        assert h5.fingerprint("small") == before  # stable while the file is unchanged
    pixels = small[1].copy()
    pixels[200:300, 250:350] = 0
    write_array_pyramid(image, pixels, MPP, n_levels=2, compression="zlib")
    with caplog.at_level(logging.WARNING, logger="hespot"), CanonicalH5(out) as h5:
        assert h5.fingerprint("small") != before
    assert "changed since import" in caplog.text


def test_check_finds_a_truncated_referenced_image(small, tmp_path, capsys):
    out, image = _import_with_spots(small, tmp_path)
    data = image.read_bytes()
    image.write_bytes(data[:len(data) // 2])  # same header, same size: tiles lost
    capsys.readouterr()
    rc = check_main([str(out)])
    report = capsys.readouterr().out
    assert rc == 1, report
    assert str(image) in report


# --------------------------------------------------------------------------- import-table


def test_import_table_reference_equals_copy(small, tmp_path):
    """A manifest naming TIFF slides: referenced or copied, the same patches."""
    path, pixels = small
    h, w = pixels.shape[:2]
    write_array_pyramid(tmp_path / "T1.tif", pixels[::-1, ::-1].copy(), None, n_levels=2,
                        compression="zlib")
    shutil.copy(path, tmp_path / "X1.tif")
    rng = np.random.default_rng(0)
    rows = []
    for name, split in (("T1", "train"), ("X1", "test")):
        df = pd.DataFrame({"x": rng.uniform(0, w - 1, 12).round(2),
                           "y": rng.uniform(0, h - 1, 12).round(2),
                           "spot_id": [f"{name}_{i}" for i in range(12)]})
        if split == "train":
            df[["a", "b"]] = rng.dirichlet([1, 1], 12)
        df.to_csv(tmp_path / f"{name}.csv", index=False)
        rows.append({"slide": name, "image": f"{name}.tif", "spots": f"{name}.csv",
                     "split": split})
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    outs = {}
    for mode in ("reference", "copy"):
        outs[mode] = tmp_path / f"{mode}.h5"
        assert import_table.main(["--manifest", str(manifest), "--out", str(outs[mode]),
                                  "--images", mode, "--quiet"]) == 0
    with CanonicalH5(outs["reference"]) as ref, CanonicalH5(outs["copy"]) as cp:
        assert ref.train_slides == cp.train_slides == ["T1"]
        assert ref.cell_types == cp.cell_types == ("a", "b")
        for name in ("T1", "X1"):
            assert ref.image_ref(name) is not None and cp.image_ref(name) is None
            assert ref.image(name).reader == "tifffile"
            for size in (33, 64):  # odd and even; some overhang the border (reflected)
                np.testing.assert_array_equal(crop_patches(ref, name, size),
                                              crop_patches(cp, name, size))
        assert ref.pixel_size_um("X1") == cp.pixel_size_um("X1") == pytest.approx(MPP)
        assert ref.pixel_size_um("T1") is None and cp.pixel_size_um("T1") is None
    for out in outs.values():
        assert check_main([str(out)]) == 0


def test_patch_size_in_um_without_pixel_size_is_refused_before_work(small, tmp_path, capsys):
    """A slide without a pixel size imports with --spots (no grid needs one), and stage 1
    with --patch-um then stops at once, naming the file, slide and field."""
    import embed.run

    path = tmp_path / "nompp.tif"
    write_array_pyramid(path, small[1], None, n_levels=2, compression="zlib")
    spots = _spots_csv(tmp_path / "spots.csv", [100.0, 300.0], [100.0, 200.0])
    out = tmp_path / "nompp.h5"
    assert _wsi("--slide", path, "--spots", spots, "--out", out) == 0
    with CanonicalH5(out) as h5:
        assert h5.pixel_size_um("nompp") is None
    store = tmp_path / "e.zarr"
    rc = embed.run.main(["--h5", str(out), "--store", str(store), "--backbones",
                         "tiny_random", "--patch-um", "100", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.count("hespot: ") == 1 and "Traceback" not in err, err
    for needle in (str(out), "slide nompp", "pixel_size_um", "--mpp"):
        assert needle in err, err
    assert not store.exists() or not any(store.rglob("features"))
