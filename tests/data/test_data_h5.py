"""The canonical HDF5 reader and atomic writer (data.h5) on tiny generated data."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from data.errors import DataError
from data.h5 import CanonicalH5, SlideRecord, write_h5
from data.spots import make_spot_table
from tests.helpers import assert_slides

TYPES = ("T cells", "B cells", "Tumour")


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Two train slides, one test slide; returns (path, the arrays written)."""
    rng = np.random.default_rng(1)
    written = {}
    records = []
    for i, (name, split, (h, w)) in enumerate(
            [("A1", "Train", (40, 60)), ("B2", "Train", (33, 20)), ("Z9", "Test", (25, 31))]):
        n = 6 + i
        x = rng.uniform(0, w - 1, n)
        y = rng.uniform(0, h - 1, n)
        ids = np.array([f"spot-{name}-{k}" for k in range(n)])
        if split == "Train":
            Y = rng.dirichlet(np.ones(len(TYPES)), n)
            table = make_spot_table(x, y, Y, TYPES, {"spot_id": ids})
        else:
            Y = None
            table = make_spot_table(x, y, extra={"spot_id": ids})
        image = _image(h, w, i)
        records.append(SlideRecord(name, split, table, image, pixel_size_um=0.5 + i,
                                   source=f"unit:{name}"))
        written[name] = dict(x=x, y=y, Y=Y, ids=ids, image=image, split=split, px=0.5 + i)
    path = write_h5(tmp_path_factory.mktemp("h5") / "tiny.h5", records)
    return path, written


def test_slide_lists_and_cell_types(tiny):
    path, _ = tiny
    with CanonicalH5(path) as h5:
        assert_slides(h5, ["A1", "B2"], ["Z9"], TYPES)
        assert h5.split_of("Z9") == "Test"
        with pytest.raises(DataError, match="no such slide"):
            h5.split_of("nope")


def test_spot_tables_round_trip(tiny):
    path, written = tiny
    with CanonicalH5(path) as h5:
        for name, w in written.items():
            t = h5.spots(name)
            assert t.slide == name and t.split == w["split"]
            assert len(t) == len(w["x"])
            assert t.x.dtype == np.float64 and t.y.dtype == np.float64
            np.testing.assert_array_equal(t.x, w["x"])
            np.testing.assert_array_equal(t.y, w["y"])
            assert list(t.extra) == ["spot_id"]
            assert t.extra["spot_id"].dtype.kind == "U"
            np.testing.assert_array_equal(t.extra["spot_id"], w["ids"])
            np.testing.assert_array_equal(t.spot_ids, w["ids"])
            if w["split"] == "Train":
                assert t.cell_types == TYPES
                assert t.Y.shape == (len(w["x"]), len(TYPES))
                np.testing.assert_array_equal(t.Y, w["Y"])
            else:
                assert t.cell_types == () and t.Y is None


def test_pixel_size_shape_and_windows(tiny):
    path, written = tiny
    with CanonicalH5(path) as h5:
        for name, w in written.items():
            assert h5.pixel_size_um(name) == pytest.approx(w["px"])
            assert h5.image_shape(name) == w["image"].shape
            h, wd = w["image"].shape[:2]
            np.testing.assert_array_equal(h5.read_window(name, 0, h, 0, wd), w["image"])
            np.testing.assert_array_equal(h5.read_window(name, 3, 17, 2, 19),
                                          w["image"][3:17, 2:19])
            assert h5.h5[f"images/{w['split']}/{name}"].attrs["source"] == f"unit:{name}"


def test_image_stored_chunked_and_gzipped(tmp_path):
    big = _image(600, 530, 7)
    table = make_spot_table(np.array([5.0]), np.array([5.0]), np.ones((1, 1)), ["c"])
    path = write_h5(tmp_path / "big.h5", [SlideRecord("S", "Train", table, big)])
    with h5py.File(path, "r") as f:
        dset = f["images/Train/S"]
        assert dset.dtype == np.uint8
        assert dset.chunks == (512, 512, 3)
        assert dset.compression == "gzip"
        np.testing.assert_array_equal(dset[()], big)
    # a small image gets chunks clipped to its shape
    small = _image(10, 12, 8)
    path = write_h5(tmp_path / "small.h5", [SlideRecord("S", "Train", table, small)])
    with h5py.File(path, "r") as f:
        assert f["images/Train/S"].chunks == (10, 12, 3)
        assert f["images/Train/S"].compression == "gzip"


def test_image_loader_is_called(tmp_path):
    img = _image(8, 9, 3)
    table = make_spot_table(np.array([1.0]), np.array([2.0]), np.ones((1, 1)), ["c"])
    path = write_h5(tmp_path / "f.h5", [SlideRecord("S", "Train", table, lambda: img)])
    with CanonicalH5(path) as h5:
        np.testing.assert_array_equal(h5.read_window("S", 0, 8, 0, 9), img)
        assert h5.pixel_size_um("S") is None


def test_write_is_atomic(tmp_path):
    target = tmp_path / "out.h5"
    table = make_spot_table(np.array([1.0]), np.array([2.0]), np.ones((1, 1)), ["c"])
    write_h5(target, [SlideRecord("S", "Train", table, _image(8, 8, 0))])
    before = target.read_bytes()

    def broken():
        raise RuntimeError("image loader failed")

    records = [SlideRecord("S", "Train", table, _image(8, 8, 1)),
               SlideRecord("T", "Train", table, broken)]
    with pytest.raises(RuntimeError, match="image loader failed"):
        write_h5(target, records)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.h5"]


def test_failed_first_write_leaves_nothing(tmp_path):
    def broken():
        raise RuntimeError("boom")

    table = make_spot_table(np.array([1.0]), np.array([2.0]))
    with pytest.raises(RuntimeError):
        write_h5(tmp_path / "new.h5", [SlideRecord("S", "Test", table, broken)])
    assert list(tmp_path.iterdir()) == []


def test_fingerprint_changes_with_one_pixel(tmp_path):
    img = _image(50, 40, 5)
    table = make_spot_table(np.array([1.0, 3.0]), np.array([2.0, 4.0]),
                            np.array([[0.5, 0.5], [1.0, 0.0]]), ["a", "b"])
    p1 = write_h5(tmp_path / "a.h5", [SlideRecord("S", "Train", table, img)])
    p2 = write_h5(tmp_path / "b.h5", [SlideRecord("S", "Train", table, img.copy())])
    changed = img.copy()
    changed[31, 17, 1] ^= 1
    p3 = write_h5(tmp_path / "c.h5", [SlideRecord("S", "Train", table, changed)])
    with CanonicalH5(p1) as a, CanonicalH5(p2) as b, CanonicalH5(p3) as c:
        fa, fb, fc = a.fingerprint("S"), b.fingerprint("S"), c.fingerprint("S")
    assert fa == fb
    assert fa != fc


@pytest.fixture(scope="module")
def challenge_like(tmp_path_factory):
    """The challenge file's layout written with plain h5py: no attributes, int x/y."""
    path = tmp_path_factory.mktemp("challenge") / "challenge.h5"
    rng = np.random.default_rng(3)
    types = [f"C{i}" for i in range(1, 36)]
    train_dtype = [("x", np.int64), ("y", np.int64)] + [(c, np.float64) for c in types]
    with h5py.File(path, "w") as f:
        for name in ("S_1", "S_2"):
            f.create_dataset(f"images/Train/{name}", data=_image(64, 48, 1))
            t = np.zeros(10, dtype=train_dtype)
            t["x"] = rng.integers(0, 48, 10)
            t["y"] = rng.integers(0, 64, 10)
            for c in types:
                t[c] = rng.uniform(0, 1, 10)
            f.create_dataset(f"spots/Train/{name}", data=t)
        f.create_dataset("images/Test/S_7", data=_image(64, 48, 2))
        t = np.zeros(8, dtype=[("x", np.int64), ("y", np.int64), ("Test_Set", np.int64)])
        t["x"] = np.arange(8) * 5
        t["y"] = np.arange(8) * 7
        t["Test_Set"] = np.arange(8) % 2 + 1
        f.create_dataset("spots/Test/S_7", data=t)
    return path, types


def test_reads_challenge_layout(challenge_like):
    path, types = challenge_like
    with CanonicalH5(path) as h5:
        assert_slides(h5, ["S_1", "S_2"], ["S_7"], types)
        train = h5.spots("S_1")
        assert train.cell_types == tuple(types)
        assert train.Y.shape == (10, 35)
        assert train.x.dtype == np.float64
        assert train.extra == {}
        np.testing.assert_array_equal(train.spot_ids, np.arange(10).astype(str))
        test = h5.spots("S_7")
        assert test.Y is None and test.cell_types == ()
        assert list(test.extra) == ["Test_Set"]
        np.testing.assert_array_equal(test.extra["Test_Set"], np.arange(8) % 2 + 1)
        np.testing.assert_array_equal(test.x, np.arange(8) * 5.0)
        for slide in ("S_1", "S_2", "S_7"):
            assert h5.pixel_size_um(slide) is None
            assert h5.extra_fields(slide) == ()
        # unchunked image: fingerprint still works and is stable
        assert h5.h5["images/Test/S_7"].chunks is None
        assert h5.fingerprint("S_7") == h5.fingerprint("S_7")


def test_open_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        CanonicalH5(tmp_path / "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_text("not hdf5")
    with pytest.raises(DataError, match="truncated or corrupt"):
        CanonicalH5(junk)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_group("images")
    with pytest.raises(DataError, match="spots"):
        CanonicalH5(empty)
