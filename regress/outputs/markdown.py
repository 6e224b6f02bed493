"""``report.md``: the LOSO report of ``report.json`` as markdown (tables from
:mod:`regress.tables`). The model order comes from the caller
(:func:`regress.results.rank_models`), so the results contract can write ``report.md``
beside ``report.json`` through this module without an import cycle."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from regress import tables
from regress.tables import to_markdown


def loso_markdown(report: Mapping[str, Any], ranking: Sequence[str]) -> str:
    """The LOSO table as markdown (report.md, logs): one row per model of ``ranking``
    (best first)."""
    if not report.get("models"):
        return "(no models)\n"
    return to_markdown(tables.loso_table(report, ranking))


def abundance_markdown(section: Mapping[str, Any]) -> str:
    """The abundance part of report.md: each metric per candidate and held-out slide, the
    training mean beside them, and the OOD scores."""
    parts = [f"\n## Abundances (LOSO; chosen by mean TV: {section['chosen']})\n",
             "Predicted abundances against the true proportions of each held-out slide; "
             "the training mean composition is the baseline.\n"]
    for title, table in tables.abundance_tables(section):
        parts += [f"\n### {title[0].upper() + title[1:]}\n", to_markdown(table)]
    th = section["ood"]["threshold"]
    parts += ["\n### Out-of-distribution scores\n",
              f"Slide threshold {th['slide']:.2f} (1.25 x the largest held-out score), spot "
              f"threshold {th['spot']:.2f}; a held-out slide is judged against the "
              "threshold of the other folds.\n", to_markdown(tables.ood_table(section["ood"]))]
    return "\n".join(parts)


def render_markdown(report: Mapping[str, Any], ranking: Sequence[str]) -> str:
    """report.md: the LOSO table, per-type scores, the ablation and the configuration;
    models in the order of ``ranking`` (best first)."""
    parts = ["# hespot LOSO report\n",
             "Leave-one-slide-out Spearman. Each cell: per-spot (across cell types, "
             "averaged over spots; the challenge's metric) / per-type (across spots, "
             "averaged over cell types). Constant rows/columns score 0.\n",
             loso_markdown(report, ranking)]
    if report.get("models"):
        parts.append("\n## Per cell type (mean over held-out slides)\n")
        table = tables.per_type_table(report, ranking)
        parts.append(to_markdown(table).rstrip("\n"))
    if report.get("abundance"):
        parts.append(abundance_markdown(report["abundance"]))
    if "ablation" in report:
        parts.append(f"\n## Ablation (ridge, LOSO; chosen: {report['ablation']['chosen']})\n")
        parts.append("Cells: per-spot / per-type Spearman. 'wins': held-out slides where "
                     "the recipe beats the one it adds a lever to (its base; else plain) on "
                     "the metric its target serves (per-spot for spot_rank, per-type for "
                     "type_rank).\n")
        parts.append(to_markdown(tables.ablation_table(report["ablation"])))
    if "config" in report:
        parts.append("\n## Configuration\n\n```json\n" + json.dumps(report["config"], indent=1)
                     + "\n```\n")
    return "\n".join(parts) + "\n"
