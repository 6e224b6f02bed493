"""The HTML report: ``python -m regress.report`` (``make report``) -> ``OUT/report/index.html``.

One page built from whatever exists under OUT (the HDF5 file, the embeddings store,
``report.json`` and ``predictions/``), with its figures as PNG files in
``OUT/report/img/``. A section whose inputs are absent says which and how to make them.
Data: thumbnails with spots, the share of spots on background, abundance distributions,
spatial maps of chosen cell types, cell-type correlations, a PCA of the embeddings by slide.
Results: the LOSO table, per-type scores, the abundance models' LOSO tables and the
out-of-distribution scores (with maps), true vs predicted maps of each held-out slide
(abundances on the true maps' colour scale, rank scores labelled as such), predicted maps
of each test slide, the ablation table. ``--screenshot`` opens the page in
headless Chromium, checks that every image loaded and writes ``OUT/report/screenshot.png``.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Sequence
from html import escape
from pathlib import Path

from tqdm import tqdm

from data.atomic import atomic_dir
from data.cli import config_parser, entry_point, parse_list, resolve_config, run_stage
from data.errors import DataError, Problem
from regress.report import (  # noqa: F401  (imported: their sections register themselves)
    abundance_sections,
    data_sections,
    result_sections,
)
from regress.report.browser import BrowserError, check_in_browser
from regress.report.config import ReportConfig
from regress.report.inputs import SECTION_REGISTRY, Absent, Inputs, Section

log = logging.getLogger("hespot")

#: the page's sections in order, by anchor (their builders register them: inputs.section)
PAGE_ORDER = ("slides", "background", "abundance", "maps", "correlation", "pca", "loso",
              "per-type", "abundance-loso", "ood", "oof", "test", "ablation")
SECTIONS: tuple[Section, ...] = tuple(SECTION_REGISTRY[key] for key in PAGE_ORDER)

CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1400px;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-top:.5em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}figure{margin:4px}
figure img{max-width:100%}figcaption{font-size:12px;color:#555}
.absent{color:#a40;font-style:italic}nav a{margin-right:1em}"""

CHECK_SCRIPT = """<script>window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.images = ok + "/" + imgs.length;
  document.getElementById("img-check").textContent = "images loaded: " + ok + "/" + imgs.length;
});</script>"""


def render_section(ctx: Inputs, key: str, title: str, build: Callable[[Inputs], str]) -> str:
    """The section's HTML; when its input is absent or it fails, a note saying why (the
    images it wrote so far are removed)."""
    start = len(ctx.written)
    try:
        body = build(ctx)
    except Absent as exc:
        body = f'<p class="absent">Not available: {escape(str(exc))}</p>'
    except Exception as exc:  # a failed section must not lose the rest of the page
        log.warning("report section %r failed: %s", key, exc, exc_info=not ctx.cfg.quiet)
        body = f'<p class="absent">Could not be built: {escape(str(exc))}</p>'
    if body.startswith('<p class="absent">'):
        for path in ctx.written[start:]:
            path.unlink(missing_ok=True)
        del ctx.written[start:]
    return f'<section id="{key}"><h2>{escape(title)}</h2>{body}</section>'


def render_page(ctx: Inputs, sections: Sequence[str], seconds: float) -> str:
    """The whole page: the inputs found, a navigation bar, the sections (HTML, in
    :data:`SECTIONS` order) under their group headings, and the image check script."""
    cfg = ctx.cfg
    status = [(cfg.h5, ctx.h5 is not None), (cfg.store, Path(cfg.store).exists()),
              (str(ctx.out / "report.json"), ctx.report is not None),
              (str(ctx.out / "predictions"), (ctx.out / "predictions").is_dir())]
    inputs = "".join(f"<li><code>{escape(p)}</code>: {'found' if ok else 'absent'}</li>"
                     for p, ok in status)
    nav = "".join(f'<a href="#{s.key}">{escape(s.title)}</a>' for s in SECTIONS)
    groups: list[str] = []
    parts: list[str] = []
    for section, html in zip(SECTIONS, sections, strict=True):
        if section.group not in groups:
            groups.append(section.group)
            parts.append(f"<h1>{section.group}</h1>")
        parts.append(html)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>hespot report</title><style>{CSS}</style></head><body>"
            f"<h1>hespot report</h1><nav>{nav}</nav><ul>{inputs}</ul>"
            f"<p>Mapped: model(s) {escape(', '.join(ctx.models) or 'none')}; cell types "
            f"{escape(', '.join(ctx.types) or 'none')}.</p>" + "".join(parts)
            + f'<footer><p>Built in {seconds:.1f} s.</p><p id="img-check"></p></footer>'
            + CHECK_SCRIPT + "</body></html>\n")


def build_report(cfg: ReportConfig) -> Path:
    """Write OUT/report/ (index.html and its images in img/) whole; returns the page's path.

    The new folder is built beside the old one and renamed over it (:func:`atomic_dir`), so
    a failed or killed run leaves the previous page with every image it shows, never a page
    whose images are gone. The folder is replaced whole: a screenshot of the previous page
    goes with it (``--screenshot`` writes a new one).

    Raises:
        DataError: ``cfg.models`` or ``cfg.cell_types`` names one that does not exist
            (checked before the old page is touched).
    """
    t0 = time.perf_counter()
    folder = Path(cfg.out) / "report"
    index = folder / "index.html"
    ctx = Inputs(cfg, folder / "img")  # checks the names before anything is written
    try:
        with atomic_dir(folder) as tmp:
            ctx.img_dir = tmp / "img"  # the figures go to the new folder
            ctx.img_dir.mkdir(parents=True)
            sections = [render_section(ctx, s.key, s.title, s.build) for s in
                        tqdm(SECTIONS, desc="report", disable=cfg.quiet)]
            page = tmp / index.name
            page.write_text(render_page(ctx, sections, time.perf_counter() - t0))
            size = sum(p.stat().st_size for p in [page, *ctx.written])
    finally:
        ctx.close()
    log.info("report: %s (%d images, %.2f MB, %.1f s)", index, len(ctx.written), size / 2**20,
             time.perf_counter() - t0)
    return index


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m regress.report`` (flags absent unless given)."""
    p = config_parser("python -m regress.report", __doc__, ReportConfig,
                      common=("h5", "store", "out", "quiet"))
    p.add_argument("--models", type=parse_list,
                   help="comma-separated model ids to map (default: best per spot)")
    p.add_argument("--cell-types", dest="cell_types", type=parse_list,
                   help="comma-separated cell types to map (default: 4 most abundant)")
    p.add_argument("--thumb-px", dest="thumb_px", type=int, help="longest thumbnail side")
    p.add_argument("--screenshot", action=argparse.BooleanOptionalAction,
                   help="open the page in headless Chromium, check its images, write "
                   "OUT/report/screenshot.png")
    return p


def check_settings(cfg: ReportConfig) -> None:
    """Raises DataError: a thumbnail size under 16 px."""
    if cfg.thumb_px < 16:
        raise DataError(Problem("command line", "", "--thumb-px", "at least 16",
                                str(cfg.thumb_px), "pass a larger --thumb-px"))


def write_and_check(cfg: ReportConfig) -> Path:
    """Build the page; with ``cfg.screenshot``, load it in Chromium and check every image
    loaded. Returns the page's path.

    Raises:
        BrowserError: an image did not load.
    """
    index = build_report(cfg)
    if cfg.screenshot:
        shot = index.parent / "screenshot.png"
        loaded, total = check_in_browser(index, shot)
        log.info("chromium: %d/%d images loaded; screenshot %s", loaded, total, shot)
        if loaded != total:
            raise BrowserError(f"{total - loaded} of {total} images did not load in {index}")
    log.info("report written: %s", index)
    return index


@entry_point
def main(argv: Sequence[str] | None = None) -> int:
    """Build the report page; 0 on success, 2 (one line on stderr) on a user error."""
    return run_stage(resolve_config(ReportConfig, build_parser().parse_args(argv)),
                     write_and_check, check=check_settings, lock=None)

