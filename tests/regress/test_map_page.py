"""``OUT/index.html`` of ``hespot map`` (regress.outputs.index_page) on the synthetic
fixture: every link and image resolves to a file of the run, user text is escaped, the
OOD status is said, and the page loads in headless Chromium with no broken image."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

import regress.outputs.sheets as sheets
from data.h5 import CanonicalH5
from regress.outputs.index_page import write_index
from regress.outputs.maps import write_maps
from regress.report.browser import check_in_browser, find_chromium
from tests.regress.test_map_pictures import make_maps

TYPES = ["B-cells/Naive", "T cells <CD4>", 'say "hi" & go']
ODD_SLIDE = 'S&<b>"1"<b>'                              # a legal slide name (no /)


def _meta() -> dict:
    """model.json's content, as `hespot fit` writes it (the parts the page reads)."""
    return {"cell_types": TYPES, "train_slides": ["S_1", "S_2", "S_3"],
            "features": [{"backbone": "tiny_random"}],
            "models": [{"id": "ridge-spot_rank",
                        "loso": {"mean": {"spot": 0.412, "type": 0.287}}}],
            "abundance": {"name": "ridge-simplex",
                          "loso": {"mean": {"tv": 0.21, "tv_mean": 0.3, "pearson": 0.44,
                                            "coverage": 0.88, "width": 0.12}}}}


class Links(HTMLParser):
    """Every href and img src of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.srcs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if tag == "a" and "href" in a:
            self.hrefs.append(a["href"])
        if tag == "img":
            self.srcs.append(a["src"])


@pytest.fixture(scope="module")
def run(synthetic_h5, tmp_path_factory) -> Path:
    """An OUT folder as `hespot map` leaves it: the real slide with its thumbnail, and a
    slide with a hostile name drawn without one (flagged), then the page."""
    out = tmp_path_factory.mktemp("map")
    with CanonicalH5(synthetic_h5) as h5:
        slide = h5.test_slides[0]
        x, y = h5.coords(slide)
        real = make_maps(slide, x, y, TYPES)
        real.slides[slide] = {"ood_score": 0.9, "ood_threshold": 1.4, "ood_flagged": False,
                              "flagged_spots": 0}
        pics = {slide: sheets.write_slide_pictures(out, slide, real, h5)}
    odd = make_maps(ODD_SLIDE, x * 3, y * 3, TYPES, seed=1)
    pics[ODD_SLIDE] = sheets.write_slide_pictures(out, ODD_SLIDE, odd, None)
    h5ad = write_maps(out, real, None)
    geojson = out / f"{slide}.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    summary = {"model_name": "her2st <breast>", "model": _meta(), "command": "hespot map x",
               "files": {"predictions.h5ad": h5ad, "predictions.csv": out / "predictions.csv",
                         "rank_scores.csv": out / "rank_scores.csv"},
               "slides": {slide: {"ood": real.slides[slide], "pictures": pics[slide],
                                  "files": {"QuPath GeoJSON": geojson}},
                          ODD_SLIDE: {"ood": odd.slides[ODD_SLIDE],
                                      "pictures": pics[ODD_SLIDE]}}}
    assert write_index(out, summary) == out / "index.html"
    return out


def test_every_link_and_image_is_a_file_of_the_run(run):
    parser = Links()
    parser.feed((run / "index.html").read_text(encoding="utf-8"))
    assert len(parser.srcs) == 2                                   # one sheet per slide
    assert len(parser.hrefs) >= 2 * (len(TYPES) + 3) + 4
    for link in parser.hrefs + parser.srcs:
        url = urlparse(link)
        assert not url.scheme and not url.netloc and not link.startswith("/"), link
        target = (run / unquote(url.path)).resolve()
        assert target.is_file() and run.resolve() in target.parents, link
    written = {p.resolve() for p in run.rglob("*.png")}
    linked = {(run / unquote(h)).resolve() for h in parser.hrefs}
    assert written <= linked                                       # every picture is linked


def test_user_text_is_escaped(run):
    html = (run / "index.html").read_text(encoding="utf-8")
    assert "<CD4>" not in html and "&lt;CD4&gt;" in html
    assert "<b>" not in html and "her2st &lt;breast&gt;" in html
    assert 'say "hi"' not in html and "say &quot;hi&quot; &amp; go" in html
    assert len(re.findall(r"<script>", html)) == 1                  # the image check only


def test_the_model_and_ood_status_are_shown(run):
    html = (run / "index.html").read_text(encoding="utf-8")
    assert "trained on 3 sections" in html and "S_1, S_2, S_3" in html
    assert "0.412" in html and "0.287" in html and "0.210" in html and "0.880" in html
    assert "OOD score 0.90 vs threshold 1.40" in html and "like the training slides" in html
    assert "OOD score 1.70 vs threshold 1.40: FLAGGED" in html and "3 spots above" in html


def test_a_missing_file_is_refused(run, tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        write_index(run, {"model_name": "m", "model": _meta(),
                          "files": {"predictions.h5ad": tmp_path / "nothing.h5ad"}})


def test_the_page_loads_in_headless_chromium(run, tmp_path):
    if find_chromium() is None:
        pytest.skip("chromium is not installed (not on PATH), so the page cannot be opened "
                    "headless: `make chromium` installs it (Debian: apt-get install chromium)")
    loaded, total = check_in_browser(run / "index.html", tmp_path / "shot.png", height=2000)
    assert total == 2 and loaded == total
    assert (tmp_path / "shot.png").stat().st_size > 10_000
