"""The traced runner's check against the eager model (embed.runners.TracedRunner._check):
its decision does not depend on what the first batch shows (blank glass, one tissue type),
it never changes the returned features, and a graph that fails it falls back to eager with
a warning instead of stopping the run."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from embed import runners
from embed.device import DeviceChoice
from embed.extract import ViewFeatures, preprocess
from embed.runners import MAX_ERROR, TracedRunner, _as_float, _pad, make_runner

BF16_CL = DeviceChoice(torch.device("cpu"), torch.bfloat16, True)
FALLBACK = "falling back to the eager model"


def _module(tiny) -> ViewFeatures:
    return ViewFeatures(tiny[1], 2, tiny[0].stage_indices, channels_last=True).eval()


def _patches(kind: str, n: int = 4) -> np.ndarray:
    """uint8 (n, 64, 64, 3) first batches of several kinds."""
    rng = np.random.default_rng(1)
    if kind == "constant":  # every pixel of every spot the same
        return np.full((n, 64, 64, 3), 235, np.uint8)
    if kind == "glass":  # blank glass: bright, +-2 sensor noise
        return (235 + rng.integers(-2, 3, (n, 64, 64, 3))).astype(np.uint8)
    if kind == "one_tissue":  # the same patch, a little noise on each copy
        base = rng.integers(80, 200, (1, 64, 64, 3))
        return np.clip(base + rng.integers(-2, 3, (n, 64, 64, 3)), 0, 255).astype(np.uint8)
    patches = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)  # varied
    patches[:, :20, :30] //= 3
    return patches


def _eager(tiny, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The eager module under the bf16 autocast EagerRunner uses."""
    with torch.inference_mode(), BF16_CL.autocast():
        return tuple(o.float() for o in _module(tiny)(x))


def _graph_outputs(runner: TracedRunner, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What the runner's recorded graph gives for ``x`` (one run, padded to its size)."""
    size, graph = runner.graphs[tuple(x.shape[1:])]
    assert graph is not None, "the input shape runs eagerly"
    with torch.inference_mode():
        out = _as_float(graph(runner._input(_pad(x, size))))
    return tuple(o[:len(x)] for o in out)


def _hespot_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "hespot" and r.levelno >= logging.WARNING]


@pytest.mark.parametrize("kind", ["constant", "glass", "one_tissue", "varied"])
def test_correct_graph_passes_whatever_the_first_batch_shows(tiny, kind, caplog):
    """(a, c) The bf16 graph is used after a first batch of blank glass as after varied
    tissue: no warning, and the returned features are the graph's, bit for bit."""
    x = preprocess(_patches(kind), tiny[0])
    with caplog.at_level(logging.WARNING, logger="hespot"):
        runner = make_runner("jit", _module(tiny), BF16_CL, batch=4)
        first = runner(x)
        again = runner(x)
    assert not _hespot_warnings(caplog)
    for f, a, g in zip(first, again, _graph_outputs(runner, x), strict=True):
        assert torch.equal(f, g) and torch.equal(a, g)


def test_check_does_not_look_at_the_first_batch(tiny, caplog):
    """(c) The check's measured error is the same number whatever the first batch shows."""
    errors = []
    for kind in ("constant", "glass", "one_tissue", "varied"):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="hespot"):
            make_runner("jit", _module(tiny), BF16_CL, batch=4)(
                preprocess(_patches(kind), tiny[0]))
        (message,) = [r.getMessage() for r in caplog.records if "relative error" in r.getMessage()]
        errors.append(float(message.split("relative error ")[1].split(" ")[0]))
    assert len(set(errors)) == 1 and errors[0] <= MAX_ERROR, errors


def test_old_centring_would_have_refused_blank_glass(tiny):
    """The failure the fixed probes fix (and proof that the "glass" batch above shows it):
    centred over two blank-glass spots, the bf16 graph's error against eager is above
    MAX_ERROR (bf16 rounding against a tiny spot-to-spot variation)."""
    x = preprocess(_patches("glass", 2), tiny[0])
    runner = make_runner("jit", _module(tiny), BF16_CL)
    got, want = runner(x)[0], _eager(tiny, x)[0]
    got, want = got - got.mean(0), want - want.mean(0)
    assert ((got - want).norm() / want.norm()).item() > MAX_ERROR


def _rolled(monkeypatch) -> None:
    """Traced graphs that give each row another row's features."""
    trace = TracedRunner._trace

    def broken(self, inputs):
        graph, out = trace(self, inputs)
        return (lambda z: tuple(o.roll(1, 0) for o in graph(z))), out

    monkeypatch.setattr(TracedRunner, "_trace", broken)


@pytest.mark.parametrize("kind", ["glass", "varied"])
def test_disagreeing_graph_falls_back_to_eager(tiny, kind, monkeypatch, caplog):
    """(b, c) A graph with rows shuffled is dropped with a warning naming the error and
    the threshold, whatever the first batch shows; the runner returns eager outputs for
    that batch and the next ones, and does not raise."""
    _rolled(monkeypatch)
    x = preprocess(_patches(kind), tiny[0])
    with caplog.at_level(logging.WARNING, logger="hespot"):
        runner = make_runner("jit", _module(tiny), BF16_CL, batch=4)
        first, short = runner(x), runner(x[:3])
    (message,) = _hespot_warnings(caplog)
    assert "disagrees with the eager model" in message and FALLBACK in message
    assert f"> {MAX_ERROR}" in message
    err = float(message.split("relative error ")[1].split(" ")[0])
    assert err > 1.5  # rows swapped: about 2, far from the bf16 graph's error
    assert runner.graphs[tuple(x.shape[1:])][1] is None
    for got, want in zip(first, _eager(tiny, x), strict=True):
        assert torch.equal(got, want)
    for got, want in zip(short, _eager(tiny, x[:3]), strict=True):
        assert torch.equal(got, want)


def test_shape_mismatch_falls_back_to_eager(tiny, monkeypatch, caplog):
    trace = TracedRunner._trace

    def narrow(self, inputs):
        graph, out = trace(self, inputs)
        return (lambda z: tuple(o[:, 1:] for o in graph(z))), out

    monkeypatch.setattr(TracedRunner, "_trace", narrow)
    _assert_falls_back(tiny, caplog, "shapes")


def _assert_falls_back(tiny, caplog, reason: str) -> None:
    """The jit runner, on varied patches, warns once (naming ``reason`` and the fallback)
    and returns the eager model's outputs."""
    x = preprocess(_patches("varied"), tiny[0])
    with caplog.at_level(logging.WARNING, logger="hespot"):
        out = make_runner("jit", _module(tiny), BF16_CL)(x)
    (message,) = _hespot_warnings(caplog)
    assert reason in message and FALLBACK in message
    for got, want in zip(out, _eager(tiny, x), strict=True):
        assert torch.equal(got, want)


def test_unsettled_graph_falls_back_to_eager(tiny, monkeypatch, caplog):
    """A graph whose outputs keep changing on the same input is dropped, not raised."""
    freeze = torch.jit.freeze

    class Drifting:
        def __init__(self, graph):
            self.graph, self.calls = graph, 0

        def __call__(self, z):
            self.calls += 1
            return tuple(o + self.calls for o in self.graph(z))

    monkeypatch.setattr(runners.torch.jit, "freeze", lambda m: Drifting(freeze(m)))
    _assert_falls_back(tiny, caplog, "still changed")
