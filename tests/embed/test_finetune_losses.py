"""The fine-tuned CNN's soft-rank (differentiable Spearman) losses: they approach 1 - the
challenge's Spearman as the temperature falls, their gradients flow (also under bf16 / fp16),
a tiny model trained on them ranks better, and their settings are part of what a resume
must agree with."""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import rankdata

from data.errors import ConfigError
from embed.device import select_device
from embed.finetune.checkpoints import check_settings
from embed.finetune.config import FinetuneConfig, TrainSettings, check_config
from embed.finetune.epoch import Optimisation, train_step
from embed.finetune.losses import LOSSES, RANK_LOSSES, SoftRankLoss, build_loss, hard_rank
from embed.finetune.run import main as finetune_main
from embed.finetune.run import resolve, training_settings
from regress.metrics import spearman_per_spot, spearman_per_type

FP32 = select_device("cpu", "fp32")


pytestmark = pytest.mark.usefixtures("one_thread")


def _data(n=24, t=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, t, generator=g), torch.rand(n, t, generator=g)


def _one_minus(metric, Y, P) -> float:
    return 1.0 - float(metric(Y.numpy(), P.detach().numpy()).mean())


def test_registry_and_cli_names():
    assert {"l1", "mse", "soft_rank", "l1+soft_rank"} <= set(LOSSES)
    assert set(RANK_LOSSES) <= set(LOSSES)
    assert resolve(["--loss", "soft_rank"]).loss == "soft_rank"
    assert resolve([]).loss == "l1" and resolve([]).rank_type_weight == 0.0
    with pytest.raises(ConfigError, match="unknown loss 'rank'.*soft_rank"):
        build_loss("rank")
    with pytest.raises(ConfigError, match="tau > 0"):
        build_loss("soft_rank", tau=0.0)
    with pytest.raises(ConfigError, match="rank tau > 0"):
        check_config(FinetuneConfig(loss="soft_rank", rank_tau=-1.0))


def test_hard_rank_is_average_tie_rank():
    y = torch.tensor([[0.3, 0.1, 0.3, 0.9], [1.0, 1.0, 1.0, 1.0]])
    np.testing.assert_allclose(hard_rank(y, 1).numpy(), rankdata(y.numpy(), axis=1))
    np.testing.assert_allclose(hard_rank(y, 0).numpy(), rankdata(y.numpy(), axis=0))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_approaches_one_minus_spearman_as_tau_falls(seed):
    P, Y = _data(seed=seed)
    Y[:, :3] = Y[:, :1]  # tied targets: average ranks, as the metric
    want = _one_minus(spearman_per_spot, Y, P)
    gaps = [abs(float(SoftRankLoss(tau)(P, Y)) - want) for tau in (1.0, 0.1, 0.01, 1e-4)]
    assert gaps[-1] < 1e-4, gaps
    assert gaps[0] > gaps[-1]
    # with the per-type term: + weight x (1 - per-type Spearman over the batch)
    both = float(SoftRankLoss(1e-4, type_weight=0.5)(P, Y))
    assert both == pytest.approx(want + 0.5 * _one_minus(spearman_per_type, Y, P), abs=1e-4)
    # l1+soft_rank: their sum
    combined = float(build_loss("l1+soft_rank", tau=1e-4)(P, Y))
    assert combined == pytest.approx(want + float((P - Y).abs().mean()), abs=1e-4)


def test_constant_target_rows_are_left_out():
    P, Y = _data()
    Yc = Y.clone()
    Yc[:5] = 0.25
    loss = SoftRankLoss(1e-4)
    assert float(loss(P, Yc)) == pytest.approx(float(loss(P[5:], Y[5:])), abs=1e-5)
    assert float(loss(P[:5], Yc[:5])) == pytest.approx(1.0)  # no line to learn from


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", RANK_LOSSES)
def test_gradients_flow_and_are_finite(name, dtype):
    P, Y = _data()
    P[0] = 0.5  # a constant prediction row: no NaN
    P = P.to(dtype).requires_grad_()
    loss = build_loss(name, type_weight=0.3)(P, Y.to(dtype))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(P.grad).all() and float(P.grad.abs().sum()) > 0


def test_float32_under_bf16_autocast():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 12)
    x, (_, Y) = torch.randn(24, 8), _data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        loss = SoftRankLoss()(out, Y)
    assert out.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all() and float(layer.weight.grad.abs().sum()) > 0
    assert float(loss.detach()) == pytest.approx(
        float(SoftRankLoss()(out.detach().float(), Y)), abs=1e-6)


@pytest.mark.parametrize("name", RANK_LOSSES)
def test_a_few_steps_raise_the_per_spot_spearman(name):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 10, generator=g)
    Y = torch.softmax(X @ torch.randn(10, 8, generator=g) + 0.5 * torch.randn(64, 8,
                                                                             generator=g), 1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 8), torch.nn.Sigmoid())
    st = TrainSettings(epochs=1, batch_size=64, lr=0.05, weight_decay=0.0, cutmix_p=0.0,
                       loss=name, val_tta=1, workers=0, seed=0)
    optim = Optimisation.build(model, st, len(X), FP32)

    def spot() -> float:
        with torch.no_grad():
            return float(spearman_per_spot(Y.numpy(), model(X).numpy()).mean())

    before = spot()
    losses = [float(train_step(model, X, Y, optim.opt, optim.scaler, optim.loss_fn,
                               FP32).detach())
              for _ in range(25)]
    assert spot() > before + 0.2, (before, spot())
    assert losses[-1] < losses[0]


def _settings(cfg: FinetuneConfig) -> dict:
    data = SimpleNamespace(fingerprints={"S_1": "f"}, targets_sha256=lambda: "t")
    return training_settings(cfg, "tiny_random", "w", "float32", data)


def test_rank_settings_are_part_of_what_a_resume_must_agree_with(tmp_path):
    l1, rank = FinetuneConfig(), FinetuneConfig(loss="soft_rank")
    # the loss itself: a resume with another loss is refused
    check_settings(tmp_path / "m", _settings(l1), overwrite=False)
    with pytest.raises(ValueError, match="loss: 'l1' -> 'soft_rank'"):
        check_settings(tmp_path / "m", _settings(rank), overwrite=False)
    # L1 does not use tau: changing it does not refuse a resume (nor older runs' folders)
    assert _settings(replace(l1, rank_tau=0.5)) == _settings(l1)
    assert "rank_tau" not in _settings(l1)
    # a soft-rank run: tau and the per-type weight are compared
    check_settings(tmp_path / "r", _settings(rank), overwrite=False)
    with pytest.raises(ValueError, match="rank_tau: 0.1 -> 0.5"):
        check_settings(tmp_path / "r", _settings(replace(rank, rank_tau=0.5)), overwrite=False)
    with pytest.raises(ValueError, match="rank_type_weight: 0.0 -> 1.0"):
        check_settings(tmp_path / "r", _settings(replace(rank, rank_type_weight=1.0)),
                       overwrite=False)


def test_a_soft_rank_run_resumes_and_refuses_another_tau(synthetic_h5, tmp_path, capsys):
    args = ["--h5", str(synthetic_h5), "--out", str(tmp_path), "--backbone", "tiny_random",
            "--patch-px", "32", "--epochs", "1", "--batch-size", "16", "--augment", "none",
            "--cutmix-p", "0", "--folds", "S_1", "--no-test", "--workers", "0",
            "--precision", "fp32", "--threads", "1", "--tta", "1", "--quiet",
            "--loss", "soft_rank", "--rank-tau", "0.2"]
    assert finetune_main(args) == 0
    model = tmp_path / "finetune" / "finetune-tiny_random"
    settings = json.loads((model / "settings.json").read_text())
    assert (settings["loss"], settings["rank_tau"], settings["rank_type_weight"]) == (
        "soft_rank", 0.2, 0.0)
    report = json.loads((tmp_path / "report.json").read_text())
    history = report["models"]["finetune-tiny_random"]["fitted"]["history"]["S_1"]
    assert np.isfinite(history[0]["loss"]) and 0 < history[0]["loss"] < 2
    assert finetune_main(args) == 0  # the same settings: resumes (nothing left to train)
    assert finetune_main([*args, "--rank-tau", "0.1"]) == 2
    assert "rank_tau: 0.2 -> 0.1" in capsys.readouterr().err
