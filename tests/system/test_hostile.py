"""Hostile input (issue 18): absurd image sizes and chunk bombs refused from the metadata,
before anything is allocated; names that could escape OUT or a group refused; text that a
spreadsheet would execute defused in the CSVs we write; JPEG/PNG bombs refused."""

from __future__ import annotations

import time
import tracemalloc

import h5py
import numpy as np
import pandas as pd
import pytest

import embed.run
from data.check import check_file, preflight
from data.check import main as check_main
from data.errors import DataError
from data.h5 import CanonicalH5
from data.importers import table as import_table
from data.synthetic import write_many_spots
from data.validate import check_name
from data.wsi import pil_image
from regress.outputs import csv_text, defuse
from regress.submit import expected_ids


def _table(types=("A", "B")) -> np.ndarray:
    dtype = [("x", float), ("y", float)] + [(t, float) for t in types]
    t = np.zeros(4, dtype)
    t["x"], t["y"] = [10, 20, 30, 40], [15, 25, 35, 45]
    for t_ in types:
        t[t_] = 0.5
    return t


def _declared(path, shape, chunks):
    """A canonical file (two train slides, one test) whose train image S1 declares
    ``shape`` (no pixels written)."""
    with h5py.File(path, "w") as f:
        for split, name in (("Train", "S1"), ("Train", "S2"), ("Test", "T1")):
            if name != "S1":
                f[f"images/{split}/{name}"] = np.full((64, 64, 3), 200, np.uint8)
            f[f"spots/{split}/{name}"] = _table() if split == "Train" else _table(())
        f.create_dataset("images/Train/S1", shape=shape, dtype=np.uint8, chunks=chunks,
                         compression="gzip")
    return path


def _manifest(root, name: str):
    """A manifest of two train slides (PNG + spots CSV), the second named ``name``."""
    from PIL import Image

    rows = []
    for k, slide in enumerate(["T1", name]):
        Image.new("RGB", (80, 60), (200, 120, 180)).save(root / f"s{k}.png")
        pd.DataFrame({"x": [10.0, 30.0], "y": [20.0, 40.0], "a": [0.4, 0.7],
                      "b": [0.6, 0.3]}).to_csv(root / f"s{k}.csv", index=False)
        rows.append({"slide": slide, "image": f"s{k}.png", "spots": f"s{k}.csv",
                     "split": "train"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


@pytest.mark.parametrize("shape, chunks, field", [
    ((10**6, 10**6, 3), (512, 512, 3), "image shape"),
    ((12_000, 12_000, 3), (12_000, 12_000, 3), "image chunks"),
])
def test_absurd_images_are_refused_before_any_read(tmp_path, capsys, shape, chunks, field):
    path = _declared(tmp_path / "bomb.h5", shape, chunks)
    t0 = time.perf_counter()
    problems = [p for p in check_file(str(path)).problems if p.level == "error"]
    assert [(p.slide, p.field) for p in problems] == [("S1", field)]
    store = tmp_path / "e.zarr"
    rc = embed.run.main(["--h5", str(path), "--store", str(store), "--backbones",
                         "tiny_random", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and field in err and "slide S1" in err and "Traceback" not in err, err
    assert time.perf_counter() - t0 < 20 and not store.exists()


@pytest.mark.parametrize("name", ["a/b", "..", "x\x07y", " padded", "n" * 300])
def test_unsafe_slide_names_are_refused_at_import(tmp_path, capsys, name):
    manifest = _manifest(tmp_path, name)
    out = tmp_path / "o.h5"
    rc = import_table.main(["--manifest", str(manifest), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "slide name" in err and "Traceback" not in err, err
    assert not out.exists()


def test_cell_type_names_may_hold_slashes_and_markup_but_not_control_characters():
    assert check_name("f", "s", "cell type", "CAFs MSC/iCAF-like s1", path_safe=False) == []
    assert check_name("f", "s", "cell type", "<b>T</b>", path_safe=False) == []
    assert check_name("f", "s", "cell type", "T\x00", path_safe=False)
    assert check_name("f", "s", "slide", "S/../../etc")


def test_formulas_are_defused_in_csv():
    frame = pd.DataFrame({"ID": ["=HYPERLINK(\"x\")", "S_1", "@SUM(A1)", "+1"],
                          "=cmd|' /C calc'!A0": [0.5, -0.25, 0.0, 1.0]})
    text = csv_text(frame)
    header, *rows = text.splitlines()
    assert header == "ID,'=cmd|' /C calc'!A0"
    assert [r.split(",")[0] for r in rows] == ["\"'=HYPERLINK(\"\"x\"\")\"", "S_1",
                                               "'@SUM(A1)", "'+1"]
    assert rows[1].endswith(",-0.25")  # numbers untouched
    assert defuse("plain") == "plain" and defuse("-x") == "'-x"


def test_png_bomb_is_refused_from_its_header(tmp_path, monkeypatch):
    from PIL import Image

    path = tmp_path / "big.png"
    Image.new("RGB", (300, 200), "white").save(path)
    monkeypatch.setattr(pil_image, "MAX_PIXELS", 300 * 200 - 1)
    with pytest.raises(DataError, match="image size") as exc:
        pil_image.PilImage(str(path), "S")
    assert str(path) in str(exc.value)


def test_million_row_spot_tables_are_streamed_and_bad_rows_named(tmp_path, capsys):
    """check and preflight read a 10^6-row table field by field and in row blocks: they
    finish, hold far less than the table, and name the one bad row of each slide."""
    good = write_many_spots(tmp_path / "good.h5")  # test table: 10^6 rows, 13 fields
    table_bytes = 1_000_000 * 13 * 8
    tracemalloc.start()
    try:
        result = check_file(str(good), with_background=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.ok and not result.problems, [str(p) for p in result.problems]
    assert peak < table_bytes / 2, f"peak {peak / 2**20:.0f} MB, table {table_bytes / 2**20:.0f} MB"
    preflight(str(good))
    with CanonicalH5(good) as h5:
        assert h5.n_spots("T1") == 1_000_000
        ids = expected_ids(h5)
        assert len(ids) == 1_000_000 and ids[999_000] == "T1_999000"
        assert h5.spots("S1").Y.shape == (300_000, 4)

    bad = write_many_spots(tmp_path / "bad.h5", nan_test_row=999_000, nan_train_row=299_999)
    errors = [p for p in check_file(str(bad), with_background=False).problems
              if p.level == "error"]
    assert [(p.slide, p.field) for p in errors] == [("S1", "C2"), ("T1", "x")]
    assert "1 NaN values (first at row 299999)" in errors[0].found
    assert "1 NaN/inf values (first at row 999000)" in errors[1].found
    with pytest.raises(DataError) as exc:
        preflight(str(bad))
    assert "row 999000" in str(exc.value) and "row 299999" in str(exc.value)
    assert check_main([str(bad)]) == 1
    out = capsys.readouterr().out
    assert "slide T1, field x" in out and "first at row 999000" in out
