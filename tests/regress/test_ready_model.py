"""The shipped model her2st-breast is what ``make ready-model`` makes (slow: stage 1 of the
default recipe's two backbones on the whole sample): the test runs the target's steps with
the Makefile's own arguments on the imported sample and compares the folder it fits with
the shipped one, then predicts the test section by the shipped model's name.

Tolerance: every float array within 1e-6 of the largest magnitude of the shipped array
(|a - b| <= 1e-6 * max(max|b|, 1e-6)); flags exactly. Element-wise relative error would
fail on coefficients that are zero up to rounding, and an absolute 1e-6 would mean nothing
for arrays on scales from 1e-3 (ridge coefficients) to 1e2 (OOD variances); the array's
own scale is the unit rounding works in, with a floor of 1e-12 for an array that is zero
up to rounding (the OOD reference's centre of standardised features, |x| ~ 1e-15). On
this machine the refit is bit-identical; the slack covers another CPU's fp32 convolutions
(stage 1 is pinned to the CPU in fp32, as the target pins it).
Numbers of model.json (LOSO scores, calibration, OOD thresholds) compare within the same
relative 1e-6; names, recipes, the stage-1 spec and cell types exactly.

The abundance model's network (a blend's ``mlp_*`` arrays) is the exception: its training
is not a smooth function of the features at float precision. Features changed by 1e-7
(relative, as another CPU's fp32 convolutions change them) change its weights by up to
1e-2 of their scale and the abundances it predicts for C6 by up to 1e-3. So where the
refit's other arrays are bit-identical to the shipped ones (the same features: this
machine, where the network's training runs on one thread from its own generator), its
arrays must be too; elsewhere it is compared by what it predicts, within NET_TOL (10 x
that measured 1e-3): the LOSO scores and the interval calibration it decides in model.json
(relative) and the abundances of predictions.csv (absolute).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import embed.run
import regress.fit
import regress.predict
import regress.run
from regress.bundle import read_meta
from regress.bundle_checks import read_npz
from regress.catalog import DEFAULT_MODEL, shipped_models

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-6
NET_TOL = 1e-2
# what differs between two fits of the same inputs: when, by which command, into which
# paths, with which versions, and the checksums of arrays compared by value instead
VOLATILE = {"created", "command", "fit_config", "versions", "files", "card_summary",
            "check_max_abs_diff_vs_test_csv"}


def make_variables(*names: str) -> dict[str, list[str]]:
    """The Makefile's ``NAME := value`` lines of ``names``, each split as the shell does."""
    text = (ROOT / "Makefile").read_text()
    found = {m.group(1): shlex.split(m.group(2))
             for m in re.finditer(r"^(\w+) :?= (.*)$", text, re.MULTILINE)}
    return {n: found[n] for n in names}


def network_fields(meta: Mapping[str, Any]) -> set[str]:
    """The paths of model.json that a blend's network decides (its LOSO scores and its
    intervals' calibration): compared within NET_TOL."""
    ab = meta.get("abundance") or {}
    if ab.get("kind") != "blend":
        return set()
    return {"model.json.abundance.loso", "model.json.abundance.calibration",
            f"model.json.abundance.candidates.{ab['name']}"}


def compare(shipped: Any, refit: Any, where: str = "model.json", tol: float = TOL,
            loose: frozenset[str] = frozenset()) -> None:
    """Equal structures: numbers within ``tol`` (relative; NET_TOL under the paths of
    ``loose``), everything else exactly."""
    if where in loose:
        tol = NET_TOL
    if isinstance(shipped, Mapping):
        assert isinstance(refit, Mapping) and set(shipped) == set(refit), where
        for k in set(shipped) - VOLATILE:
            compare(shipped[k], refit[k], f"{where}.{k}", tol, loose)
    elif isinstance(shipped, list):
        assert isinstance(refit, list) and len(shipped) == len(refit), where
        for k, (a, b) in enumerate(zip(shipped, refit, strict=True)):
            compare(a, b, f"{where}[{k}]", tol, loose)
    elif isinstance(shipped, float) and not isinstance(refit, bool):
        assert refit == pytest.approx(shipped, rel=tol, abs=tol * 1e-3), where
    else:
        assert refit == shipped, where


def test_make_ready_model_refits_the_shipped_files(her2st_h5, tmp_path):
    shipped = shipped_models()[DEFAULT_MODEL]
    args = make_variables("READY_BACKBONES", "READY_EMBED_ARGS", "READY_REGRESS_ARGS")
    h5, store, out, folder = (str(her2st_h5), str(tmp_path / "embeddings.zarr"),
                              str(tmp_path / "out"), tmp_path / "model")
    assert embed.run.main(["--h5", h5, "--store", store, "--backbones",
                           *args["READY_BACKBONES"], *args["READY_EMBED_ARGS"]]) == 0
    assert regress.run.main(["--h5", h5, "--store", store, "--out", out,
                             *args["READY_REGRESS_ARGS"]]) == 0
    assert regress.fit.main(["--h5", h5, "--store", store, "--out", out, "--model-dir",
                             str(folder), "--quiet"]) == 0

    want, got = read_meta(shipped), read_meta(folder)
    assert got["cell_types"] == want["cell_types"]
    assert got["features"] == want["features"]  # the stage-1 spec, exactly
    compare(want, got, loose=frozenset(network_fields(want)))
    assert set(got["files"]) == set(want["files"])
    identical, nets = True, []
    for name in sorted(n for n in want["files"] if n.endswith(".npz")):
        a, b = read_npz(shipped / name), read_npz(folder / name)
        assert set(a) == set(b), name
        for key in a:
            assert a[key].shape == b[key].shape and a[key].dtype == b[key].dtype, (name, key)
            if a[key].dtype.kind != "f":  # flags, counts: exactly
                assert np.array_equal(a[key], b[key]), (name, key)
                continue
            if key.startswith("mlp_"):    # a network's weights: below
                nets.append((name, key, np.array_equal(a[key], b[key])))
                continue
            identical &= np.array_equal(a[key], b[key])
            scale = max(float(np.abs(a[key]).max(initial=0.0)), TOL)
            gap = float(np.abs(a[key] - b[key]).max(initial=0.0))
            assert gap <= TOL * scale, (name, key, gap, scale)
    if identical:                         # the same features: the same network
        assert all(same for *_, same in nets), nets

    # the shipped model by its name predicts the test section as the refitted folder
    for model, pred in ((DEFAULT_MODEL, tmp_path / "by-name"), (str(folder), tmp_path / "p")):
        assert regress.predict.main(["--model", model, "--h5", h5, "--store", store,
                                     "--out", str(pred), "--quiet"]) == 0
    network = bool(network_fields(want))
    for name in ("predictions.csv", "rank_scores.csv"):
        a, b = (pd.read_csv(p / name) for p in (tmp_path / "by-name", tmp_path / "p"))
        assert a["slide"].unique().tolist() == ["C6"]
        values = a.select_dtypes("number").to_numpy() - b.select_dtypes("number").to_numpy()
        assert np.abs(values).max() <= (NET_TOL if network and name == "predictions.csv"
                                        else TOL), name
