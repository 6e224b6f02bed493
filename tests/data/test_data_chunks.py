"""Fast chunk windows (data.chunks): equal to h5py slicing on every layout they accept,
fill values for chunks never written, and the layouts they leave to h5py."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from data.chunks import ChunkWindows, supports
from data.h5 import CanonicalH5

WINDOWS = [(0, 100, 0, 90), (5, 70, 3, 89), (31, 33, 31, 33), (99, 100, 0, 1), (64, 96, 64, 90),
           (10, 10, 0, 5)]


def _dataset(tmp_path, **kw):
    f = h5py.File(tmp_path / "x.h5", "w")
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, (100, 90, 3), dtype=np.uint8)
    data[40:, :] //= 8  # compressible part
    d = f.create_dataset("img", data=data, chunks=(32, 32, 3), **kw)
    return f, d


@pytest.mark.parametrize("kw", [dict(compression="gzip", shuffle=True),
                                dict(compression="gzip", compression_opts=9)])
@pytest.mark.parametrize("workers", [1, 2])
def test_windows_equal_h5py(tmp_path, kw, workers):
    f, d = _dataset(tmp_path, **kw)
    assert supports(d)
    w = ChunkWindows(d, cache_mb=0, workers=workers)  # one cached chunk: same pixels
    for y0, y1, x0, x1 in WINDOWS + WINDOWS:
        np.testing.assert_array_equal(w.read(y0, y1, x0, x1), d[y0:y1, x0:x1])
    f.close()


def test_unwritten_chunks_read_as_fill_value(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        d = f.create_dataset("img", shape=(70, 70, 3), chunks=(32, 32, 3), dtype="u1",
                             compression="gzip", fillvalue=7)
        d[:10, :10] = 200
        np.testing.assert_array_equal(ChunkWindows(d).read(0, 70, 0, 70), d[()])


def test_window_outside_the_image_is_an_error(tmp_path):
    f, d = _dataset(tmp_path, compression="gzip")
    w = ChunkWindows(d)
    for box in [(90, 110, 0, 10), (-1, 5, 0, 5), (0, 5, 80, 91), (5, 4, 0, 5)]:
        with pytest.raises(ValueError, match="not inside the image of 100 x 90"):
            w.read(*box)
    f.close()


@pytest.mark.parametrize("kw, dtype", [(dict(compression="lzf"), "u1"), ({}, "u1"),
                                       (dict(compression="gzip"), "f4")])
def test_other_layouts_left_to_h5py(tmp_path, kw, dtype):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        d = f.create_dataset("img", shape=(40, 40, 3), chunks=(32, 32, 3), dtype=dtype, **kw)
        assert not supports(d)
        assert not supports(f.create_dataset("plain", shape=(4, 4, 3), dtype="u1"))
        assert not supports(f.create_dataset("split", shape=(40, 40, 3), dtype="u1",
                                             chunks=(32, 32, 1), compression="gzip"))


def test_canonical_reader_uses_fast_path(synthetic_h5):
    with CanonicalH5(synthetic_h5) as h5:
        slide = h5.train_slides[0]
        want = h5.h5[f"images/Train/{slide}"][10:300, 20:250]
        np.testing.assert_array_equal(h5.read_window(slide, 10, 300, 20, 250), want)
        assert h5.image(slide)._windows is not None
