"""Stage 2 on Dask (data.cluster.TaskMap): regress's LOSO folds and tune's grid on a local
cluster give the in-process scores and predictions exactly."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import regress.recipes as recipes
import regress.run
import regress.tune
from data.cluster import TaskMap, check_cluster
from data.errors import ConfigError
from regress.recipes import Recipe

TINY = (Recipe("tiny_plain", ("tiny_random",)),
        Recipe("tiny_smooth", ("tiny_random",), smooth_k=3, smooth_w=0.5))

pytest.importorskip("distributed")

ARGS = ["--features", "tiny_random", "--models", "ridge", "--targets", "spot_rank,type_rank",
        "--quiet"]


def _scores(out) -> dict:
    report = json.loads((out / "report.json").read_text())
    return {k: (v["per_slide"], v["mean"]) for k, v in report["models"].items()}


def test_task_map_in_process_keeps_order():
    assert TaskMap().map(lambda x, k: x * k, [3, 1, 2], k=10) == [30, 10, 20]


def test_cluster_flags_are_checked():
    with pytest.raises(ConfigError, match="pass one of them"):
        check_cluster(2, "tcp://x:1", None)
    with pytest.raises(ConfigError, match="needs --workers"):
        check_cluster(0, None, 2)
    with pytest.raises(ConfigError, match="--workers must be"):
        check_cluster(-1, None, None)


def test_regress_and_tune_on_workers_equal_in_process(synthetic_h5, tiny_store, tmp_path,
                                                       monkeypatch):
    monkeypatch.setattr(recipes, "RECIPES", {**recipes.RECIPES, **{r.name: r for r in TINY}})
    local, dask = tmp_path / "local", tmp_path / "dask"
    for out, extra in ((local, []), (dask, ["--workers", "2"])):
        common = ["--h5", str(synthetic_h5), "--store", str(tiny_store), "--out", str(out)]
        assert regress.run.main([*common, *ARGS, *extra]) == 0
        assert regress.tune.main([*common, "--recipes", "tiny_plain,tiny_smooth", "--quiet",
                                  *extra]) == 0
    assert _scores(local) == _scores(dask)
    for name in ("ridge-spot_rank", "ridge-type_rank"):
        for kind in ("oof", "test"):
            a = pd.read_csv(local / "predictions" / name / f"{kind}.csv")
            b = pd.read_csv(dask / "predictions" / name / f"{kind}.csv")
            pd.testing.assert_frame_equal(a, b, check_exact=True)
    tuned = [json.loads((o / "report.json").read_text())["ablation"]["rows"] for o in (local, dask)]
    strip = [{k: {f: v for f, v in row.items() if f != "seconds"} for k, row in t.items()}
             for t in tuned]
    assert strip[0] == strip[1]
