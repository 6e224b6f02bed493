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
