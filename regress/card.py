"""The model card: a model folder's ``README.md``, written by ``hespot fit`` from
``model.json``'s content (:func:`render_card`), and its one-line summary
(:func:`card_summary`), which ``hespot predict`` logs.

It says what the model predicts (cell types in order, units), what it was trained on
(slides, patients where the source names them, fingerprints), how well it did by
leave-one-slide-out (both Spearman metrics of the rank models; total-variation distance
against the training mean, Pearson and interval coverage of the abundances), when it
warns (the OOD threshold), how stage 1 must embed a slide, the command that made it and
its limits in plain words.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import h5py

from regress.tables import Cell, Table, to_markdown

HER2ST_SECTION = re.compile(r"^([A-H])(\d)$")  # her2st: patient letter + section number
TISSUES = {"her2st": "HER2-positive breast tumours"}


def slide_sources(h5_path: str, slides: Sequence[str]) -> dict[str, str]:
    """slide -> the ``source`` its importer recorded on ``images/Train/<slide>`` ("")."""
    out = {}
    with h5py.File(h5_path, "r") as f:
        for s in slides:
            node = f.get(f"images/Train/{s}")
            value = node.attrs.get("source", "") if node is not None else ""
            out[s] = value.decode() if isinstance(value, bytes) else str(value)
    return out


def patient_of(slide: str, source: str) -> str:
    """The patient of a slide where its source's naming says it (her2st: the section's
    letter), else ""."""
    match = HER2ST_SECTION.match(slide)
    return match.group(1) if source.startswith("her2st") and match else ""


def _tissue(sources: Mapping[str, str]) -> str:
    kinds = {TISSUES.get(v.split(":")[0], "") for v in sources.values()}
    return kinds.pop() if len(kinds) == 1 and "" not in kinds else "unrecorded tissue"


def _patients(meta: Mapping[str, Any]) -> list[str]:
    sources = meta.get("train_sources", {})
    found = [patient_of(s, sources.get(s, "")) for s in meta["train_slides"]]
    return sorted(set(found)) if all(found) else []


def _backbones(meta: Mapping[str, Any]) -> str:
    return " + ".join(dict.fromkeys(f["backbone"] for f in meta["features"]))


def card_summary(meta: Mapping[str, Any]) -> str:
    """One line: what the model predicts, from what, trained on what, how well."""
    n, slides = len(meta["cell_types"]), len(meta["train_slides"])
    patients = _patients(meta)
    who = f" of {len(patients)} patients" if patients else ""
    line = (f"hespot model: {n} cell types per spot from H&E ({_backbones(meta)} features); "
            f"trained on {slides} sections{who}")
    ab = meta.get("abundance")
    if ab:
        m = ab["loso"]["mean"]
        line += (f"; abundances ({ab['name']}): LOSO TV {m['tv']:.2f} vs {m['tv_mean']:.2f} "
                 f"for the training mean, 90 % intervals cover {m['coverage']:.0%}")
    else:
        line += "; rank scores only"
    return line


def _rank_table(meta: Mapping[str, Any]) -> Table:
    entries = [("submitted", e) for e in meta["models"]]
    entries += [(x["name"], x) for x in meta.get("layers", [])]
    slides = list(meta["train_slides"])
    rows = []
    for role, e in entries:
        per = e["loso"]["per_slide"]
        rows.append([f"{e['id']} ({role})",
                     *(f"{per[s]['spot']:.3f} / {per[s]['type']:.3f}" if s in per else ""
                       for s in slides),
                     f"{e['loso']['mean']['spot']:.3f} / {e['loso']['mean']['type']:.3f}"])
    return Table.of(["model", *slides, "mean"], rows)


def _abundance_table(ab: Mapping[str, Any]) -> Table:
    per, ood = ab["loso"]["per_slide"], ab["ood"]["per_slide"]
    rows = [[s, f"{v['tv']:.3f}", f"{v['tv_mean']:.3f}", f"{v['tv'] / v['tv_mean']:.2f}",
             f"{v['pearson']:.3f}", f"{v['coverage']:.3f}", f"{v['width']:.3f}",
             f"{ood[s]['ood_score']:.2f}" if s in ood else "",
             ("yes" if ood[s]["ood_flagged"] else "no") if s in ood else ""]
            for s, v in per.items()]
    m = ab["loso"]["mean"]
    rows.append(["mean", f"{m['tv']:.3f}", f"{m['tv_mean']:.3f}", f"{m['tv_ratio']:.2f}",
                 f"{m['pearson']:.3f}", f"{m['coverage']:.3f}", f"{m['width']:.3f}", "", ""])
    return Table.of(["held-out slide", "TV", "TV training mean", "ratio", "Pearson",
                     "coverage", "width", "OOD score", "flagged"], rows)


def _candidates(ab: Mapping[str, Any]) -> Table:
    rows = [[Cell(name, bold=name == ab["name"]), f"{m['tv']:.3f}",
             f"{m['tv_ratio']:.3f}", f"{m['pearson']:.3f}", f"{m['coverage']:.3f}"]
            for name, m in ab["candidates"].items()]
    return Table.of(["candidate", "TV", "ratio", "Pearson", "coverage"], rows)


def _stage1(meta: Mapping[str, Any]) -> list[str]:
    lines = []
    for f in meta["features"]:
        ident = f["identity"]
        patch = f"{f['patch_um']:g} µm" if f.get("patch_um") else f"{f.get('patch_px')} px"
        lines.append(f"- `{f['spec']}`: {ident['timm_id']} (weights sha256 "
                     f"`{ident['weights_sha256'][:16]}…`, from {f.get('weights_source', '?')}), "
                     f"{f['layer']} features, crop {f['crop_px']} px of a {patch} patch, "
                     f"input {ident['input_size']} px, {ident['tta_views']} TTA views, "
                     f"padding {ident['pad_mode']}")
    return lines


def _what(meta: Mapping[str, Any]) -> list[str]:
    ab = meta.get("abundance")
    unit = ("proportions of the spot (each spot's abundances sum to 1), on the training "
            "targets' scale" if ab and ab["simplex"] else "the training targets' scale")
    types = ", ".join(f"{k + 1}. {t}" for k, t in enumerate(meta["cell_types"]))
    out = [f"Per spot, {len(meta['cell_types'])} cell types, in this order: {types}.", ""]
    if ab:
        out += [f"- **Abundances** (`predictions.csv`, `X` of `predictions.h5ad`): {unit}; "
                f"model `{ab['name']}`: {ab['description']} (ridge alpha {ab['alpha']:g}).",
                "- **90 % intervals** (layers `lower`, `upper`): conformal, calibrated on "
                "the held-out slides' residuals per cell type and level of the prediction."]
    out += ["- **Rank scores** (`rank_scores.csv`, layer `rank_score`, `submission.csv`): "
            "for ranking cell types within a spot and spots within a cell type (Spearman); "
            "not amounts."]
    return out


def _limits(meta: Mapping[str, Any]) -> list[str]:
    patients, slides = _patients(meta), meta["train_slides"]
    who = f"{len(patients)} patients' " if patients else ""
    out = [f"- Trained on {len(slides)} sections of {who}"
           f"{_tissue(meta.get('train_sources', {}))} ({', '.join(slides)}); other tissues, "
           "stains or scanners are outside what it has seen."]
    ab = meta.get("abundance")
    if ab:
        per = ab["loso"]["per_slide"]
        worst = max(per, key=lambda s: per[s]["tv"] / per[s]["tv_mean"])
        w = per[worst]
        out.append(f"- Held out, {worst} was predicted worst: TV {w['tv']:.2f} against "
                   f"{w['tv_mean']:.2f} for the training mean, intervals covering "
                   f"{w['coverage']:.0%} instead of 90 %. Expect that on a slide unlike the "
                   "training slides (another patient, another lab).")
        out.append("- A slide whose OOD score exceeds the threshold is flagged (a warning "
                   "line, `uns['hespot']['slides']`): treat its maps as unreliable.")
    out.append("- Rank scores are not amounts; compare abundances, not rank scores, "
               "between spots or slides.")
    return out


def render_card(meta: Mapping[str, Any]) -> str:
    """README.md of a model folder from model.json's content (without ``files``)."""
    fp = meta["fingerprints"]
    sources = meta.get("train_sources", {})
    train = Table.of(["slide", "patient", "source", "input fingerprint (sha256)"],
                     [[s, patient_of(s, sources.get(s, "")) or "unknown",
                       sources.get(s, "") or "unknown", f"`{fp.get(s, '')[:16]}…`"]
                      for s in meta["train_slides"]])
    parts = ["# hespot model card", "", card_summary(meta), "", "## What it predicts",
             *_what(meta), "", "## Training slides", to_markdown(train),
             "## Leave-one-slide-out scores",
             "Rank models, Spearman per spot (the challenge's metric) / per cell type:", "",
             to_markdown(_rank_table(meta))]
    ab = meta.get("abundance")
    if ab:
        th = ab["ood"]["threshold"]
        parts += ["Abundances: mean per-spot total-variation distance (half the L1 "
                  "distance; 0 = exact) against the training mean composition's, per-type "
                  "Pearson, 90 % interval coverage and mean width (each slide calibrated on "
                  "the others), OOD score held out:", "", to_markdown(_abundance_table(ab)),
                  "Candidates (chosen in bold, by mean TV):", "", to_markdown(_candidates(ab)),
                  "## Out-of-distribution warning",
                  f"A slide is flagged when its OOD score (median over its spots of the "
                  f"distance of their features from the training spots') exceeds "
                  f"**{th['slide']:.2f}**: 1.25 x the largest score of a training slide "
                  f"held out; a spot counts as flagged above {th['spot']:.2f} (99th "
                  "percentile of held-out spots).", ""]
    parts += ["## Stage 1 (how `hespot predict` embeds a slide)", *_stage1(meta), "",
              "## How it was made", f"`{meta.get('command', 'hespot fit')}`, "
              f"{meta['created']}; versions: "
              + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".", "",
              "## Limits", *_limits(meta), ""]
    return "\n".join(parts)
