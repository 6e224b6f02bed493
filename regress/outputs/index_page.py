"""``OUT/index.html``: the page a ``hespot map`` run ends on. It shows the model (its
card's one line, cell types, training slides, leave-one-slide-out scores), then each
slide: whether it looks like the training slides (OOD score against the threshold), its
contact sheet, and links to its files (QuPath GeoJSON, one picture per cell type, the
uncertainty and OOD maps, the run's h5ad and CSVs).

Self-contained: no script or style from the network; every link and image is relative to
OUT (URL-quoted), and every text from the user (slide and cell-type names, file names)
is escaped. The page reports on ``<body data-images="loaded/total">`` whether its images
loaded (:mod:`regress.report.browser` reads that in headless Chromium).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import quote

from data.atomic import atomic_path
from regress.card import card_summary
from regress.outputs.sheets import SlidePictures
from regress.report.page import CHECK_SCRIPT
from regress.tables import Table, to_html

log = logging.getLogger("hespot")

CSS = """body{font-family:sans-serif;margin:1.5em;max-width:1500px;color:#222}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-top:.5em}
table{border-collapse:collapse;font-size:13px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right;white-space:nowrap}
td:first-child,th:first-child{text-align:left}
.ok{color:#1b5e20}.flagged{color:#b71c1c;font-weight:bold}
.sheet img{max-width:100%;border:1px solid #ddd}ul.files{columns:3;font-size:14px}
.note{color:#555;font-size:13px}"""


def _href(out: Path, path: Path, label: str) -> str:
    """``path`` relative to ``out``, URL-quoted and escaped for an attribute. Raises
    ValueError when the file does not exist (the page would link to nothing)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"index page: {path} ({label}) does not exist; write it before "
                         "the page")
    return escape(quote(Path(os.path.relpath(path.resolve(), out.resolve())).as_posix()))


def _link(out: Path, path: Path, label: str) -> str:
    """``<a>`` to ``path`` (:func:`_href`) showing ``label`` (escaped)."""
    return f'<a href="{_href(out, path, label)}">{escape(label)}</a>'


def _scores(meta: Mapping[str, Any]) -> str:
    """The LOSO scores of model.json: rank models' mean Spearman, and the abundances'."""
    rows = [[e["id"], f"{e['loso']['mean']['spot']:.3f}", f"{e['loso']['mean']['type']:.3f}"]
            for e in meta.get("models", []) if "loso" in e]
    html = ""
    if rows:
        html += to_html(Table.of(["rank model (leave-one-slide-out)", "Spearman across "
                                  "types (per spot)", "Spearman across spots (per type)"],
                                 rows))
    ab = meta.get("abundance")
    if ab:
        m = ab["loso"]["mean"]
        html += to_html(Table.of(
            ["abundance model", "TV distance", "TV of the training mean", "Pearson",
             "90 % interval coverage", "interval width"],
            [[ab["name"], f"{m['tv']:.3f}", f"{m['tv_mean']:.3f}", f"{m['pearson']:.3f}",
              f"{m['coverage']:.3f}", f"{m['width']:.3f}"]]))
    return html


def model_section(name: str, meta: Mapping[str, Any]) -> str:
    """The model: its card's one line, cell types, training slides, LOSO scores."""
    line = meta.get("card_summary") or card_summary(meta)
    types = list(meta.get("cell_types", []))
    slides = list(meta.get("train_slides", []))
    return (f"<section id='model'><h2>Model: {escape(name)}</h2><p>{escape(line)}</p>"
            f"<p>Training slides ({len(slides)}): {escape(', '.join(map(str, slides)))}</p>"
            f"<details><summary>{len(types)} cell types</summary><p>"
            f"{escape(', '.join(map(str, types)))}</p></details>{_scores(meta)}</section>")


def ood_status(verdict: Mapping[str, Any] | None) -> str:
    """One line: the slide's OOD score against the threshold, flagged or not."""
    if not verdict:
        return "<p class='note'>No OOD score: this model has no OOD reference.</p>"
    flagged = bool(verdict.get("ood_flagged"))
    word = ("FLAGGED: this slide looks unlike the training slides; its abundances and "
            "intervals may be wrong" if flagged else "like the training slides")
    return (f"<p class='{'flagged' if flagged else 'ok'}'>OOD score "
            f"{float(verdict['ood_score']):.2f} vs threshold "
            f"{float(verdict['ood_threshold']):.2f}: {escape(word)}; "
            f"{int(verdict.get('flagged_spots', 0))} spots above the spot threshold.</p>")


def slide_section(out: Path, slide: str, entry: Mapping[str, Any]) -> str:
    """A slide: OOD status, contact sheet, links to its files."""
    pictures: SlidePictures | None = entry.get("pictures")
    files = dict(entry.get("files", {}))
    parts = [f"<section class='slide'><h2>Slide {escape(slide)}</h2>",
             ood_status(entry.get("ood"))]
    if pictures is not None:
        if pictures.quantity != "abundance":
            parts.append("<p class='note'>These maps show rank scores, not amounts: this "
                         "model has no abundance model.</p>")
        href = _href(out, pictures.sheet, "contact sheet")
        parts.append(f"<figure class='sheet'><a href=\"{href}\"><img src=\"{href}\" "
                     f"alt=\"{escape(f'contact sheet of {slide}')}\"></a></figure>")
        files.update(pictures.files())
    links = [f"<li>{_link(out, p, label)}</li>" for label, p in files.items()]
    parts.append(f"<ul class='files'>{''.join(links)}</ul>")
    if pictures is not None and pictures.types:
        types = "".join(f"<li>{_link(out, p, t)}</li>" for t, p in pictures.types.items())
        parts.append(f"<details><summary>{len(pictures.types)} cell-type maps</summary>"
                     f"<ul class='files'>{types}</ul></details>")
    return "".join(parts) + "</section>"


def render_index(out: Path, summary: Mapping[str, Any]) -> str:
    """The page's HTML (see :func:`write_index` for ``summary``)."""
    out = Path(out)
    title = str(summary.get("title") or "hespot map")
    slides = summary.get("slides", {})
    run = "".join(f"<li>{_link(out, p, label)}</li>"
                  for label, p in dict(summary.get("files", {})).items())
    command = summary.get("command")
    head = (f"<p class='note'>Command: <code>{escape(str(command))}</code></p>"
            if command else "")
    return ('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1>{head}"
            + model_section(str(summary.get("model_name", "model")), summary["model"])
            + (f"<section id='files'><h2>Files of the run</h2><ul class='files'>{run}</ul>"
               "</section>" if run else "")
            + "".join(slide_section(out, str(s), e) for s, e in slides.items())
            + '<footer><p id="img-check"></p></footer>' + CHECK_SCRIPT + "</body></html>\n")


def write_index(out: str | Path, summary: Mapping[str, Any]) -> Path:
    """Write ``out/index.html`` atomically; returns its path.

    Args:
        out: the run's output folder; every file linked must lie in it or below (links
            are relative to it; one outside is linked by a relative ``../`` path).
        summary: ``{"model_name": str, "model": model.json's content (a Mapping),
            "slides": {slide: {"ood": uns['hespot']['slides'][slide] or None,
            "pictures": SlidePictures or None, "files": {label: Path}}},
            "files": {label: Path} (the run's: predictions.h5ad, CSVs), "title": str
            (optional), "command": str (optional)}``.

    Raises:
        ValueError: a linked file does not exist.
        KeyError: ``summary`` has no ``model``.
    """
    out = Path(out)
    html = render_index(out, summary)
    path = out / "index.html"
    with atomic_path(path, suffix=".html") as tmp:
        tmp.write_text(html, encoding="utf-8")
    log.info("page: %s (%d slides)", path, len(summary.get("slides", {})))
    return path
