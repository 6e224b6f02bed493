"""PIL's decompression-bomb guard is off only while hespot opens a JPEG/PNG (images over
its 89 Mpx are whole-slide images; hespot bounds their size itself), and is restored
after: no process-wide state is left behind, and hespot's own refusal still holds."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data.errors import DataError
from data.images import load_image, open_pil
from data.wsi import pil_image


@pytest.fixture
def png(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    path = tmp_path / "slide.png"
    Image.fromarray(pixels).save(path)
    return path, pixels


def test_pil_alone_refuses_the_image_under_a_small_guard(png, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    with pytest.raises(Image.DecompressionBombError), Image.open(png[0]):
        pass


def test_hespot_opens_it_and_restores_the_guard(png, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    path, pixels = png
    np.testing.assert_array_equal(load_image(path), pixels)
    assert Image.MAX_IMAGE_PIXELS == 1_000
    image = pil_image.PilImage(str(path), "S")
    assert image.shape == (200, 300)
    np.testing.assert_array_equal(image.read_level(0, 10, 20, 30, 50), pixels[10:20, 30:50])
    assert Image.MAX_IMAGE_PIXELS == 1_000
    with open_pil(path) as im:
        assert im.size == (300, 200)
        assert Image.MAX_IMAGE_PIXELS == 1_000   # restored once the header is read
    assert Image.MAX_IMAGE_PIXELS == 1_000


def test_the_guard_is_restored_when_the_open_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match="readable"):
        pil_image.PilImage(str(bad), "S")
    assert Image.MAX_IMAGE_PIXELS == 1_000


def test_hespot_still_refuses_a_bomb_from_its_header(png, monkeypatch):
    monkeypatch.setattr(pil_image, "MAX_PIXELS", 300 * 200 - 1)
    with pytest.raises(DataError, match="image size"):
        pil_image.PilImage(str(png[0]), "S")
