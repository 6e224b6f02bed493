"""Forward runners (embed.runners): the traced oneDNN graph gives the eager model's numbers,
pads and splits batches, keeps TTA invariance, and refuses a graph that disagrees."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embed import runners
from embed.device import DeviceChoice
from embed.extract import FeatureExtractor, ViewFeatures, preprocess
from embed.runners import EagerRunner, RunnerError, TracedRunner, make_runner, resolve_runner

FP32_CL = DeviceChoice(torch.device("cpu"), None, True)
BF16_CL = DeviceChoice(torch.device("cpu"), torch.bfloat16, True)


@pytest.fixture(scope="module")
def x(tiny):
    rng = np.random.default_rng(0)
    patches = rng.integers(0, 256, (5, 72, 72, 3), dtype=np.uint8)
    patches[:, :20, :30] //= 3  # asymmetric, so views differ
    return preprocess(patches, tiny[0])


def _module(tiny, n_views=8, stages=()):
    return ViewFeatures(tiny[1], n_views, stages, channels_last=True).eval()


def test_resolve_runner():
    assert resolve_runner("auto", FP32_CL) == "jit"
    cuda = DeviceChoice(torch.device("cuda"), torch.bfloat16, True)
    assert resolve_runner("auto", cuda) == "eager"
    assert resolve_runner("compile", cuda) == "compile"
    with pytest.raises(ValueError, match="known: auto, eager, jit, compile"):
        resolve_runner("tensorrt", FP32_CL)


def test_traced_runner_refuses_cuda(tiny):
    with pytest.raises(RunnerError, match="for CPUs"):
        TracedRunner(_module(tiny), DeviceChoice(torch.device("cuda"), None, True))


@pytest.mark.parametrize("stages", [(), "default"])
def test_jit_equals_eager_fp32(tiny, x, stages):
    stages = tiny[0].stage_indices if stages == "default" else ()
    eager = make_runner("eager", _module(tiny, 8, stages), FP32_CL)(x)
    traced = make_runner("jit", _module(tiny, 8, stages), FP32_CL)(x)
    assert len(traced) == len(eager) == (2 if stages else 1)
    for t, e in zip(traced, eager, strict=True):
        assert t.dtype == torch.float32 and t.shape == e.shape
        torch.testing.assert_close(t, e, rtol=1e-4, atol=1e-5)


def test_jit_bf16_close_to_fp32(tiny, x):
    eager = make_runner("eager", _module(tiny), FP32_CL)(x)[0]
    traced = make_runner("jit", _module(tiny), BF16_CL)(x)[0]
    r = np.corrcoef(traced.flatten().numpy(), eager.flatten().numpy())[0, 1]
    assert r > 0.99, r


def test_jit_pads_smaller_and_splits_bigger_batches(tiny, x):
    runner = make_runner("jit", _module(tiny), FP32_CL)
    full = runner(x[:4])[0]  # traces the 4-patch graph
    assert list(runner.graphs.values())[0][0] == 4
    torch.testing.assert_close(runner(x[:3])[0], full[:3], rtol=1e-5, atol=1e-6)
    five = runner(x)[0]  # split 4 + 1 (padded)
    assert five.shape[0] == 5
    torch.testing.assert_close(five[:4], full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(five[4:], runner(x[4:])[0], rtol=1e-5, atol=1e-6)
    assert len(runner.graphs) == 1  # no re-tracing for other batch sizes


class _Rows(torch.nn.Module):
    """Records the batch sizes it is called with; row i's output depends on row i only."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(len(x))
        return (x.flatten(1).sum(1, keepdim=True) * 2,)


def test_eager_pads_short_batches_on_cuda_only(x):
    # a CUDA choice on CPU tensors: autocast is off (dtype None), so only padding differs
    cuda = DeviceChoice(torch.device("cuda"), None, False)
    module = _Rows()
    full = EagerRunner(module, FP32_CL, batch=4)(x[:3])
    assert module.seen == [3]  # CPU: each batch as it comes
    out = EagerRunner(module, cuda, batch=4)(x[:3])
    assert module.seen[1:] == [4]  # padded to the one batch size cuDNN is set up for
    assert out[0].shape == (3, 1) and torch.equal(out[0], full[0])
    EagerRunner(module, cuda, batch=4)(x)  # longer than the batch: as is
    EagerRunner(module, cuda)(x[:2])  # no batch size given: as is
    assert module.seen[2:] == [5, 2]


def test_jit_new_input_shape_gets_its_own_graph(tiny, x):
    runner = make_runner("jit", _module(tiny), FP32_CL)
    runner(x)
    runner(torch.nn.functional.interpolate(x, size=(48, 48)))
    assert len(runner.graphs) == 2


def test_jit_keeps_tta_invariance(tiny, x):
    runner = make_runner("jit", _module(tiny), BF16_CL)
    base = runner(x)[0]
    rotated = runner(torch.rot90(x, 1, dims=(2, 3)).contiguous())[0]
    rel = ((rotated - base).norm() / base.norm()).item()
    assert rel < 2e-2, rel  # bf16: the views' sums add in another order


def test_graph_size_is_the_configured_batch(tiny, x):
    """A run that starts with a short batch (a resumed short last chunk) still traces a
    graph of the configured size, and its rows equal a full batch's."""
    runner = make_runner("jit", _module(tiny), FP32_CL, batch=4)
    one = runner(x[:1])[0]
    assert [size for size, _ in runner.graphs.values()] == [4]
    full = runner(x[:4])[0]
    torch.testing.assert_close(one, full[:1], rtol=1e-5, atol=1e-6)


def test_big_models_run_eager_under_auto(tiny, monkeypatch):
    module = _module(tiny)
    assert resolve_runner("auto", FP32_CL, module) == "jit"
    monkeypatch.setattr(runners, "JIT_MAX_PARAMS", 10)
    assert resolve_runner("auto", FP32_CL, module) == "eager"
    assert resolve_runner("jit", FP32_CL, module) == "jit"  # asked for by name: kept


def test_extractor_runner_choice(tiny, x):
    backbone, model = tiny
    eager = FeatureExtractor(model, backbone, FP32_CL, 4, runner="eager")(x)
    jit = FeatureExtractor(model, backbone, FP32_CL, 4, runner="auto")(x)
    assert FeatureExtractor(model, backbone, FP32_CL, 4, runner="auto").runner == "jit"
    np.testing.assert_allclose(jit["pooled"], eager["pooled"], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_compile_runner_equals_eager(tiny, x):
    """torch.compile (inductor; ~30 s to compile even the tiny model on 2 cores)."""
    eager = make_runner("eager", _module(tiny, 2), FP32_CL)
    compiled = make_runner("compile", _module(tiny, 2), FP32_CL)
    for batch in (x[:3], x):  # dynamic batch sizes, no error on the second
        torch.testing.assert_close(compiled(batch)[0], eager(batch)[0], rtol=1e-4, atol=1e-5)
