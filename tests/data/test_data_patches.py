"""Patch cropping (data.patches): equal to plain numpy slicing / padding of the full image."""

from __future__ import annotations

import numpy as np
import pytest

from data.errors import DataError
from data.h5 import CanonicalH5, SlideRecord, write_h5
from data.patches import PatchCropper, crop_patches, iter_patch_batches, resolve_patch_px
from data.spots import make_spot_table

H, W = 70, 90
# corners, edges, near-edges and the middle (x = column, y = row)
BORDER_X = np.array([0.0, W - 1, 0.0, W - 1, 3.2, 88.0, 45.0, 0.4, 60.0, 1.0])
BORDER_Y = np.array([0.0, H - 1, H - 1, 0.0, 50.0, 2.0, 35.0, 30.0, 68.6, 1.0])


@pytest.fixture(scope="module")
def border_h5(tmp_path_factory):
    image = np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)
    table = make_spot_table(BORDER_X, BORDER_Y)
    path = write_h5(tmp_path_factory.mktemp("patch") / "border.h5",
                    [SlideRecord("B", "Test", table, image)])
    return path, image


def _expected(image, x, y, size, mode, value=0):
    """Pad the whole image, then slice: the reference for every crop."""
    p = size + 2
    kwargs = {"constant_values": value} if mode == "constant" else {}
    padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode=mode, **kwargs)
    half = size // 2
    out = []
    for xi, yi in zip(x, y, strict=True):
        top = int(np.round(yi)) - half + p
        left = int(np.round(xi)) - half + p
        out.append(padded[top:top + size, left:left + size])
    return np.stack(out)


def _full_image(h5, slide):
    h, w = h5.image_shape(slide)[:2]
    return h5.read_window(slide, 0, h, 0, w)


@pytest.mark.parametrize("size", [16, 32])
def test_interior_patches_equal_slicing(synthetic_h5, size):
    with CanonicalH5(synthetic_h5) as h5:
        slide = h5.train_slides[0]
        image = _full_image(h5, slide)
        table = h5.spots(slide)
        patches = crop_patches(h5, slide, size)
    assert patches.dtype == np.uint8
    assert patches.shape == (len(table), size, size, 3)
    half = size // 2
    for i, (x, y) in enumerate(zip(table.x, table.y, strict=True)):
        r, c = int(np.round(y)) - half, int(np.round(x)) - half
        assert r >= 0 and c >= 0 and r + size <= image.shape[0] and c + size <= image.shape[1]
        np.testing.assert_array_equal(patches[i], image[r:r + size, c:c + size])


def test_crop_patches_indices_subset(synthetic_h5):
    with CanonicalH5(synthetic_h5) as h5:
        slide = h5.test_slides[0]
        all_patches = crop_patches(h5, slide, 24)
        idx = np.array([7, 2, 30])
        np.testing.assert_array_equal(crop_patches(h5, slide, 24, indices=idx), all_patches[idx])


@pytest.mark.parametrize("mode", ["reflect", "constant", "edge"])
@pytest.mark.parametrize("size", [8, 15, 16, 33, 64])
def test_border_patches_equal_padded_image(border_h5, mode, size):
    path, image = border_h5
    expected = _expected(image, BORDER_X, BORDER_Y, size, mode)
    with CanonicalH5(path) as h5:
        together = PatchCropper(h5, "B", size, pad_mode=mode).crop(BORDER_X, BORDER_Y)
        np.testing.assert_array_equal(together, expected)
        # one spot at a time: the smallest windows, the hardest case for reflection
        for i in range(len(BORDER_X)):
            alone = PatchCropper(h5, "B", size, pad_mode=mode).crop(BORDER_X[i:i + 1],
                                                                     BORDER_Y[i:i + 1])
            np.testing.assert_array_equal(alone[0], expected[i], err_msg=f"spot {i}")


def test_patch_larger_than_image(border_h5):
    path, image = border_h5
    size = 100  # wider than the 70-row image
    x, y = np.array([45.0]), np.array([35.0])
    with CanonicalH5(path) as h5:
        for mode in ("reflect", "constant"):
            got = PatchCropper(h5, "B", size, pad_mode=mode).crop(x, y)
            np.testing.assert_array_equal(got, _expected(image, x, y, size, mode))


def test_constant_pad_value(border_h5):
    path, image = border_h5
    with CanonicalH5(path) as h5:
        got = PatchCropper(h5, "B", 20, pad_mode="constant", pad_value=255).crop(
            BORDER_X, BORDER_Y)
    np.testing.assert_array_equal(got, _expected(image, BORDER_X, BORDER_Y, 20, "constant", 255))
    assert got[0, 0, 0, 0] == 255


def test_order_preserved_for_unsorted_spots(synthetic_h5):
    with CanonicalH5(synthetic_h5) as h5:
        slide = h5.train_slides[1]
        table = h5.spots(slide)
        cropper = PatchCropper(h5, slide, 20)
        ordered = cropper.crop(table.x, table.y)
        perm = np.random.default_rng(4).permutation(len(table))
        shuffled = cropper.crop(table.x[perm], table.y[perm])
        reversed_ = cropper.crop(table.x[::-1], table.y[::-1])
    np.testing.assert_array_equal(shuffled, ordered[perm])
    np.testing.assert_array_equal(reversed_, ordered[::-1])


@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_band_size_does_not_change_output(synthetic_h5, border_h5, mode):
    with CanonicalH5(synthetic_h5) as h5:
        slide = h5.train_slides[0]
        t = h5.spots(slide)
        small = PatchCropper(h5, slide, 32, pad_mode=mode, band_px=1).crop(t.x, t.y)
        mid = PatchCropper(h5, slide, 32, pad_mode=mode, band_px=100).crop(t.x, t.y)
        large = PatchCropper(h5, slide, 32, pad_mode=mode, band_px=10_000).crop(t.x, t.y)
    np.testing.assert_array_equal(small, large)
    np.testing.assert_array_equal(mid, large)
    path, _ = border_h5
    with CanonicalH5(path) as h5:
        small = PatchCropper(h5, "B", 40, pad_mode=mode, band_px=1).crop(BORDER_X, BORDER_Y)
        large = PatchCropper(h5, "B", 40, pad_mode=mode, band_px=10_000).crop(BORDER_X, BORDER_Y)
    np.testing.assert_array_equal(small, large)


def test_empty_and_batches(synthetic_h5):
    with CanonicalH5(synthetic_h5) as h5:
        slide = h5.test_slides[0]
        empty = PatchCropper(h5, slide, 12).crop(np.array([]), np.array([]))
        assert empty.shape == (0, 12, 12, 3) and empty.dtype == np.uint8
        full = crop_patches(h5, slide, 12)
        batches = list(iter_patch_batches(h5, slide, 12, batch_size=10, start=5))
    idx = np.concatenate([i for i, _ in batches])
    np.testing.assert_array_equal(idx, np.arange(5, len(full)))
    np.testing.assert_array_equal(np.concatenate([p for _, p in batches]), full[5:])


def test_bad_pad_mode(synthetic_h5):
    with CanonicalH5(synthetic_h5) as h5, pytest.raises(ValueError, match="pad_mode"):
        PatchCropper(h5, h5.train_slides[0], 8, pad_mode="wrap")


def test_resolve_patch_px():
    assert resolve_patch_px(224) == 224
    assert resolve_patch_px(None, size_um=100.0, pixel_size_um=0.5) == 200
    assert resolve_patch_px(64, size_um=110.0, pixel_size_um=0.69) == round(110 / 0.69)
    assert resolve_patch_px(size_um=0.1, pixel_size_um=1.0) == 1
    with pytest.raises(DataError, match="pixel_size_um") as info:
        resolve_patch_px(224, size_um=100.0, pixel_size_um=None, where="file.h5")
    assert info.value.problems[0].file == "file.h5"
    with pytest.raises(DataError):
        resolve_patch_px(224, size_um=100.0, pixel_size_um=0.0)
    with pytest.raises(ValueError):
        resolve_patch_px(0)
    with pytest.raises(ValueError):
        resolve_patch_px(None)
