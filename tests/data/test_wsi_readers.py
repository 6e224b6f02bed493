"""Slide image readers (data.wsi): which reader opens which file, pyramid levels, windows
equal to the pixels written, pixel size from the file's metadata, thumbnails, best_level
and the errors of missing, unsupported, truncated and non-8-bit files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from data.errors import ConfigError, DataError
from data.wsi.pyramid import box_downsample, write_array_pyramid
from data.wsi.readers import choose_reader, open_image

H, W = 600, 820  # not multiples of the 256 px tile: edge tiles are padded
WINDOWS = [(0, 600, 0, 820), (10, 137, 250, 517), (255, 257, 255, 257), (599, 600, 819, 820)]


def _image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    """Smooth colour gradients plus noise: jpeg-friendly but every pixel different."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([yy * 200 / h, xx * 200 / w, (yy + xx) * 100 / (h + w)], axis=2)
    return np.clip(base + 30 + rng.integers(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


IMAGE = _image()


@pytest.fixture(scope="module")
def pyramids(tmp_path_factory) -> dict:
    """{(compression, mpp): path} of 3-level pyramidal tiled TIFFs of IMAGE."""
    root = tmp_path_factory.mktemp("pyr")
    out = {}
    for comp in ("zlib", "jpeg", "none"):
        for mpp in (0.5, None):
            path = root / f"p_{comp}_{mpp}.tif"
            write_array_pyramid(path, IMAGE, mpp, n_levels=3, compression=comp)
            out[comp, mpp] = path
    return out


def _levels(image) -> list[tuple[int, int, float]]:
    return [(lv.height, lv.width, lv.downsample) for lv in image.levels]


EXPECTED_LEVELS = [(600, 820, 1.0), (300, 410, 2.0), (150, 205, 4.0)]


# --------------------------------------------------------------------------- choosing


def aperio_tiff(path, image: np.ndarray = IMAGE, mpp: float = 0.499):
    """A tiled two-level TIFF whose description OpenSlide reads as Aperio's (SVS)."""
    h, w = image.shape[:2]
    with tifffile.TiffWriter(path) as tw:
        tw.write(image, tile=(256, 256), photometric="rgb", compression="zlib", metadata=None,
                 description=f"Aperio Image Library v12.0.15\r\n{w}x{h} [0,0 {w}x{h}] "
                 f"(256x256) RAW|AppMag = 20|MPP = {mpp}|Filename = test")
        tw.write(box_downsample(image, 2), tile=(256, 256), photometric="rgb",
                 compression="zlib", metadata=None,
                 description=f"Aperio Image Library v12.0.15\r\n{w}x{h} -> {w // 2}x{h // 2}")
    return path


def test_choose_reader_by_kind_of_file(tmp_path, pyramids):
    strip = tmp_path / "strip.tif"
    tifffile.imwrite(strip, IMAGE, photometric="rgb")
    ome = tmp_path / "slide.ome.tif"
    tifffile.imwrite(ome, IMAGE, photometric="rgb", ome=True,
                     metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    png = tmp_path / "slide.png"
    Image.fromarray(IMAGE).save(png)
    jpg = tmp_path / "slide.JPG"
    Image.fromarray(IMAGE).save(jpg, format="JPEG")
    svs = aperio_tiff(tmp_path / "slide.svs")
    vendor_tif = aperio_tiff(tmp_path / "vendor.tif")
    # generic tiled pyramids: tifffile (faster windows than OpenSlide, data.wsi.readers)
    assert choose_reader(pyramids["zlib", 0.5]) == "tifffile"
    assert choose_reader(pyramids["jpeg", None]) == "tifffile"
    assert choose_reader(strip) == "tifffile"
    assert choose_reader(ome) == "tifffile"
    # a vendor's format OpenSlide recognises: OpenSlide, whatever the suffix
    assert choose_reader(svs) == "openslide"
    assert choose_reader(vendor_tif) == "openslide"
    assert choose_reader(png) == "pil"
    assert choose_reader(jpg) == "pil"
    for path, reader in [(pyramids["zlib", 0.5], "tifffile"), (strip, "tifffile"),
                         (ome, "tifffile"), (svs, "openslide"), (png, "pil")]:
        with open_image(path, "S1") as image:
            assert image.reader == reader
            assert image.slide == "S1"
            assert image.path == str(path)
            assert image.shape == (H, W)


def test_vendor_slide_through_openslide(tmp_path):
    svs = aperio_tiff(tmp_path / "slide.svs")
    with open_image(svs) as image:
        assert image.reader == "openslide"
        assert _levels(image) == [(600, 820, 1.0), (300, 410, 2.0)]
        assert image.pixel_size_um == pytest.approx(0.499)  # Aperio's MPP
        np.testing.assert_array_equal(image.read_window(*WINDOWS[1]), IMAGE[10:137, 250:517])
        np.testing.assert_array_equal(image.read_level(1, 0, 300, 0, 410),
                                      box_downsample(IMAGE, 2))
    with open_image(svs, reader="tifffile") as image:  # Aperio MPP read by tifffile too
        assert image.pixel_size_um == pytest.approx(0.499)
        np.testing.assert_array_equal(image.read_window(*WINDOWS[1]), IMAGE[10:137, 250:517])


def test_unknown_reader_name_is_a_config_error(pyramids):
    with pytest.raises(ConfigError, match="unknown image reader 'vips'"):
        open_image(pyramids["zlib", 0.5], reader="vips")


# --------------------------------------------------------------------------- pixels


@pytest.mark.parametrize("comp", ["zlib", "none"])
def test_lossless_pyramid_windows_equal_source(pyramids, comp):
    path = pyramids[comp, 0.5]
    levels = [box_downsample(IMAGE, 2 ** k) for k in range(3)]
    for reader in ("openslide", "tifffile"):
        with open_image(path, reader=reader) as image:
            assert image.reader == reader
            assert _levels(image) == EXPECTED_LEVELS
            for y0, y1, x0, x1 in WINDOWS:
                got = image.read_window(y0, y1, x0, x1)
                assert got.dtype == np.uint8 and got.shape == (y1 - y0, x1 - x0, 3)
                np.testing.assert_array_equal(got, IMAGE[y0:y1, x0:x1])
            for k in (1, 2):
                lv = image.levels[k]
                np.testing.assert_array_equal(image.read_level(k, 0, lv.height, 0, lv.width),
                                              levels[k])
                np.testing.assert_array_equal(image.read_level(k, 7, 90, 33, 140),
                                              levels[k][7:90, 33:140])


def test_jpeg_pyramid_close_to_source_and_readers_agree(pyramids):
    path = pyramids["jpeg", 0.5]
    with open_image(path, reader="openslide") as osl, open_image(path, reader="tifffile") as tf:
        assert _levels(osl) == _levels(tf) == EXPECTED_LEVELS
        for k, (y0, y1, x0, x1) in [(0, WINDOWS[0]), (0, WINDOWS[1]), (1, (5, 290, 3, 400)),
                                    (2, (0, 150, 0, 205))]:
            a = osl.read_level(k, y0, y1, x0, x1).astype(int)
            b = tf.read_level(k, y0, y1, x0, x1).astype(int)
            src = box_downsample(IMAGE, 2 ** k)[y0:y1, x0:x1].astype(int)
            assert a.shape == b.shape == src.shape
            assert np.abs(a - src).mean() < 6, k  # lossy, but the same picture
            assert np.abs(a - b).max() <= 2, k  # the same tiles decoded twice


def test_strip_tiff_and_png_windows(tmp_path):
    strip = tmp_path / "strip.tif"
    tifffile.imwrite(strip, IMAGE, photometric="rgb", rowsperstrip=64)
    png = tmp_path / "slide.png"
    Image.fromarray(IMAGE).save(png)
    for path in (strip, png):
        with open_image(path) as image:
            assert _levels(image) == [(600, 820, 1.0)]
            for y0, y1, x0, x1 in WINDOWS:
                np.testing.assert_array_equal(image.read_window(y0, y1, x0, x1),
                                              IMAGE[y0:y1, x0:x1])


def test_grayscale_tiff_read_as_rgb(tmp_path):
    path = tmp_path / "gray.tif"
    tifffile.imwrite(path, IMAGE[..., 1])
    with open_image(path) as image:
        got = image.read_window(3, 40, 5, 70)
    np.testing.assert_array_equal(got, np.repeat(IMAGE[3:40, 5:70, 1:2], 3, axis=2))


# --------------------------------------------------------------------------- pixel size


@pytest.mark.parametrize("reader", ["openslide", "tifffile"])
def test_pixel_size_from_resolution_tags(pyramids, reader):
    with open_image(pyramids["zlib", 0.5], reader=reader) as image:
        assert image.pixel_size_um == pytest.approx(0.5)
    with open_image(pyramids["zlib", None], reader=reader) as image:
        assert image.pixel_size_um is None
    with open_image(pyramids["zlib", None], reader=reader, mpp=0.25) as image:
        assert image.pixel_size_um == 0.25
    with open_image(pyramids["zlib", 0.5], reader=reader, mpp=0.25) as image:
        assert image.pixel_size_um == 0.25  # --mpp wins over the file


def test_pixel_size_from_ome(tmp_path):
    ome = tmp_path / "slide.ome.tif"
    tifffile.imwrite(ome, IMAGE, photometric="rgb", ome=True,
                     metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    with open_image(ome) as image:
        assert image.reader == "tifffile"
        assert image.pixel_size_um == pytest.approx(0.5)
    nm = tmp_path / "nm.ome.tif"
    tifffile.imwrite(nm, IMAGE, photometric="rgb", ome=True,
                     metadata={"PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 250, "PhysicalSizeYUnit": "nm"})
    with open_image(nm) as image:
        assert image.pixel_size_um == pytest.approx(0.25)


def test_pixel_size_strip_tiff_centimetre_tags(tmp_path):
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, IMAGE, photometric="rgb", resolution=(1e4 / 0.8, 1e4 / 0.8),
                     resolutionunit="CENTIMETER")
    with open_image(path) as image:
        assert image.reader == "tifffile"
        assert image.pixel_size_um == pytest.approx(0.8)


@pytest.mark.parametrize("tile,reader", [(None, "auto"), ((256, 256), "auto"),
                                         ((256, 256), "openslide")])
def test_72_dpi_default_tag_is_ignored(tmp_path, tile, reader):
    path = tmp_path / "dpi.tif"
    tifffile.imwrite(path, IMAGE, photometric="rgb", resolution=(72, 72),
                     resolutionunit="INCH", tile=tile)
    with open_image(path, reader=reader) as image:
        assert image.reader == ("tifffile" if reader == "auto" else reader)
        assert image.pixel_size_um is None  # 25400 / 72 = 353 µm: a default, not a scan


def test_inch_tags_of_a_scan_are_used(tmp_path):
    path = tmp_path / "inch.tif"
    tifffile.imwrite(path, IMAGE, photometric="rgb", resolution=(50_800, 50_800),
                     resolutionunit="INCH")
    with open_image(path) as image:
        assert image.pixel_size_um == pytest.approx(0.5)


def test_png_has_no_pixel_size_but_takes_override(tmp_path):
    png = tmp_path / "s.png"
    Image.fromarray(IMAGE).save(png)
    with open_image(png) as image:
        assert image.pixel_size_um is None
    with open_image(png, mpp=0.69) as image:
        assert image.pixel_size_um == 0.69


@pytest.mark.parametrize("mpp", [0.0, -1.0, 1000.0])
def test_implausible_mpp_override_refused(pyramids, mpp):
    with pytest.raises(ConfigError, match="--mpp"):
        open_image(pyramids["zlib", 0.5], mpp=mpp)


# --------------------------------------------------------------------------- thumbnail, levels


@pytest.mark.parametrize("reader", ["openslide", "tifffile"])
def test_thumbnail_shape_scale_and_values(pyramids, reader):
    with open_image(pyramids["zlib", 0.5], reader=reader) as image:
        # 300 px: read from level 1 (410 px wide, the coarsest >= 300), factor 2
        thumb, (fy, fx) = image.thumbnail(300)
        assert thumb.dtype == np.uint8
        assert thumb.shape == (150, 205, 3)
        assert (fy, fx) == (4.0, 4.0)  # level-0 pixels per thumbnail pixel
        expected = box_downsample(box_downsample(IMAGE, 2), 2)
        assert np.abs(thumb.astype(int) - expected).max() <= 1
        # 200 px: from level 2 (205 px, the coarsest >= 200), factor 2
        thumb, scale = image.thumbnail(200)
        assert thumb.shape == (75, 102, 3) and scale == (8.0, 8.0)
        assert max(thumb.shape[:2]) <= 200
        # bigger than the slide: level 0, factor 1, the slide itself
        full, scale = image.thumbnail(5000)
        assert scale == (1.0, 1.0)
        np.testing.assert_array_equal(full, IMAGE)
        # the coarsest level, exactly its size
        small, scale = image.thumbnail(205)
        assert scale == (4.0, 4.0)
        np.testing.assert_array_equal(small, box_downsample(IMAGE, 4))


def test_thumbnail_band_rows_do_not_change_it(pyramids):
    with open_image(pyramids["zlib", 0.5]) as image:
        a, sa = image.thumbnail(100, band_rows=512)
        b, sb = image.thumbnail(100, band_rows=7)
    assert sa == sb
    np.testing.assert_array_equal(a, b)


def test_best_level(pyramids):
    with open_image(pyramids["zlib", 0.5]) as image:
        assert image.best_level(0.5) == 0
        assert image.best_level(1.0) == 0
        assert image.best_level(1.99) == 0
        assert image.best_level(2.0) == 1
        assert image.best_level(3.9) == 1
        assert image.best_level(4.0) == 2
        assert image.best_level(100.0) == 2


def test_best_level_single_level(tmp_path):
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, IMAGE, photometric="rgb")
    with open_image(path) as image:
        assert image.best_level(8.0) == 0


# --------------------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.tif"
    for reader in ("auto", "openslide", "tifffile", "pil"):
        with pytest.raises(DataError, match="no such file") as exc:
            open_image(missing, "S9", reader=reader)
        assert str(missing) in str(exc.value) and "slide S9" in str(exc.value)


def test_unsupported_suffix(tmp_path):
    bmp = tmp_path / "slide.bmp"
    Image.fromarray(IMAGE).save(bmp)
    with pytest.raises(DataError) as exc:
        open_image(bmp)
    msg = str(exc.value)
    assert str(bmp) in msg and "'.bmp'" in msg and ".tif" in msg


def _truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _read_everything(path, reader: str = "auto") -> None:
    with open_image(path, reader=reader) as image:
        for k, lv in enumerate(image.levels):
            image.read_level(k, 0, lv.height, 0, lv.width)


@pytest.mark.parametrize("comp", ["zlib", "jpeg"])
@pytest.mark.parametrize("reader", ["auto", "openslide", "tifffile"])
def test_truncated_pyramid_is_a_data_error(tmp_path, comp, reader):
    path = tmp_path / f"cut_{comp}.tif"
    write_array_pyramid(path, IMAGE, 0.5, compression=comp)
    _truncate(path)
    with pytest.raises(DataError) as exc:  # at opening or at reading
        _read_everything(path, reader)
    assert str(path) in str(exc.value)


def test_strip_tiff_through_openslide_is_a_data_error(tmp_path):
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, IMAGE, photometric="rgb")
    with pytest.raises(DataError, match="a slide OpenSlide reads") as exc:
        open_image(path, reader="openslide")
    assert str(path) in str(exc.value)


def test_truncated_strip_tiff_is_a_data_error(tmp_path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, IMAGE, photometric="rgb")
    _truncate(path)
    with pytest.raises(DataError, match="truncated") as exc:
        _read_everything(path)
    assert str(path) in str(exc.value)


def test_truncated_png_is_a_data_error(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(IMAGE).save(path)
    _truncate(path)
    with pytest.raises(DataError) as exc:
        _read_everything(path)
    assert str(path) in str(exc.value)


def test_not_a_tiff_at_all(tmp_path):
    path = tmp_path / "text.tif"
    path.write_text("not an image\n" * 100)
    with pytest.raises(DataError) as exc:
        _read_everything(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("tile", [None, (256, 256)])
@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_non_uint8_tiff(tmp_path, dtype, tile):
    path = tmp_path / "deep.tif"
    tifffile.imwrite(path, IMAGE.astype(dtype) * 257, photometric="rgb", tile=tile)
    with pytest.raises(DataError, match="image dtype") as exc:
        open_image(path, "S2")
    msg = str(exc.value)
    assert str(path) in msg and "uint8" in msg and np.dtype(dtype).name in msg
