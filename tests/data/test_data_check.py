"""``python -m data.check``: exit codes, precise problem reports, background share."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from data.check import background_share, check_file, main
from data.h5 import CanonicalH5
from data.summary import summarize

SIZE = 64
TYPES = ["C1", "C2", "C3", "C4"]
TISSUE = (190, 110, 160)  # pink-purple, as stained tissue


def _image(colour=TISSUE, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    image = np.asarray(colour, float) + rng.normal(0, 4, (SIZE, SIZE, 3))
    return np.clip(image, 0, 255).astype(dtype)


def _table(types=TYPES, seed=0, n_side=3):
    """Structured spot table on a grid inside the image, with spot_id bytes."""
    rng = np.random.default_rng(seed)
    g = (np.arange(n_side) + 0.5) * SIZE / n_side
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    dtype = [("x", np.float64), ("y", np.float64)] + [(c, np.float64) for c in types]
    dtype += [("spot_id", "S8")]
    t = np.zeros(len(x), dtype=dtype)
    t["x"], t["y"] = x, y
    if types:
        Y = rng.dirichlet(np.ones(len(types)), len(x))
        for j, c in enumerate(types):
            t[c] = Y[:, j]
    t["spot_id"] = [f"s{i}".encode() for i in range(len(x))]
    return t


def _slides():
    """split, slide -> [image or None, table or None]: two train slides and a test one."""
    return {("Train", "S1"): [_image(seed=1), _table(seed=1)],
            ("Train", "S2"): [_image(seed=2), _table(seed=2)],
            ("Test", "T1"): [_image(seed=3), _table(types=[], seed=3)]}


def write_raw(path, slides):
    """Write with plain h5py, so any problem can be stored."""
    with h5py.File(path, "w") as f:
        f.create_group("images")
        f.create_group("spots")
        for (split, name), (image, table) in slides.items():
            if image is not None:
                f.create_dataset(f"images/{split}/{name}", data=image)
            if table is not None:
                f.create_dataset(f"spots/{split}/{name}", data=table)
    return path


def _run(capsys, path):
    rc = main([str(path)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return rc, captured.out, captured.err


def _error_lines(out):
    return [line for line in out.splitlines() if line.startswith("error: ")]


def test_synthetic_file_passes(synthetic_h5, capsys):
    rc, out, _ = _run(capsys, synthetic_h5)
    assert rc == 0
    assert f"{synthetic_h5}: 0 errors" in out
    assert not _error_lines(out)
    result = check_file(str(synthetic_h5))
    assert result.ok
    assert set(result.background) == {"S_1", "S_2", "S_3", "S_4"}


def test_clean_raw_file_passes(tmp_path, capsys):
    path = write_raw(tmp_path / "ok.h5", _slides())
    rc, out, _ = _run(capsys, path)
    assert rc == 0, out
    assert "0 errors, 0 warnings" in out


def _expect_one_error(capsys, tmp_path, slides, *needles):
    path = write_raw(tmp_path / "bad.h5", slides)
    rc, out, err = _run(capsys, path)
    assert rc == 1, out
    errors = _error_lines(out)
    assert len(errors) == 1, out
    assert errors[0].startswith(f"error: {path}, ")
    for needle in needles:
        assert needle in errors[0], f"{needle!r} not in {errors[0]!r}"
    assert f"{path}: 1 errors" in out
    assert err == ""
    return errors[0]


def test_spots_outside_image(tmp_path, capsys):
    slides = _slides()
    slides["Train", "S2"][1]["x"][4] = SIZE + 7.0
    _expect_one_error(capsys, tmp_path, slides, "slide S2", "field x, y",
                      f"inside the {SIZE} x {SIZE} image", "1 spots outside", "row 4")


def test_spots_outside_image_negative_row(tmp_path, capsys):
    slides = _slides()
    slides["Test", "T1"][1]["y"][0] = -1.0
    _expect_one_error(capsys, tmp_path, slides, "slide T1", "field x, y", "y=-1.0")


def test_nan_abundance(tmp_path, capsys):
    slides = _slides()
    slides["Train", "S1"][1]["C3"][2] = np.nan
    _expect_one_error(capsys, tmp_path, slides, "slide S1", "field C3", "1 NaN values",
                      "row 2")


def test_negative_abundance(tmp_path, capsys):
    slides = _slides()
    slides["Train", "S2"][1]["C2"][5] = -0.1
    _expect_one_error(capsys, tmp_path, slides, "slide S2", "field C2", "1 negative values",
                      "row 5")


def test_cell_types_differ(tmp_path, capsys):
    slides = _slides()
    slides["Train", "S2"][1] = _table(types=["C1", "C2", "C3", "C5"], seed=2)
    _expect_one_error(capsys, tmp_path, slides, "slide S2", "field cell types",
                      "missing ['C4'], extra ['C5']")


def test_non_uint8_image(tmp_path, capsys):
    slides = _slides()
    slides["Train", "S1"][0] = _image(seed=1).astype(np.uint16) * 257
    _expect_one_error(capsys, tmp_path, slides, "slide S1", "field image dtype",
                      "expected uint8", "found uint16")


def test_image_without_spots(tmp_path, capsys):
    slides = _slides()
    slides["Test", "T2"] = [_image(seed=4), None]
    _expect_one_error(capsys, tmp_path, slides, "slide T2", "field spots/Test/T2",
                      "no spot table")


def test_spots_without_image(tmp_path, capsys):
    slides = _slides()
    slides["Train", "S1"][0] = None
    _expect_one_error(capsys, tmp_path, slides, "slide S1", "field images/Train/S1",
                      "no image")


def test_slide_with_zero_spots(tmp_path, capsys):
    slides = _slides()
    slides["Test", "T1"][1] = slides["Test", "T1"][1][:0]
    _expect_one_error(capsys, tmp_path, slides, "slide T1", "field spots", "0 spots")


def test_duplicate_spot_id(tmp_path, capsys):
    slides = _slides()
    slides["Train", "S1"][1]["spot_id"][7] = b"s3"
    _expect_one_error(capsys, tmp_path, slides, "slide S1", "field spot_id",
                      "1 duplicated", "'s3'")


def test_every_problem_is_listed(tmp_path, capsys):
    slides = _slides()
    slides["Train", "S1"][1]["C1"][0] = np.nan
    slides["Train", "S2"][1]["x"][0] = -5.0
    slides["Test", "T1"][1]["spot_id"][1] = b"s0"
    path = write_raw(tmp_path / "bad.h5", slides)
    rc, out, _ = _run(capsys, path)
    assert rc == 1
    errors = _error_lines(out)
    assert len(errors) == 3, out
    for line, slide in zip(errors, ("S1", "S2", "T1"), strict=True):
        assert f"slide {slide}," in line


def _expect_unreadable(capsys, path):
    rc, out, err = _run(capsys, path)
    assert rc == 2
    assert out == ""
    assert err.startswith(f"hespot: error: {path}: expected a readable HDF5 file")
    assert err.count("error: ") == 1
    assert "truncated or corrupt" in err


def test_truncated_file(synthetic_h5, tmp_path, capsys):
    path = tmp_path / "truncated.h5"
    shutil.copyfile(synthetic_h5, path)
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    _expect_unreadable(capsys, path)


def test_not_hdf5(tmp_path, capsys):
    path = tmp_path / "notes.h5"
    path.write_text("x,y\n1,2\n")
    _expect_unreadable(capsys, path)


def test_missing_file(tmp_path, capsys):
    path = tmp_path / "nope.h5"
    rc, out, err = _run(capsys, path)
    assert rc == 2
    assert str(path) in err and "no such file" in err


def test_missing_groups(tmp_path, capsys):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.arange(3))
    rc, out, err = _run(capsys, path)
    assert rc == 2
    assert str(path) in err and "field images/spots" in err


def test_background_share(tmp_path, capsys):
    slides = {("Train", "W"): [_image(colour=(250, 250, 250), seed=5), _table(seed=5)],
              ("Test", "P"): [_image(seed=6), _table(types=[], seed=6)]}
    path = write_raw(tmp_path / "bg.h5", slides)
    with CanonicalH5(path) as h5:
        assert background_share(h5, "W") == pytest.approx(1.0)
        assert background_share(h5, "P") == pytest.approx(0.0)
    rc, out, _ = _run(capsys, path)
    assert rc == 0
    assert "slide W: 100.0% of spots on background" in out
    assert "slide P: 0.0% of spots on background" in out


def test_background_share_half(tmp_path):
    image = _image(seed=7)
    image[:, SIZE // 2:] = 252  # the right half is glass
    table = _table(seed=7, n_side=2)  # two spots per half
    path = write_raw(tmp_path / "half.h5", {("Train", "H"): [image, table]})
    with CanonicalH5(path) as h5:
        assert background_share(h5, "H") == pytest.approx(0.5)


@pytest.mark.slow
def test_her2st_sample_passes(her2st_h5, capsys):
    rc, out, _ = _run(capsys, her2st_h5)
    assert rc == 0, out
    assert not _error_lines(out)
    text = summarize(str(her2st_h5))
    assert "5 train, 1 test slides; 41 cell types" in text
    with CanonicalH5(her2st_h5) as h5:
        assert len(h5.train_slides) == 5
        assert len(h5.test_slides) == 1
        assert len(h5.cell_types) == 41
        assert all(c == c.strip() for c in h5.cell_types)
