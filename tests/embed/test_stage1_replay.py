"""``predict`` replays a model's stage 1 (regress.stage1_spec.stage1_config) through
``embed.run``'s own config loading (``--config -``): the replayed run asks for the training
run's item, views, patch, padding, batch and chunk sizes; only the files and the run-time
choices (device, weights file, threads) are predict's."""

from __future__ import annotations

import io
import json

import pytest

from data.cli import resolve_config
from data.store import FeatureSpec, slide_attrs
from embed.config import EmbedConfig, check_config, parse_item
from embed.run import build_parser, run
from regress.stage1_spec import read_spec, stage1_config

SLIDE = "S_1"
VALUE_FIELDS = ("tta", "patch_px", "patch_um", "pad_mode", "batch_spots", "chunk_spots")


def _replayed(monkeypatch, settings: dict) -> EmbedConfig:
    """``settings`` read as ``python -m embed.run --config -`` reads them from stdin."""
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(settings)))
    return resolve_config(EmbedConfig, build_parser().parse_args(["--config", "-"]))


@pytest.mark.parametrize("item, array, patch", [
    ("tiny_random+macenko+stages+96+40um", "stages_40um", {"patch_px": 64}),
    ("tiny_random+80", "features_80px", {"patch_um": 48.0}),
])
def test_the_replay_asks_for_the_training_run(synthetic_h5, tmp_path, monkeypatch, item,
                                              array, patch):
    store = tmp_path / "train.zarr"
    trained = EmbedConfig(h5=str(synthetic_h5), store=str(store), backbones=(item,),
                          slides=(SLIDE,), tta=2, pad_mode="constant", batch_spots=8,
                          chunk_spots=20, device="cpu", quiet=True, **patch)
    run(trained)
    (job,) = check_config(trained)
    part = read_spec(str(store), FeatureSpec(job.key, array), [SLIDE])
    settings = stage1_config(part, str(synthetic_h5), str(tmp_path / "new.zarr"),
                             ["S_4"], weights="unused.safetensors", device="cuda", threads=3)
    replay = _replayed(monkeypatch, settings)
    assert check_config(replay) == [job] == [parse_item(str(job))]
    recorded = slide_attrs(store, job.key, SLIDE)["info"]["config"]
    for field in VALUE_FIELDS:
        assert getattr(replay, field) == recorded[field], field
    # predict's own: the files, slides and run-time choices (no weights file: a hub model)
    assert (replay.h5, replay.store, replay.slides) == (str(synthetic_h5),
                                                       str(tmp_path / "new.zarr"), ("S_4",))
    assert (replay.device, replay.threads, replay.weights, replay.quiet) == ("cuda", 3, None,
                                                                            True)
    # the rest are embed's defaults, not the training run's run-time choices
    assert replay.precision == "auto" and replay.workers == 0 and not replay.overwrite
