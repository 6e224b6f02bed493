"""The tables of the LOSO report, built once from ``report.json`` data and rendered as
markdown (``report.md``, logs) or HTML (the report page) by the same :class:`Table`.

Torch-free and matplotlib-free. The builders take the model order from their caller
(:func:`regress.results.rank_models`), so this module imports nothing of regress.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

# The recipe levers of the ablation table (regress.recipes.Recipe fields), in column order.
LEVERS = ("context_k", "smooth_k", "per_type_alpha", "center", "position", "shrink",
          "slide_gain")


@dataclass(frozen=True)
class Cell:
    """One table cell: its text, optionally bold."""

    text: str
    bold: bool = False


@dataclass(frozen=True)
class Table:
    """A header and rows of cells; every row has one cell per header column."""

    header: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]

    @classmethod
    def of(cls, header: Sequence[str], rows: Sequence[Sequence[str | Cell]]) -> Table:
        """A Table from plain strings (or Cells); raises ValueError on a ragged row."""
        cells = tuple(tuple(c if isinstance(c, Cell) else Cell(str(c)) for c in row)
                      for row in rows)
        for k, row in enumerate(cells):
            if len(row) != len(header):
                raise ValueError(f"table row {k} has {len(row)} cells, the header "
                                 f"{len(header)}: {list(header)}")
        return cls(tuple(str(h) for h in header), cells)


def _md_text(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: Table) -> str:
    """GitHub markdown: header line, ``|---|`` line, one line per row; bold as ``**x**``;
    ends with a newline."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(cells) + " |"

    lines = [line([_md_text(h) for h in table.header]), "|" + "---|" * len(table.header)]
    for row in table.rows:
        lines.append(line([f"**{_md_text(c.text)}**" if c.bold else _md_text(c.text)
                           for c in row]))
    return "\n".join(lines) + "\n"


def to_html(table: Table) -> str:
    """An HTML ``<table>``; every text escaped, bold as ``<b>x</b>``."""
    def cell(c: Cell) -> str:
        text = escape(c.text)
        return f"<td><b>{text}</b></td>" if c.bold else f"<td>{text}</td>"

    head = "".join(f"<th>{escape(h)}</th>" for h in table.header)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in table.rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _pair(score: Mapping[str, float] | None) -> str:
    """``"spot / type"`` of a per-slide score, "" when absent."""
    return f"{score['spot']:.3f} / {score['type']:.3f}" if score else ""


def loso_table(report: Mapping[str, Any], models: Sequence[str]) -> Table:
    """One row per model of ``models`` (in that order, e.g. ``rank_models(report)``):
    per-spot / per-type Spearman of each held-out slide, the two means (bold) and seconds.
    """
    entries = report.get("models", {})
    slides = sorted({s for m in models for s in entries[m]["per_slide"]})
    rows = []
    for name in models:
        m = entries[name]
        rows.append([name, *(_pair(m["per_slide"].get(s)) for s in slides),
                     Cell(f"{m['mean']['spot']:.3f}", bold=True),
                     Cell(f"{m['mean']['type']:.3f}", bold=True),
                     f"{m.get('seconds', 0):.0f}"])
    return Table.of(["model", *slides, "mean spot", "mean type", "s"], rows)


def per_type_table(report: Mapping[str, Any], models: Sequence[str]) -> Table:
    """One row per cell type (those of the report's first model), one column per model of
    ``models``: per-type Spearman averaged over held-out slides ("nan" where absent)."""
    entries = report.get("models", {})
    types = list(next(iter(entries.values()))["per_type"]) if entries else []
    rows = [[t, *(f"{entries[n]['per_type'].get(t, float('nan')):.3f}" for n in models)]
            for t in types]
    return Table.of(["cell type", *models], rows)


_LEVER_DEFAULTS = {"position": "", "shrink": 0.0, "slide_gain": 1.0}


def _lever(recipe: Mapping[str, Any], key: str) -> str:
    """A lever's cell; recipes recorded before a lever existed show its default."""
    if key == "smooth_k":
        if recipe.get("smooth_um"):
            return f"{recipe['smooth_um']:g} µm w{recipe['smooth_w']}"
        return f"k{recipe['smooth_k']} w{recipe['smooth_w']}" if recipe["smooth_k"] else "0"
    value = recipe.get(key, _LEVER_DEFAULTS.get(key))
    return "-" if value == "" else str(value)


def wins(row: Mapping[str, Any], ref: Mapping[str, Any], slides: Sequence[str]) -> int:
    """Held-out slides where ``row`` beats ``ref`` on the metric its target serves (per
    spot for spot_rank, else per type)."""
    m = "spot" if row["target"] == "spot_rank" else "type"
    mine, theirs = row["per_slide"], ref["per_slide"]
    return sum(mine[s][m] > theirs[s][m] for s in slides if s in mine and s in theirs)


def _better(row: Mapping[str, Any], rows: Mapping[str, Any], slides: Sequence[str],
            reference: str) -> str:
    """``wins/slides vs <base>``: against the recipe's ``base`` (the recipe it adds a lever
    to), else ``reference``; "" for the reference itself or a base not in the table."""
    base = row["recipe"].get("base") or reference
    ref = rows.get(f"{base}/{row['target']}")
    if not ref or row["recipe"]["name"] == base:
        return ""
    return f"{wins(row, ref, slides)}/{len(slides)} vs {base}"


def ablation_table(ablation: Mapping[str, Any], reference: str = "plain") -> Table:
    """The ablation of ``make tune`` from ``report["ablation"]`` (its ``rows``, keyed
    ``<recipe>/<target>``, and ``chosen``; any other key, e.g. the markdown ``table`` of
    earlier releases, is ignored): recipe, target, features, levers, per-slide scores,
    means and wins over ``reference``."""
    rows, chosen = ablation["rows"], ablation.get("chosen")
    slides = sorted({s for r in rows.values() for s in r["per_slide"]})
    out = []
    for r in rows.values():
        rc, name = r["recipe"], r["recipe"]["name"]
        mark = " (chosen)" if name == chosen and r["target"] == "spot_rank" else ""
        out.append([f"{name}{mark}", r["target"], " + ".join(rc["features"]),
                    *(_lever(rc, k) for k in LEVERS),
                    *(_pair(r["per_slide"].get(s)) for s in slides),
                    f"{r['mean']['spot']:.3f}", f"{r['mean']['type']:.3f}",
                    _better(r, rows, slides, reference)])
    return Table.of(["recipe", "target", "features", *LEVERS, *slides, "spot", "type",
                     "wins"], out)


#: the abundance metrics of report.json's abundance section, as tabled (title, key, fmt)
ABUNDANCE_METRICS = (("mean per-spot total-variation distance (lower is better)", "tv", ".3f"),
                     ("per-type Pearson (mean over cell types)", "pearson", ".3f"),
                     ("90 % interval coverage (each slide calibrated on the others)",
                      "coverage", ".3f"),
                     ("mean 90 % interval width", "width", ".3f"))


def abundance_tables(section: Mapping[str, Any]) -> list[tuple[str, Table]]:
    """One table per abundance metric: a row per candidate (the chosen one bold) and, for
    TV and Pearson, the training mean composition's; a column per held-out slide and the
    mean (TV also the ratio to the training mean's: of the means / of the slides')."""
    models, base = section["models"], section["training_mean"]
    slides = list(base["per_slide"])
    out = []
    for title, key, fmt in ABUNDANCE_METRICS:
        rows = []
        for name, e in models.items():
            cells = [format(e["per_slide"][s][key], fmt) if s in e["per_slide"] else ""
                     for s in slides]
            extra = [f"{e['mean']['tv_ratio']:.3f} / {e['mean']['tv_ratio_slides']:.3f}"] \
                if key == "tv" else []
            rows.append([Cell(name, bold=name == section["chosen"]), *cells,
                         Cell(format(e["mean"][key], fmt), bold=True), *extra])
        if key in base["mean"]:
            rows.append(["training mean", *(format(base["per_slide"][s][key], fmt)
                                            for s in slides),
                         format(base["mean"][key], fmt), *(["1"] if key == "tv" else [])])
        header = ["model", *slides, "mean", *(["ratio"] if key == "tv" else [])]
        out.append((title, Table.of(header, rows)))
    return out


def ood_table(ood: Mapping[str, Any]) -> Table:
    """OOD score of every training slide held out (verdict against the other folds'
    threshold) and of every test slide (against the final threshold)."""
    rows = [[s, "held out", f"{v['ood_score']:.2f}", f"{v['ood_threshold']:.2f}",
             "yes" if v["ood_flagged"] else "no", str(v["flagged_spots"])]
            for s, v in ood["per_slide"].items()]
    rows += [[s, "test", f"{v['ood_score']:.2f}", f"{v['ood_threshold']:.2f}",
              Cell("yes", bold=True) if v["ood_flagged"] else "no", str(v["flagged_spots"])]
             for s, v in ood.get("test", {}).items()]
    return Table.of(["slide", "as", "OOD score", "threshold", "flagged", "spots flagged"],
                    rows)
