"""The HTML report (regress.report) on the synthetic fixture: every section, its images,
absent inputs named on the page, and the page opened in headless Chromium; the tables
(regress.tables) rendered alike as markdown and HTML."""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path

import numpy as np
import pytest

import embed.run
import regress.run
from data.h5 import CanonicalH5
from regress.report import browser
from regress.report.browser import check_in_browser, find_chromium
from regress.report.config import ReportConfig
from regress.report.inputs import Inputs
from regress.report.page import SECTIONS, main
from regress.report.plots import thumbnail
from regress.report.result_sections import section_ablation
from regress.results import update_report
from regress.tables import Cell, Table, ablation_table, to_html, to_markdown


def _recipe(name: str, **levers) -> dict:
    return {"name": name, "features": ["tiny_random"], "context_k": 0, "smooth_k": 0,
            "smooth_w": 0.0, "per_type_alpha": False, "center": False, "description": "",
            **levers}


def _scores(*pairs: tuple[float, float]) -> dict:
    return {s: {"spot": a, "type": b} for s, (a, b) in zip(("S_1", "S_2", "S_3"), pairs,
                                                            strict=True)}


# report.json's "ablation" as the previous release wrote it: rows, chosen, config and the
# table as markdown (here from an older run: the page must follow the rows, not the table)
ABLATION = {
    "chosen": "plain",
    "rows": {
        "plain/spot_rank": {"recipe": _recipe("plain"), "target": "spot_rank",
                            "per_slide": _scores((0.51, 0.21), (0.49, 0.19), (0.50, 0.20)),
                            "mean": {"spot": 0.5, "type": 0.2}, "seconds": 1.5},
        "smooth/spot_rank": {"recipe": _recipe("smooth", smooth_k=4, smooth_w=0.5),
                             "target": "spot_rank",
                             "per_slide": _scores((0.55, 0.22), (0.47, 0.18), (0.53, 0.20)),
                             "mean": {"spot": 0.517, "type": 0.2}, "seconds": 1.7},
    },
    "config": {"recipes": ["plain", "smooth"], "targets": ["spot_rank"]},
    "table": "| recipe | target | features | context_k | smooth_k | per_type_alpha | center "
             "| S_1 | S_2 | S_3 | spot | type | better than plain |\n"
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
             "| plain (chosen) | spot_rank | tiny_random | 0 | 0 | False | False | "
             "0.111 / 0.011 | 0.111 / 0.011 | 0.111 / 0.011 | 0.111 | 0.011 |  |\n",
}
SMOOTH_ROW = ("<tr><td>smooth</td><td>spot_rank</td><td>tiny_random</td><td>0</td>"
              "<td>k4 w0.5</td><td>False</td><td>False</td><td>-</td><td>0.0</td>"
              "<td>1.0</td><td>0.550 / 0.220</td><td>0.470 / 0.180</td><td>0.530 / 0.200</td>"
              "<td>0.517</td><td>0.200</td><td>2/3 vs plain</td></tr>")
# slides, abundance, maps, corr, pca, per-type, OOD maps (3 held out + 1 test), oof, test
N_IMAGES = 4 + 1 + 3 + 1 + 1 + 1 + 4 + 3 + 1


@pytest.fixture(scope="module")
def store(synthetic_h5, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("embed") / "embeddings.zarr"
    assert embed.run.main(["--h5", str(synthetic_h5), "--store", str(path),
                           "--backbones", "tiny_random", "--patch-px", "64", "--tta", "1",
                           "--precision", "fp32", "--quiet"]) == 0
    return path


@pytest.fixture(scope="module")
def regressed(synthetic_h5, store, tmp_path_factory) -> Path:
    """OUT of one regress.run (ridge + constant) with an ablation entry; read-only."""
    out = tmp_path_factory.mktemp("regress")
    assert regress.run.main(["--h5", str(synthetic_h5), "--store", str(store),
                             "--out", str(out), "--recipe", "plain", "--features", "tiny_random",
                             "--models", "ridge", "--targets", "spot_rank", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    report["ablation"] = ABLATION
    (out / "report.json").write_text(json.dumps(report))
    return out


def _report(h5, store, out, *args) -> int:
    return main(["--h5", str(h5), "--store", str(store), "--out", str(out),
                                "--thumb-px", "256", "--quiet", *args])


@pytest.fixture(scope="module")
def page(synthetic_h5, store, regressed, tmp_path_factory) -> Path:
    """index.html of the report on a copy of the full OUT."""
    out = Path(shutil.copytree(regressed, tmp_path_factory.mktemp("rep") / "out"))
    assert _report(synthetic_h5, store, out) == 0
    return out / "report" / "index.html"


def _sections(html: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', html, flags=re.S))


def _images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', html)


def test_every_section_is_built(page):
    html = page.read_text()
    sections = _sections(html)
    assert list(sections) == [key for _, key, _, _ in SECTIONS]
    for key, body in sections.items():
        assert 'class="absent"' not in body, (key, body[:300])
    for group in ("Data", "Results"):
        assert f"<h1>{group}</h1>" in html
    images = _images(html)
    assert len(images) == N_IMAGES
    for src in images:
        path = page.parent / src
        assert src.startswith("img/") and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    # nothing left over in img/ that the page does not show
    assert sorted(p.name for p in (page.parent / "img").iterdir()) == \
        sorted(Path(s).name for s in images)


def test_tables_and_choices(page, synthetic_h5, regressed):
    sections = _sections(page.read_text())
    loso = sections["loso"]
    for model in ("ridge-spot_rank", "constant-spot_rank"):
        assert f"<td>{model}</td>" in loso
    report = json.loads((regressed / "report.json").read_text())
    s1 = report["models"]["ridge-spot_rank"]["per_slide"]["S_1"]
    assert f"{s1['spot']:.3f} / {s1['type']:.3f}" in loso
    assert loso.index("ridge-spot_rank") < loso.index("constant-spot_rank")  # best first
    assert "<td>plain (chosen)</td>" in sections["ablation"]
    assert SMOOTH_ROW in sections["ablation"] and "0.111" not in sections["ablation"]
    for slide in ("S_1", "S_2", "S_3", "S_4"):
        assert f"<td>{slide}</td>" in sections["background"]
    with CanonicalH5(synthetic_h5) as h5:
        Y = np.concatenate([h5.spots(s).Y for s in h5.train_slides])
        top = [h5.cell_types[j] for j in np.argsort(-Y.mean(axis=0), kind="stable")[:4]]
    assert f"cell types {', '.join(top)}." in page.read_text()
    assert "model(s) ridge-spot_rank;" in page.read_text()
    assert len(_images(sections["oof"])) == 3 and len(_images(sections["test"])) == 1


def test_abundance_sections(page, regressed):
    """The abundance tables (every candidate beside the training mean), the OOD scores
    with a map per slide, and maps that say abundance or rank score."""
    sections = _sections(page.read_text())
    section = json.loads((regressed / "report.json").read_text())["abundance"]
    tables = sections["abundance-loso"]
    assert "<td>training mean</td>" in tables and f"<b>{section['chosen']}</b>" in tables
    for title in ("total-variation", "Pearson", "coverage", "width"):
        assert title in tables, title
    ood = sections["ood"]
    assert f"{section['ood']['threshold']['slide']:.2f}" in ood
    assert len(_images(ood)) == 4 and "<td>S_4</td>" in ood
    assert "predicted abundance" in sections["oof"] and "rank scores" in sections["oof"]


def test_opens_in_headless_chromium(page):
    if find_chromium() is None:
        pytest.skip("chromium is not installed (not on PATH), so the page cannot be opened "
                    "headless: `make chromium` installs it (Debian: apt-get install chromium)")
    shot = page.parent / "screenshot.png"
    loaded, total = check_in_browser(page, shot)
    assert (loaded, total) == (N_IMAGES, N_IMAGES)
    from matplotlib.image import imread
    pixels = imread(shot)
    assert pixels.shape[:2] == (4000, 1280) and pixels.std() > 0.01


def test_absent_inputs_are_named(synthetic_h5, tmp_path):
    out = tmp_path / "out"
    assert _report(synthetic_h5, tmp_path / "none.zarr", out) == 0
    sections = _sections((out / "report" / "index.html").read_text())
    assert list(sections) == [key for _, key, _, _ in SECTIONS]
    for key in ("slides", "background", "abundance", "maps", "correlation"):
        assert 'class="absent"' not in sections[key], key
    assert "no embeddings store" in sections["pca"] and "make embeddings" in sections["pca"]
    for key in ("loso", "per-type", "oof", "test", "ablation"):
        assert "Not available" in sections[key] and "make regress" in sections[key], key


def test_absent_h5(regressed, store, tmp_path):
    out = Path(shutil.copytree(regressed, tmp_path / "out"))
    assert _report(tmp_path / "none.h5", store, out) == 0
    sections = _sections((out / "report" / "index.html").read_text())
    for key in ("slides", "background", "abundance", "maps", "correlation", "pca", "oof",
                "test"):
        assert "no HDF5 file" in sections[key], key
    for key in ("loso", "per-type", "ablation"):
        assert 'class="absent"' not in sections[key], key


def test_failed_section_keeps_the_page(synthetic_h5, store, regressed, tmp_path):
    out = Path(shutil.copytree(regressed, tmp_path / "out"))
    oof = out / "predictions" / "ridge-spot_rank" / "oof.csv"
    lines = oof.read_text().splitlines()
    oof.write_text("\n".join(lines[:-3]) + "\n")   # S_3 loses rows
    assert _report(synthetic_h5, store, out, "--cell-types", "C2,C5") == 0
    html = (out / "report" / "index.html").read_text()
    sections = _sections(html)
    assert "Could not be built" in sections["oof"] and "rerun `make regress`" in sections["oof"]
    assert not _images(sections["oof"])
    assert len(_images(sections["test"])) == 1 and len(_images(sections["maps"])) == 3
    assert "cell types C2, C5." in html and "model(s) ridge-spot_rank;" in html
    assert sorted(p.name for p in (out / "report" / "img").iterdir()) == \
        sorted(Path(s).name for s in _images(html))


def test_unknown_names_are_user_errors(synthetic_h5, store, page, capsys):
    out = page.parent.parent
    before = page.read_bytes()
    assert _report(synthetic_h5, store, out, "--cell-types", "C9") == 2
    assert "C9" in capsys.readouterr().err
    assert _report(synthetic_h5, store, out, "--models", "svm-spot_rank") == 2
    assert "svm-spot_rank" in capsys.readouterr().err
    assert page.read_bytes() == before and len(list((page.parent / "img").iterdir())) == N_IMAGES


@pytest.mark.parametrize("max_px", [100, 512, 1000])
def test_thumbnail_is_a_box_average_read_in_bands(synthetic_h5, max_px, monkeypatch):
    with CanonicalH5(synthetic_h5) as h5:
        image, rows = h5.image("S_1"), []
        read = image.read_level

        def counting(level, y0, y1, x0, x1):
            rows.append(y1 - y0)
            return read(level, y0, y1, x0, x1)

        monkeypatch.setattr(image, "read_level", counting)
        thumb, scale = image.thumbnail(max_px, band_rows=64)
        again, extent = thumbnail(h5, "S_1", max_px)
        full = read(0, 0, 512, 0, 512).astype(np.float64)
    f = int(np.ceil(512 / max_px))
    n = 512 // f
    assert thumb.shape == (n, n, 3) and thumb.dtype == np.uint8
    assert scale == (f, f) and np.array_equal(again, thumb)
    assert extent == (0.0, float(n * f), float(n * f), 0.0)
    want = full[:n * f, :n * f].reshape(n, f, n, f, 3).mean(axis=(1, 3))
    assert np.abs(thumb - want).max() <= 0.5 + 1e-9
    assert max(rows[:len(rows) // 2]) <= 64 and len(rows) > 2


def test_no_chromium_is_a_clear_error(page, monkeypatch):
    monkeypatch.setattr(browser, "find_chromium", lambda: None)
    with pytest.raises(browser.BrowserError, match="make chromium"):
        check_in_browser(page)


# ---------------------------------------------------------------- tables (regress.tables)

def _markdown_cells(md: str) -> list[list[str]]:
    """Cells of a markdown table, header first, the ``|---|`` line skipped; ``\\|`` kept."""
    lines = [ln for ln in md.splitlines() if not set(ln) <= set("|-: ")]
    return [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", ln)[1:-1]]
            for ln in lines]


def _html_cells(html: str) -> list[list[str]]:
    rows = re.findall(r"<tr>(.*?)</tr>", html)
    return [[unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", r)] for r in rows]


def test_markdown_and_html_agree_on_every_cell():
    table = Table.of(["model", "S<1>", "mean"],
                     [["ridge & co", "0.500 / 0.200", Cell("0.500", bold=True)],
                      ["a|b", "", Cell("-0.100", bold=True)]])
    md, html = _markdown_cells(to_markdown(table)), _html_cells(to_html(table))
    want = [["model", "S<1>", "mean"], ["ridge & co", "0.500 / 0.200", "**0.500**"],
            ["a|b", "", "**-0.100**"]]
    assert md == want
    assert html == [[c.replace("**", "<b>", 1).replace("**", "</b>", 1) for c in row]
                    for row in want]
    assert to_markdown(table).splitlines()[1] == "|---|---|---|"
    with pytest.raises(ValueError, match="row 0 has 2 cells"):
        Table.of(["a", "b", "c"], [["x", "y"]])


def test_previous_release_ablation_renders_from_rows(tmp_path):
    """A report.json of the previous release (ablation with its markdown ``table``): the
    page's ablation section is built from ``rows``; the old markdown is ignored."""
    report = {"models": {"ridge-spot_rank": {
        "kind": "ridge", "target": "spot_rank", "per_slide": _scores(*[(0.5, 0.2)] * 3),
        "mean": {"spot": 0.5, "type": 0.2}, "per_type": {"C1": 0.2}, "seconds": 1.0,
        "fitted": {}, "config": {}}}, "ablation": ABLATION}
    (tmp_path / "report.json").write_text(json.dumps(report))
    cfg = ReportConfig(h5=str(tmp_path / "none.h5"), store=str(tmp_path / "none.zarr"),
                       out=str(tmp_path))
    ctx = Inputs(cfg, tmp_path / "img")
    html = section_ablation(ctx)
    assert to_html(ablation_table(ABLATION)) in html
    assert "<td>plain (chosen)</td>" in html and SMOOTH_ROW in html
    assert "0.111" not in html
    old, new = _markdown_cells(ABLATION["table"])[0], _html_cells(to_html(ablation_table(
        ABLATION)))[0]   # the previous release's columns, in order, and the new levers'
    assert [c for c in new if c in old] == old[:-1] and new[-1] == "wins"
    # the next write of report.json drops the old markdown; report.md follows the rows
    update_report(tmp_path, {})
    assert set(json.loads((tmp_path / "report.json").read_text())["ablation"]) == \
        {"rows", "chosen", "config"}
    md = (tmp_path / "report.md").read_text()
    assert to_markdown(ablation_table(ABLATION)) in md and "0.111" not in md
