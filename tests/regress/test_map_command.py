"""``hespot map`` (issue 26): an H&E image to maps in one command on the synthetic data
(a model of the synthetic slides, the test slide's image as an H&E-only slide): every
output, a second run that skips the import and stage 1, and bad input refused in one line
before anything is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
from PIL import Image

from data import commands
from data.h5 import CanonicalH5
from regress.map_folder import RECORD

pytestmark = pytest.mark.filterwarnings("ignore:The argument 'eval_set' is deprecated")


@pytest.fixture(scope="module")
def model(fitted) -> Path:
    return fitted


@pytest.fixture(scope="module")
def slide(synthetic_h5, tmp_path_factory) -> Path:
    """The synthetic test slide's image as a PNG (an H&E-only slide, 1 µm per pixel)."""
    with CanonicalH5(synthetic_h5) as h5:
        name = h5.test_slides[0]
        img = h5.image(name)
        h, w = img.shape
        pixels = img.read_window(0, h, 0, w)
    path = tmp_path_factory.mktemp("mapslide") / "tumour_a.png"
    Image.fromarray(pixels).save(path)
    return path


def _map(slide, model, out, *extra) -> int:
    return commands.main(["map", str(slide), "--model", str(model), "--out", str(out),
                          "--mpp", "1.0", "--grid", "square:12", "--device", "cpu",
                          "--quiet", *map(str, extra)])


@pytest.fixture(scope="module")
def mapped(slide, model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("map") / "out"
    assert _map(slide, model, out) == 0
    return out


def test_every_output_is_written(mapped, model):
    record = json.loads((mapped / RECORD).read_text())
    assert record["slides"] == ["tumour_a"]
    assert set(record["steps"]) == {"import", "stage 1 and prediction", "maps"}
    adata = ad.read_h5ad(mapped / "predictions.h5ad")
    assert adata.uns["hespot"]["X"] == "abundance" and adata.n_obs > 10
    np.testing.assert_allclose(adata.X.sum(axis=1), 1, atol=1e-4)
    geo = json.loads((mapped / "tumour_a.geojson").read_text())
    assert len(geo["features"]) == adata.n_obs
    types = list(adata.var_names)
    first = geo["features"][0]
    assert first["geometry"]["type"] == "Polygon" and len(first["geometry"]["coordinates"][0]) == 5
    assert set(types) <= set(first["properties"]["measurements"])
    assert (mapped / "index.html").is_file() and (mapped / "tumour_a" / "maps.png").is_file()
    for path in record["files"]["tumour_a"].values():
        assert (mapped / path).is_file(), path


def test_a_second_run_skips_the_import_and_stage_1(mapped, slide, model, caplog):
    before = (mapped / "slides.h5").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="hespot"):
        assert commands.main(["map", str(slide), "--model", str(model), "--out", str(mapped),
                              "--mpp", "1.0", "--grid", "square:12", "--device", "cpu"]) == 0
    text = caplog.text
    assert "import:" in text and "skipped" in text
    assert "stage 1: " in text and "already stored" in text
    assert (mapped / "slides.h5").stat().st_mtime_ns == before


def _refused(capsys, code: int, *words: str) -> str:
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("hespot: ") and "Traceback" not in err, err
    assert all(w in last for w in words), last
    return last


def test_a_folder_of_another_run_is_refused(mapped, slide, model, tmp_path, capsys):
    other = Path(shutil.copy(slide, tmp_path / "other.png"))
    _refused(capsys, _map(other, model, mapped), str(mapped), "another run")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    _refused(capsys, _map(slide, model, busy), str(busy), "notes.txt")
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_bad_slides_and_models_are_refused_before_any_work(slide, model, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(capsys, _map(tmp_path / "missing.svs", model, out), "missing.svs")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage" * 10)
    _refused(capsys, _map(bad, model, tmp_path / "out2"), "bad.tif")
    code = commands.main(["map", str(slide), "--model", "no-such-model", "--out",
                          str(tmp_path / "out3"), "--quiet"])
    _refused(capsys, code, "no-such-model", "her2st-breast")
    code = commands.main(["map", str(slide), "--model", str(model), "--out",
                          str(tmp_path / "out4"), "--quiet"])
    _refused(capsys, code, "--mpp")
    for name in ("out3",):
        assert not (tmp_path / name).exists()


def test_the_page_of_a_run_loads_in_headless_chromium(mapped, tmp_path):
    from regress.report.browser import check_in_browser, find_chromium

    if find_chromium() is None:
        pytest.skip("chromium is not installed (not on PATH), so the page cannot be opened "
                    "headless: `make chromium` installs it (Debian: apt-get install chromium)")
    loaded, total = check_in_browser(mapped / "index.html", tmp_path / "shot.png", height=2000)
    assert total >= 1 and loaded == total, (loaded, total)
