"""Importers (her2st, Visium, manifest table) on tiny generated folders, and bad inputs.

Every bad input must end in exit code 2, one message on stderr naming the file and field
(and slide), no traceback, and no new or changed output file.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from data.check import main as check_main
from data.config import ImportHer2stConfig
from data.h5 import CanonicalH5
from data.importers import her2st as import_her2st
from data.importers import table as import_table
from data.importers import visium as import_visium
from tests.helpers import assert_slides

H, W = 60, 80
TYPES = ["B cells", "NK cells ", "Tumour"]  # trailing space, as in the her2st files
TYPES_CLEAN = ("B cells", "NK cells", "Tumour")


def _rgb(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _png(path, array) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _fractions(n: int, k: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).dirichlet(np.ones(k), n)


def assert_user_error(capsys, rc, out, *needles, before=None):
    """Exit 2, one message naming each needle, no traceback, output untouched."""
    assert rc == 2
    captured = capsys.readouterr()
    err = captured.err
    assert "Traceback" not in err + captured.out
    assert err.startswith("hespot: ")
    assert err.count("error: ") == 1, err
    for needle in needles:
        assert str(needle) in err, f"{needle!r} not in {err!r}"
    if before is None:
        assert not out.exists()
    else:
        assert out.read_bytes() == before
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp.h5")]
    return err


# --------------------------------------------------------------------------- her2st


def make_her2st(root, train=("A1", "A2"), test=("B1",), types=TYPES):
    """A her2st-like folder: 4 x 3 grid of selected spots + one unselected spot each."""
    for k, section in enumerate([*train, *test]):
        gx, gy = np.meshgrid(np.arange(1, 5), np.arange(1, 4))
        gx, gy = gx.ravel(), gy.ravel()
        spots = pd.DataFrame({
            "x": np.r_[gx, 9], "y": np.r_[gy, 9],
            "new_x": np.r_[gx, 9] + 0.01, "new_y": np.r_[gy, 9] - 0.01,
            "pixel_x": np.r_[gx * 15.0 + 2.5, 900.0],   # unselected spot lies outside
            "pixel_y": np.r_[gy * 15.0 + 1.25, 900.0],
            "selected": np.r_[np.ones(len(gx), int), 0],
        })
        (root / "spots").mkdir(parents=True, exist_ok=True)
        spots.to_csv(root / "spots" / f"{section}_selection.tsv", sep="\t", index=False)
        _png(root / "images" / f"{section}.png", _rgb(k))
        if section in train:
            props = pd.DataFrame(_fractions(len(gx), len(types), k), columns=types,
                                 index=[f"{a}x{b}" for a, b in zip(gx, gy, strict=True)])
            props = props.iloc[np.random.default_rng(k).permutation(len(props))]
            (root / "proportions" / "subset").mkdir(parents=True, exist_ok=True)
            props.to_csv(root / "proportions" / "subset" / f"{section}-proportion.tsv", sep="\t")
    return root


def _props_path(src, section="A1"):
    return src / "proportions" / "subset" / f"{section}-proportion.tsv"


def _read_props(src, section="A1"):
    return pd.read_csv(_props_path(src, section), sep="\t", index_col=0)


def _write_props(src, df, section="A1"):
    df.to_csv(_props_path(src, section), sep="\t")


def _her2st(src, out):
    return import_her2st.main(["--src", str(src), "--out", str(out), "--quiet"])


def test_import_her2st(tmp_path):
    src = make_her2st(tmp_path / "her2st")
    out = tmp_path / "out" / "her2st.h5"
    assert _her2st(src, out) == 0
    with CanonicalH5(out) as h5:
        assert h5.train_slides == ["A1", "A2"]
        assert h5.test_slides == ["B1"]
        assert h5.cell_types == TYPES_CLEAN
        for section in ("A1", "A2", "B1"):
            t = h5.spots(section)
            assert len(t) == 12  # the selected == 0 row is gone
            spots = pd.read_csv(src / "spots" / f"{section}_selection.tsv", sep="\t")
            spots = spots[spots.selected == 1]
            np.testing.assert_array_equal(t.x, spots.pixel_x)
            np.testing.assert_array_equal(t.y, spots.pixel_y)
            np.testing.assert_array_equal(
                t.spot_ids, [f"{a}x{b}" for a, b in zip(spots.x, spots.y, strict=True)])
            assert h5.pixel_size_um(section) == pytest.approx(0.69)
            assert h5.image_shape(section) == (H, W, 3)
        props = _read_props(src, "A2")
        t = h5.spots("A2")
        np.testing.assert_allclose(t.Y, props.loc[t.spot_ids].to_numpy())
        assert h5.spots("B1").Y is None
        np.testing.assert_array_equal(h5.read_window("A1", 0, H, 0, W), _rgb(0))


def test_her2st_sections_and_pixel_size(tmp_path):
    src = make_her2st(tmp_path / "her2st")
    out = tmp_path / "a.h5"
    assert import_her2st.main(["--src", str(src), "--out", str(out), "--quiet",
                               "--sections", "A2", "B1", "--pixel-size", "0.5"]) == 0
    with CanonicalH5(out) as h5:
        assert h5.train_slides == ["A2"] and h5.test_slides == ["B1"]
        assert h5.pixel_size_um("A2") == 0.5


def test_her2st_missing_proportions_row_dropped_with_warning(tmp_path, caplog):
    src = make_her2st(tmp_path / "her2st")
    _write_props(src, _read_props(src).drop(index="2x2"))
    out = tmp_path / "a.h5"
    with caplog.at_level(logging.WARNING, logger="hespot"):
        assert _her2st(src, out) == 0
    assert "have no proportions row" in caplog.text
    with CanonicalH5(out) as h5:
        assert "2x2" not in set(h5.spots("A1").spot_ids)
        assert len(h5.spots("A1")) == 11


# --------------------------------------------------------------------------- Visium


def make_visium(root, name, seed, header=True, abundances=True, types=("T", "B", "Epi"),
                diameter=110.0):
    """A Space Ranger outs/ folder, its image and (optionally) an abundance CSV."""
    rng = np.random.default_rng(seed)
    n = 10
    barcodes = [f"{name}-BC{i:02d}-1" for i in range(n)]
    in_tissue = np.r_[np.ones(7, int), np.zeros(3, int)]
    rows = rng.uniform(0, H - 1, n).round(1)
    cols = rng.uniform(0, W - 1, n).round(1)
    rows[~in_tissue.astype(bool)] = 5000.0  # off-tissue spots may lie anywhere
    pos = pd.DataFrame({"barcode": barcodes, "in_tissue": in_tissue,
                        "array_row": np.arange(n), "array_col": np.arange(n) * 2,
                        "pxl_row_in_fullres": rows, "pxl_col_in_fullres": cols})
    spatial = root / name / "outs" / "spatial"
    spatial.mkdir(parents=True)
    if header:
        pos.to_csv(spatial / "tissue_positions.csv", index=False)
    else:
        pos.to_csv(spatial / "tissue_positions_list.csv", index=False, header=False)
    (spatial / "scalefactors_json.json").write_text(json.dumps(
        {"spot_diameter_fullres": diameter, "tissue_hires_scalef": 0.17}))
    _png(root / name / "image.png", _rgb(seed))
    ab_path = None
    if abundances:
        keep = [b for b, t in zip(barcodes, in_tissue, strict=True) if t]
        ab = pd.DataFrame(_fractions(len(keep), len(types), seed), columns=list(types),
                          index=pd.Index(keep, name="barcode"))
        ab = ab.iloc[::-1]  # another order than the positions file
        ab_path = root / name / "abundances.csv"
        ab.to_csv(ab_path)
    return dict(outs=root / name / "outs", image=root / name / "image.png",
                abundances=ab_path, pos=pos[in_tissue == 1].reset_index(drop=True))


def _check_visium(out, slides):
    with CanonicalH5(out) as h5:
        assert_slides(h5, ["V1", "V2"], ["V3"], ("T", "B", "Epi"))
        for name, v in slides.items():
            t = h5.spots(name)
            assert len(t) == 7
            np.testing.assert_array_equal(t.spot_ids, v["pos"].barcode)
            np.testing.assert_array_equal(t.x, v["pos"].pxl_col_in_fullres)
            np.testing.assert_array_equal(t.y, v["pos"].pxl_row_in_fullres)
            assert h5.pixel_size_um(name) == pytest.approx(55.0 / 110.0)
            if v["abundances"] is not None:
                ab = pd.read_csv(v["abundances"], index_col=0)
                np.testing.assert_allclose(t.Y, ab.loc[t.spot_ids].to_numpy())
            else:
                assert t.Y is None


def _visium_three(tmp_path):
    return {"V1": make_visium(tmp_path, "V1", 1, header=True),
            "V2": make_visium(tmp_path, "V2", 2, header=False),
            "V3": make_visium(tmp_path, "V3", 3, abundances=False)}


def test_import_visium_flags(tmp_path):
    slides = _visium_three(tmp_path)
    out = tmp_path / "visium.h5"
    argv = ["--out", str(out), "--quiet"]
    for v in slides.values():  # the slide without abundances comes last
        argv += ["--outs", str(v["outs"]), "--image", str(v["image"])]
        if v["abundances"] is not None:
            argv += ["--abundances", str(v["abundances"])]
    assert import_visium.main(argv) == 0  # slide names default to the folder above outs/
    _check_visium(out, slides)


def test_import_visium_manifest(tmp_path):
    slides = _visium_three(tmp_path)
    rows = [{"slide": name, "outs": f"{name}/outs", "image": f"{name}/image.png",
             "abundances": f"{name}/abundances.csv" if v["abundances"] else ""}
            for name, v in slides.items()]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    out = tmp_path / "visium.h5"
    assert import_visium.main(["--manifest", str(manifest), "--out", str(out), "--quiet"]) == 0
    _check_visium(out, slides)


# --------------------------------------------------------------------------- table


def make_table(root, train=("T1", "T2"), test=("X1",), n=8, types=("a", "b", "c"),
               image_writer=None):
    """A manifest with train and test slides; returns (manifest path, {slide: spots df})."""
    rows, tables = [], {}
    for k, slide in enumerate([*train, *test]):
        rng = np.random.default_rng(k)
        df = pd.DataFrame({"x": rng.uniform(0, W - 1, n).round(2),
                           "y": rng.uniform(0, H - 1, n).round(2),
                           "spot_id": [f"{slide}_{i}" for i in range(n)]})
        if slide in train:
            df[list(types)] = _fractions(n, len(types), k)
        else:
            df["Test_Set"] = np.arange(n) % 2 + 1
        df.to_csv(root / f"{slide}.csv", index=False)
        image = root / f"{slide}.png"
        (image_writer or _png)(image, _rgb(k))
        tables[slide] = df
        rows.append({"slide": slide, "image": image.name, "spots": f"{slide}.csv",
                     "split": "train" if slide in train else "test",
                     "pixel_size_um": 0.25 if k == 0 else None})
    manifest = root / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest, tables


def _table(manifest, out):
    return import_table.main(["--manifest", str(manifest), "--out", str(out), "--quiet"])


def test_import_table(tmp_path):
    manifest, tables = make_table(tmp_path)
    out = tmp_path / "table.h5"
    assert _table(manifest, out) == 0
    with CanonicalH5(out) as h5:
        assert_slides(h5, ["T1", "T2"], ["X1"], ("a", "b", "c"))
        for slide, df in tables.items():
            t = h5.spots(slide)
            np.testing.assert_array_equal(t.x, df.x)
            np.testing.assert_array_equal(t.y, df.y)
            np.testing.assert_array_equal(t.spot_ids, df.spot_id)
        np.testing.assert_allclose(h5.spots("T2").Y, tables["T2"][["a", "b", "c"]])
        np.testing.assert_array_equal(h5.spots("X1").extra["Test_Set"], tables["X1"].Test_Set)
        assert h5.pixel_size_um("T1") == 0.25
        assert h5.pixel_size_um("T2") is None


# --------------------------------------------------------------------------- bad inputs


def test_missing_image_file(tmp_path, capsys):
    manifest, _ = make_table(tmp_path)
    (tmp_path / "T2.png").unlink()
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _table(manifest, out), out,
                      tmp_path / "T2.png", "slide T2", "field image", "no such file")


def test_missing_abundance_file_keeps_existing_output(tmp_path, capsys):
    slides = {"V1": make_visium(tmp_path, "V1", 1)}
    out = tmp_path / "o.h5"
    out.write_bytes(b"previous output")
    v = slides["V1"]
    missing = tmp_path / "V1" / "nope.csv"
    rc = import_visium.main(["--outs", str(v["outs"]), "--image", str(v["image"]),
                             "--abundances", str(missing), "--out", str(out), "--quiet"])
    assert_user_error(capsys, rc, out, missing, "slide V1", "no such file",
                      before=b"previous output")


def test_missing_her2st_image(tmp_path, capsys):
    src = make_her2st(tmp_path / "her2st")
    (src / "images" / "A2.png").unlink()
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _her2st(src, out), out, src / "images", "slide A2", "field image")


def test_missing_src_folder(tmp_path, capsys):
    out = tmp_path / "o.h5"
    missing = tmp_path / "no_such_folder"
    assert_user_error(capsys, _her2st(missing, out), out, missing, "no such folder")


def test_missing_visium_outs_folder(tmp_path, capsys):
    v = make_visium(tmp_path, "V1", 1)
    out = tmp_path / "o.h5"
    missing = tmp_path / "V9" / "outs"
    rc = import_visium.main(["--outs", str(missing), "--image", str(v["image"]),
                             "--slide", "V9", "--out", str(out), "--quiet"])
    assert_user_error(capsys, rc, out, missing / "spatial", "slide V9", "no such folder")


def test_misnamed_her2st_column(tmp_path, capsys):
    src = make_her2st(tmp_path / "her2st")
    path = src / "spots" / "A1_selection.tsv"
    df = pd.read_csv(path, sep="\t").rename(columns={"pixel_x": "pixelx"})
    df.to_csv(path, sep="\t", index=False)
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _her2st(src, out), out, path, "slide A1", "field pixel_x")


def test_missing_table_column(tmp_path, capsys):
    manifest, tables = make_table(tmp_path)
    tables["T1"].rename(columns={"y": "Y"}).to_csv(tmp_path / "T1.csv", index=False)
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _table(manifest, out), out,
                      tmp_path / "T1.csv", "slide T1", "field y")


def test_missing_manifest_column(tmp_path, capsys):
    manifest, _ = make_table(tmp_path)
    pd.read_csv(manifest).drop(columns="split").to_csv(manifest, index=False)
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _table(manifest, out), out, manifest, "field split")


def test_misnamed_visium_position_column(tmp_path, capsys):
    v = make_visium(tmp_path, "V1", 1)
    path = v["outs"] / "spatial" / "tissue_positions.csv"
    df = pd.read_csv(path).rename(columns={"pxl_row_in_fullres": "pxl_row"})
    df.to_csv(path, index=False)
    out = tmp_path / "o.h5"
    rc = import_visium.main(["--outs", str(v["outs"]), "--image", str(v["image"]),
                             "--abundances", str(v["abundances"]), "--slide", "V1",
                             "--out", str(out), "--quiet"])
    assert_user_error(capsys, rc, out, path, "slide V1", "field pxl_row_in_fullres")


def test_visium_positions_list_wrong_width(tmp_path, capsys):
    v = make_visium(tmp_path, "V1", 1, header=False)
    path = v["outs"] / "spatial" / "tissue_positions_list.csv"
    pd.read_csv(path, header=None).iloc[:, :5].to_csv(path, index=False, header=False)
    out = tmp_path / "o.h5"
    rc = import_visium.main(["--outs", str(v["outs"]), "--image", str(v["image"]),
                             "--abundances", str(v["abundances"]), "--slide", "V1",
                             "--out", str(out), "--quiet"])
    assert_user_error(capsys, rc, out, path, "slide V1", "field columns", "5 columns")


def test_nan_abundance(tmp_path, capsys):
    src = make_her2st(tmp_path / "her2st")
    props = _read_props(src)
    props.loc["3x2", "Tumour"] = np.nan
    _write_props(src, props)
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _her2st(src, out), out,
                      _props_path(src), "slide A1", "field Tumour", "NaN")


def test_negative_abundance(tmp_path, capsys):
    manifest, tables = make_table(tmp_path)
    df = tables["T2"]
    df.loc[3, "b"] = -0.2
    df.to_csv(tmp_path / "T2.csv", index=False)
    out = tmp_path / "o.h5"
    out.write_bytes(b"keep me")
    assert_user_error(capsys, _table(manifest, out), out,
                      tmp_path / "T2.csv", "slide T2", "field b", "negative",
                      before=b"keep me")


def test_non_numeric_abundance(tmp_path, capsys):
    v = make_visium(tmp_path, "V1", 1)
    ab = pd.read_csv(v["abundances"], index_col=0).astype(object)
    ab.iloc[2, 1] = "lots"
    ab.to_csv(v["abundances"])
    out = tmp_path / "o.h5"
    rc = import_visium.main(["--outs", str(v["outs"]), "--image", str(v["image"]),
                             "--abundances", str(v["abundances"]), "--slide", "V1",
                             "--out", str(out), "--quiet"])
    assert_user_error(capsys, rc, out, v["abundances"], "slide V1", "field B", "'lots'")


def test_non_numeric_her2st_proportion(tmp_path, capsys):
    src = make_her2st(tmp_path / "her2st")
    props = _read_props(src, "A2").astype(object)
    props.iloc[0, 1] = "abc"
    _write_props(src, props, "A2")
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _her2st(src, out), out,
                      _props_path(src, "A2"), "slide A2", "field NK cells:", "'abc'")


def test_spots_outside_image(tmp_path, capsys):
    manifest, tables = make_table(tmp_path)
    df = tables["X1"]
    df.loc[5, "x"] = W + 10.0
    df.to_csv(tmp_path / "X1.csv", index=False)
    out = tmp_path / "o.h5"
    err = assert_user_error(capsys, _table(manifest, out), out,
                            "slide X1", "field x, y", f"inside the {W} x {H} image")
    assert str(tmp_path / "X1.csv") in err or str(tmp_path / "X1.png") in err


def test_her2st_spots_outside_image(tmp_path, capsys):
    src = make_her2st(tmp_path / "her2st")
    path = src / "spots" / "B1_selection.tsv"
    df = pd.read_csv(path, sep="\t")
    df.loc[0, "pixel_y"] = -3.0
    df.to_csv(path, sep="\t", index=False)
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _her2st(src, out), out, "slide B1", "field x, y", "y=-3.0")


def test_duplicate_spot_ids(tmp_path, capsys):
    manifest, tables = make_table(tmp_path)
    df = tables["T1"]
    df.loc[4, "spot_id"] = df.loc[1, "spot_id"]
    df.to_csv(tmp_path / "T1.csv", index=False)
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _table(manifest, out), out,
                      tmp_path / "T1.csv", "slide T1", "field spot_id", "T1_1")


def test_duplicate_her2st_proportion_keys(tmp_path, capsys):
    src = make_her2st(tmp_path / "her2st")
    props = _read_props(src)
    _write_props(src, pd.concat([props, props.iloc[:1]]))
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _her2st(src, out), out,
                      _props_path(src), "slide A1", "field spot key")


def test_slide_without_spots(tmp_path, capsys):
    manifest, tables = make_table(tmp_path)
    tables["T2"].iloc[:0].to_csv(tmp_path / "T2.csv", index=False)
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _table(manifest, out), out, "slide T2", "field spots", "0 spots")


def test_her2st_section_with_nothing_selected(tmp_path, capsys):
    src = make_her2st(tmp_path / "her2st")
    path = src / "spots" / "B1_selection.tsv"
    df = pd.read_csv(path, sep="\t")
    df["selected"] = 0
    df.to_csv(path, sep="\t", index=False)
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _her2st(src, out), out, "slide B1", "field spots", "0 spots")


def _png16(path, rgb):
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(path)


def _tiff16(path, rgb):
    tifffile.imwrite(path, rgb.astype(np.uint16) * 257, photometric="rgb")


@pytest.mark.parametrize("writer,suffix", [(_png16, ".png"), (_tiff16, ".tif")])
def test_non_uint8_image(tmp_path, capsys, writer, suffix):
    manifest, _ = make_table(tmp_path)
    image = tmp_path / f"T2_16bit{suffix}"
    writer(image, _rgb(5))
    m = pd.read_csv(manifest)
    m.loc[m.slide == "T2", "image"] = image.name
    m.to_csv(manifest, index=False)
    out = tmp_path / "o.h5"
    out.write_bytes(b"old")
    assert_user_error(capsys, _table(manifest, out), out,
                      image, "slide T2", "field image dtype", "uint8", before=b"old")


@pytest.mark.parametrize("mode,message", [("L", "grayscale image converted to RGB"),
                                          ("RGBA", "RGBA image, alpha channel dropped")])
def test_gray_and_rgba_images_convert_with_warning(tmp_path, caplog, mode, message):
    manifest, _ = make_table(tmp_path)
    rgb = _rgb(1)
    pixels = rgb[..., 0] if mode == "L" else np.dstack([rgb, np.full((H, W), 200, np.uint8)])
    Image.fromarray(pixels, mode=mode).save(tmp_path / "T2.png")
    out = tmp_path / "o.h5"
    with caplog.at_level(logging.WARNING, logger="hespot"):
        assert _table(manifest, out) == 0
    assert message in caplog.text and "T2" in caplog.text
    with CanonicalH5(out) as h5:
        got = h5.read_window("T2", 0, H, 0, W)
    expected = np.repeat(rgb[..., :1], 3, axis=2) if mode == "L" else rgb
    np.testing.assert_array_equal(got, expected)


def test_tiff_image_imports(tmp_path):
    manifest, _ = make_table(tmp_path, image_writer=lambda p, a: tifffile.imwrite(
        p.with_suffix(".tif"), a, photometric="rgb"))
    m = pd.read_csv(manifest)
    m["image"] = m["image"].str.replace(".png", ".tif")
    m.to_csv(manifest, index=False)
    out = tmp_path / "o.h5"
    assert _table(manifest, out) == 0
    with CanonicalH5(out) as h5:
        np.testing.assert_array_equal(h5.read_window("T2", 0, H, 0, W), _rgb(1))


def test_cell_types_differ_between_train_slides(tmp_path, capsys):
    manifest, tables = make_table(tmp_path)
    tables["T2"].rename(columns={"c": "d"}).to_csv(tmp_path / "T2.csv", index=False)
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _table(manifest, out), out, manifest, "slide T2",
                      "field cell types", "missing ['c'], extra ['d']")


def test_her2st_cell_types_differ(tmp_path, capsys):
    src = make_her2st(tmp_path / "her2st")
    _write_props(src, _read_props(src, "A2")[["Tumour", "B cells", "NK cells "]], "A2")
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _her2st(src, out), out, "slide A2", "field cell types",
                      "another order")


def test_rows_not_summing_to_one_warn(tmp_path, caplog, capsys):
    manifest, tables = make_table(tmp_path)
    df = tables["T1"]
    df[["a", "b", "c"]] *= 7.0  # counts, not proportions
    df.to_csv(tmp_path / "T1.csv", index=False)
    out = tmp_path / "o.h5"
    with caplog.at_level(logging.WARNING, logger="hespot"):
        assert _table(manifest, out) == 0
    assert "rows summing to about 1" in caplog.text and "T1" in caplog.text
    assert "error" not in capsys.readouterr().err
    with CanonicalH5(out) as h5:
        np.testing.assert_allclose(h5.spots("T1").Y.sum(axis=1), 7.0)


def test_test_slides_only(tmp_path, capsys):
    """A file of test slides only is valid: H&E-only slides for a model fitted elsewhere."""
    manifest, _ = make_table(tmp_path, train=())
    out = tmp_path / "o.h5"
    assert _table(manifest, out) == 0
    with CanonicalH5(out) as h5:
        assert h5.train_slides == [] and h5.test_slides
    assert check_main([str(out)]) == 0


def test_bad_split_value(tmp_path, capsys):
    manifest, _ = make_table(tmp_path)
    m = pd.read_csv(manifest)
    m.loc[0, "split"] = "validation"
    m.to_csv(manifest, index=False)
    out = tmp_path / "o.h5"
    assert_user_error(capsys, _table(manifest, out), out, manifest, "slide T1", "field split")


def test_her2st_default_source_is_the_bundled_sample():
    src = Path(ImportHer2stConfig().src)
    assert (src / "README.md").is_file()
    assert (src / "spots").is_dir()


def test_visium_by_reference_gives_the_features_of_a_copy(tmp_path):
    """A Visium slide whose full-resolution image is a tiled TIFF, imported by reference
    (read in place) and by copy: the same patches and bit-identical stage-1 features."""
    import embed.run
    from data.patches import crop_patches
    from data.store import read_features
    from data.wsi.pyramid import write_array_pyramid

    v = make_visium(tmp_path, "V1", 1)
    tif = write_array_pyramid(tmp_path / "V1.tif", _rgb(1), None, n_levels=2,
                              compression="zlib")
    features = {}
    for mode in ("reference", "copy"):
        out = tmp_path / f"{mode}.h5"
        assert import_visium.main(["--outs", str(v["outs"]), "--image", str(tif),
                                   "--abundances", str(v["abundances"]), "--images", mode,
                                   "--out", str(out), "--quiet"]) == 0
        with CanonicalH5(out) as h5:
            assert (h5.image_ref("V1") is not None) == (mode == "reference")
            assert h5.pixel_size_um("V1") == pytest.approx(0.5)  # Space Ranger's, not None
            features[f"patches_{mode}"] = crop_patches(h5, "V1", 48)
        store = tmp_path / f"{mode}.zarr"
        assert embed.run.main(["--h5", str(out), "--store", str(store), "--backbones",
                               "tiny_random", "--patch-px", "48", "--tta", "2",
                               "--quiet"]) == 0
        features[mode] = read_features(str(store), "tiny_random", "V1")
    np.testing.assert_array_equal(features["patches_reference"], features["patches_copy"])
    np.testing.assert_array_equal(features["reference"], features["copy"])
