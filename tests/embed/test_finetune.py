"""The fine-tuned CNN path: head and loss, checkpoints and resume, config and presets, and
end to end on the synthetic fixture (it learns; its predictions go through submit.py)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import embed.finetune.run as finetune
import embed.run
import regress.run
import regress.submit
from data.h5 import CanonicalH5
from embed.backbones import get_backbone
from embed.device import select_device
from embed.finetune.augment import build_valid_transform, build_worker_transform
from embed.finetune.batch_augment import BatchAugment
from embed.finetune.checkpoints import check_settings, load_checkpoint, saved_epochs
from embed.finetune.config import FinetuneConfig, TrainSettings, apply_preset
from embed.finetune.data import SlidePatches, SpotDataset
from embed.finetune.fold import inner_split
from embed.finetune.loop import FoldOutcome, train_fold
from embed.finetune.model import LOSSES, SpotRegressor
from embed.finetune.run import resolve
from embed.weights import WeightsError, build_model
from regress.results import META_COLUMNS
from tests.helpers import run_submit as _submit

pytestmark = [pytest.mark.filterwarnings("ignore:The argument 'eval_set' is deprecated"),
              pytest.mark.usefixtures("one_thread")]
FP32 = select_device("cpu", "fp32")


def _tiny_model(n_out: int = 5, head: str = "sigmoid") -> SpotRegressor:
    encoder, _ = build_model(get_backbone("tiny_random"))
    torch.manual_seed(0)
    return SpotRegressor(encoder, encoder.num_features, n_out, head)


# ---- head and loss ----------------------------------------------------------------------
def test_sigmoid_head_and_l1_loss_lie_in_unit_interval():
    model = _tiny_model().train()
    x = torch.randn(6, 3, 32, 32) * 50  # large inputs: saturating logits
    out = model(x)
    assert out.shape == (6, 5)
    assert float(out.detach().min()) >= 0.0 and float(out.detach().max()) <= 1.0
    loss = LOSSES["l1"]()(out, torch.rand(6, 5))
    assert 0.0 <= float(loss.detach()) <= 1.0
    loss.backward()  # trainable end to end
    assert model.head.weight.grad is not None


def test_linear_head_is_unbounded_and_unknown_head_refused():
    model = _tiny_model(head="linear")
    with torch.no_grad():
        model.head.bias.fill_(5.0)
    assert float(model(torch.randn(2, 3, 32, 32)).detach().min()) > 1.0
    with pytest.raises(ValueError, match="head must be one of"):
        _tiny_model(head="softmax")


# ---- resume -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def patches(synthetic_h5) -> SlidePatches:
    with CanonicalH5(synthetic_h5) as h5:
        return SlidePatches.load(h5, h5.train_slides, 32)


def _fold(patches: SlidePatches, folder: Path, stop_after=None, workers=0, epochs=3,
          patience=3):
    """Hold out S_1; train on S_2 and S_3 but the inner slide (S_3, the larger)."""
    (X, Y), inner, _ = inner_split(patches, ["S_2", "S_3"], "spot_rank")
    entry = get_backbone("tiny_random")
    train = SpotDataset(X, Y, build_worker_transform(("flips", "affine", "hsv"), 32))
    augment = BatchAugment(("flips", "hsv"), entry.mean, entry.std)
    valid = build_valid_transform(entry.mean, entry.std, 32)
    st = TrainSettings(epochs=epochs, batch_size=16, lr=1e-3, weight_decay=0.01,
                       cutmix_p=0.5, loss="l1", val_tta=2, workers=workers, seed=3,
                       quiet=True, patience=patience)
    model = _tiny_model()
    outcome = train_fold(model, "S_1", folder, train, augment, inner,
                         (patches.patches["S_1"], patches.Y["S_1"]), valid, FP32, st,
                         {"lr": 1e-3}, stop_after=stop_after)
    return model, outcome


def test_resume_continues_the_same_schedule(patches, tmp_path):
    whole, full = _fold(patches, tmp_path / "whole")
    _, first = _fold(patches, tmp_path / "killed", stop_after=1)
    assert len(first.history) == 1 and saved_epochs(tmp_path / "killed") == [1]
    resumed, rest = _fold(patches, tmp_path / "killed")
    assert len(rest.history) == 3
    for a, b in zip(full.history, rest.history, strict=True):
        for key in ("lr_start", "lr_end", "loss", "val_spot", "val_type"):
            assert a[key] == b[key], key
    assert full.history[0]["lr_start"] > full.history[1]["lr_start"] > full.history[2]["lr_end"]
    assert (full.best_epoch, full.best_score) == (rest.best_epoch, rest.best_score)
    for k, v in whole.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    sa = torch.load(tmp_path / "whole" / "epoch_3.pt", weights_only=True)
    sb = torch.load(tmp_path / "killed" / "epoch_3.pt", weights_only=True)
    assert sa["scheduler"] == sb["scheduler"]
    # only the last and the best epoch are kept
    assert set(saved_epochs(tmp_path / "whole")) == {3, full.best_epoch}


def test_rerun_prunes_what_a_run_killed_before_pruning_left(patches, tmp_path):
    """Killed after saving its last epoch, before deleting the one before: the rerun, all
    epochs done, keeps what an uninterrupted run keeps."""
    _, full = _fold(patches, tmp_path)
    kept = {3, full.best_epoch}
    stale = min({1, 2} - kept)
    shutil.copy(tmp_path / "epoch_3.pt", tmp_path / f"epoch_{stale}.pt")
    _fold(patches, tmp_path)
    assert set(saved_epochs(tmp_path)) == kept


def test_workers_give_the_same_epochs_as_the_main_process(patches, tmp_path):
    """Each image's augmentation is seeded by itself: two workers that live for both
    epochs give the epochs that no worker (augmenting in this process) gives."""
    a, ha = _fold(patches, tmp_path / "a", workers=2, epochs=2)
    b, hb = _fold(patches, tmp_path / "b", workers=0, epochs=2)
    assert [r["loss"] for r in ha.history] == [r["loss"] for r in hb.history]
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def test_the_inner_slide_chooses_the_epoch_and_stops_the_training(patches, tmp_path):
    """The best epoch is the inner slide's best, whatever the held-out slide scores;
    with patience 1 the fold stops one epoch after the inner score last rose."""
    _, out = _fold(patches, tmp_path, epochs=6, patience=1)
    inner = [r["inner_spot"] for r in out.history]
    assert out.best_epoch == 1 + int(np.argmax(inner))
    assert out.best_score == max(inner)
    assert len(out.history) == min(6, out.best_epoch + 1)
    assert all(np.isfinite(r["val_spot"]) for r in out.history)  # still reported
    # a rerun of a fold that stopped trains nothing more
    kept = saved_epochs(tmp_path)
    _, again = _fold(patches, tmp_path, epochs=6, patience=1)
    assert again.history == out.history and saved_epochs(tmp_path) == kept


def test_inner_split_holds_out_the_median_slide_or_a_fifth_of_one(patches):
    (X, Y), (P, A), name = inner_split(patches, ["S_1", "S_2", "S_3"], "spot_rank")
    sizes = {s: len(patches.Y[s]) for s in ("S_1", "S_2", "S_3")}
    assert name == sorted(sizes, key=lambda s: (sizes[s], s))[1]
    assert len(X) == len(Y) == sum(sizes.values()) - sizes[name] and len(P) == len(A)
    (X, Y), (P, A), name = inner_split(patches, ["S_2"], "spot_rank")
    k = max(1, sizes["S_2"] // 5)
    assert len(P) == k and len(X) == sizes["S_2"] - k and "S_2" in name
    assert np.array_equal(P, patches.patches["S_2"][-k:])


def test_patience_counts_epochs_since_the_best():
    st = TrainSettings(epochs=10, batch_size=2, lr=1e-3, weight_decay=0.0, cutmix_p=0.0,
                       loss="l1", val_tta=1, workers=0, seed=0, patience=2)
    out = FoldOutcome(0, -np.inf)
    for epoch, score in enumerate([0.1, 0.3, 0.2, 0.25], start=1):
        assert not out.finished(st)
        out.record({"epoch": epoch, "inner_spot": score})
    assert out.best_epoch == 2 and out.finished(st)
    nan = FoldOutcome(0, -np.inf)
    nan.record({"epoch": 1, "inner_spot": float("nan")})
    assert nan.best_epoch == 1  # an epoch to predict with, even when none scores


def test_checkpoint_with_other_settings_is_refused(patches, tmp_path):
    _fold(patches, tmp_path, stop_after=1)
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.001 -> 0.1\).*--overwrite"):
        load_checkpoint(tmp_path / "epoch_1.pt", {"lr": 0.1})
    check_settings(tmp_path / "m", {"lr": 1}, overwrite=False)
    check_settings(tmp_path / "m", {"lr": 1}, overwrite=False)  # same: resumes
    with pytest.raises(ValueError, match="lr: 1 -> 2"):
        check_settings(tmp_path / "m", {"lr": 2}, overwrite=False)
    (tmp_path / "m" / "fold_x").mkdir()
    check_settings(tmp_path / "m", {"lr": 2}, overwrite=True)
    assert not (tmp_path / "m" / "fold_x").exists()


# ---- config ---------------------------------------------------------------------------
def test_presets_fill_unset_fields_and_flags_win(tmp_path):
    cfg = resolve(["--preset", "seed_baseline"])
    assert (cfg.backbone, cfg.loss, cfg.head, cfg.target, cfg.augment, cfg.cutmix_p) == (
        "resnet18", "mse", "linear", "raw", (), 0.0)
    assert cfg.fallback_backbone == "efficientnet_lite0"
    assert resolve(["--preset", "seed_baseline", "--loss", "l1"]).loss == "l1"
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "seed_baseline", "head": "sigmoid", "epochs": 2}))
    cfg = resolve(["--config", str(path), "--epochs", "4"])
    assert (cfg.head, cfg.loss, cfg.epochs) == ("sigmoid", "mse", 4)
    default = resolve(["--augment", "none", "--no-test", "--folds", "S_1,S_2"])
    assert (default.augment, default.test, default.folds) == ((), False, ("S_1", "S_2"))
    assert default.loss == "l1" and default.head == "sigmoid" and default.target == "spot_rank"


@pytest.mark.parametrize("argv, message", [
    ("--preset best", "unknown preset"),
    ("--backbone vgg", "unknown backbone"),
    ("--fallback-backbone vgg", "unknown backbone"),
    ("--augment flips,warp", "unknown augmentation"),
    ("--cutmix-p 2", "cutmix p"),
    ("--folds S_9", "folds must be train slides"),
])
def test_bad_settings_are_one_message(argv, message, synthetic_h5, tmp_path, capsys):
    code = finetune.main(["--h5", str(synthetic_h5), "--out", str(tmp_path), "--backbone",
                          "tiny_random", "--epochs", "1", "--quiet", *argv.split()])
    assert code == 2
    assert message in capsys.readouterr().err


def test_fallback_backbone_is_logged(monkeypatch, caplog):
    def fake(entry, weights=None):
        if entry.name == "resnet18":
            raise WeightsError("no real weights for backbone 'resnet18'; tried hub: offline")
        return build_model(get_backbone("tiny_random"))

    monkeypatch.setattr(finetune, "build_model", fake)
    cfg = apply_preset(FinetuneConfig(preset="seed_baseline"), set())
    with caplog.at_level(logging.WARNING, "hespot"):
        _, _, entry = finetune.build_encoder(cfg)
    assert entry.name == "efficientnet_lite0"
    assert "resnet18: no weights here" in caplog.text and "efficientnet_lite0" in caplog.text
    with pytest.raises(WeightsError):
        finetune.build_encoder(replace(cfg, fallback_backbone=None))


def test_config_and_loop_do_not_import_the_command():
    """The config lives with the config: the training loop and the config import without
    the command module (no cycle through it, type-only ones included)."""
    code = ("import sys, embed.finetune.loop, embed.finetune.config\n"
            "assert 'embed.finetune.run' not in sys.modules, 'embed.finetune.run imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parents[2],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


# ---- end to end on the synthetic fixture --------------------------------------------------
MODEL = "finetune-tiny_random"
ARGS = ["--backbone", "tiny_random", "--patch-px", "64", "--epochs", "12", "--batch-size", "16",
        "--lr", "2e-3", "--augment", "flips", "--cutmix-p", "0", "--workers", "0",
        "--precision", "fp32", "--tta", "2", "--threads", "1", "--quiet"]


@pytest.fixture(scope="module")
def out(synthetic_h5, tmp_path_factory) -> Path:
    """Stage 2 (ridge + constant on tiny_random embeddings), then the fine-tuned model, in
    one OUT folder."""
    out = tmp_path_factory.mktemp("finetune")
    store = out / "embeddings.zarr"
    assert embed.run.main(["--h5", str(synthetic_h5), "--store", str(store), "--backbones",
                           "tiny_random", "--patch-px", "64", "--tta", "1", "--quiet"]) == 0
    assert regress.run.main(["--h5", str(synthetic_h5), "--store", str(store), "--out",
                             str(out), "--features", "tiny_random", "--models", "ridge",
                             "--quiet"]) == 0
    assert finetune.main(["--h5", str(synthetic_h5), "--out", str(out), *ARGS]) == 0
    return out


def test_learns_above_the_constant_baseline(out):
    models = json.loads((out / "report.json").read_text())["models"]
    tuned, constant = models[MODEL], models["constant-spot_rank"]
    assert tuned["mean"]["spot"] > constant["mean"]["spot"] + 0.25
    for slide, s in tuned["per_slide"].items():
        assert s["spot"] > constant["per_slide"][slide]["spot"] + 0.1, slide


def test_report_entry_has_stage_2_keys(out):
    report = json.loads((out / "report.json").read_text())
    entry, ridge = report["models"][MODEL], report["models"]["ridge-spot_rank"]
    assert set(entry) == set(ridge)
    assert entry["kind"] == "finetune" and entry["target"] == "spot_rank"
    assert set(entry["per_slide"]) == {"S_1", "S_2", "S_3"}
    assert list(entry["per_type"]) == report["cell_types"]
    fitted = entry["fitted"]
    assert set(fitted["best_epoch"]) == {"S_1", "S_2", "S_3"}
    for fold, h in fitted["history"].items():  # 12 epochs, or 3 after the inner best
        best = fitted["best_epoch"][fold]
        assert 1 <= best <= 12 and len(h) == min(12, best + 3)
        assert best == 1 + int(np.argmax([r["inner_spot"] for r in h]))
    assert fitted["inner"] == {"S_1": "S_3", "S_2": "S_3", "S_3": "S_2"}
    assert MODEL in (out / "report.md").read_text()


def test_predictions_in_stage_2_format(out, synthetic_h5):
    for which in ("oof", "test"):
        ours = pd.read_csv(out / "predictions" / MODEL / f"{which}.csv")
        ridge = pd.read_csv(out / "predictions" / "ridge-spot_rank" / f"{which}.csv")
        assert list(ours.columns) == list(ridge.columns)
        assert list(ours.columns[:len(META_COLUMNS)]) == META_COLUMNS
        pd.testing.assert_frame_equal(ours[META_COLUMNS], ridge[META_COLUMNS])
        values = ours.iloc[:, len(META_COLUMNS):].to_numpy()
        assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1


def test_checkpoints_per_fold(out):
    root = out / "finetune" / MODEL
    assert (root / "settings.json").is_file()
    for slide in ("S_1", "S_2", "S_3"):
        history = json.loads((out / "report.json").read_text())["models"][MODEL][
            "fitted"]["history"][slide]
        assert len(history) in saved_epochs(root / f"fold_{slide}")
        assert (root / f"fold_{slide}" / "predictions_tta2.npz").is_file()


def test_submit_accepts_it_alone_and_in_an_ensemble(out, synthetic_h5, tmp_path):
    with CanonicalH5(synthetic_h5) as h5:
        ids = regress.submit.expected_ids(h5)
        types = list(h5.cell_types)
    for models in (MODEL, f"ridge-spot_rank,{MODEL}"):
        sub_path = tmp_path / "submission.csv"
        assert _submit(synthetic_h5, out, "--models", models, "--submission", str(sub_path),
                       "--h5ad", str(tmp_path / "p.h5ad")) == 0
        sub = pd.read_csv(sub_path)
        assert list(sub.columns) == ["ID", *types] and list(sub["ID"]) == ids
        assert sub[types].to_numpy().min() >= 0 and sub[types].to_numpy().max() <= 1


def test_rerun_resumes_without_training_and_other_settings_refused(out, synthetic_h5, capsys):
    before = (out / "predictions" / MODEL / "oof.csv").read_text()
    entry = finetune.run(resolve(["--h5", str(synthetic_h5), "--out", str(out), *ARGS]))
    assert (out / "predictions" / MODEL / "oof.csv").read_text() == before
    assert entry["mean"]["spot"] == json.loads(
        (out / "report.json").read_text())["models"][MODEL]["mean"]["spot"]
    code = finetune.main(["--h5", str(synthetic_h5), "--out", str(out), *ARGS, "--lr", "1e-3"])
    assert code == 2
    assert "other settings (lr: 0.002 -> 0.001)" in capsys.readouterr().err


def test_seed_baseline_preset_runs(synthetic_h5, tmp_path):
    """MSE on raw abundances with a linear head; its own model id beside the default's."""
    assert finetune.main(["--h5", str(synthetic_h5), "--out", str(tmp_path), "--preset",
                          "seed_baseline", "--backbone", "tiny_random", "--patch-px", "64",
                          "--epochs", "2", "--folds", "S_1,S_2", "--no-test", "--workers",
                          "0", "--precision", "fp32", "--threads", "1", "--quiet"]) == 0
    entry = json.loads((tmp_path / "report.json").read_text())["models"][
        "finetune-seed_baseline-tiny_random"]
    assert entry["target"] == "raw" and set(entry["per_slide"]) == {"S_1", "S_2"}
    assert entry["config"]["loss"] == "mse" and entry["config"]["head"] == "linear"
    assert entry["config"]["tta"] == 1
    test = pd.read_csv(tmp_path / "predictions" / "finetune-seed_baseline-tiny_random" /
                       "test.csv")
    assert len(test) == 0 and list(test.columns[:len(META_COLUMNS)]) == META_COLUMNS
