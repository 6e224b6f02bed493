"""How the forward pass runs: a registry of runners (eager autocast, traced oneDNN graph,
torch.compile), picked per device.

A runner wraps a module whose ``forward(x)`` returns a tuple of tensors and gives back a
callable with the same outputs, in float32. Measured on the 2-core AMX CPU
(efficientnet_lite0, 32 views per forward, 2 threads; ``make bench-embed`` and the
figures in issue 4's note): eager bf16 autocast + channels_last 175 views/s;
bf16 weights eager 187; ``torch.compile`` 188 (45 s to compile), with inductor freezing
240 (15 s); ``torch.jit.trace`` + ``freeze`` 247; the same with oneDNN graph fusion 292-303
(about 1.5 s once per graph: trace, fusion compile, the check against eager).
mobilenet_v2: eager 210, oneDNN fusion 396.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from data.errors import ConfigError
from embed.device import DeviceChoice

log = logging.getLogger("hespot")

Outputs = tuple[torch.Tensor, ...]

#: above this error against the eager outputs a traced graph is not used: relative error of
#: the features centred over the batch's spots (the spot-to-spot variation stage 2 learns
#: from). Measured on sample patches: bf16 graph vs fp32 eager 0.11-0.13 (bf16 autocast vs
#: fp32 0.05-0.07); rows of the batch shuffled 0.8-1.5
MAX_ERROR = 0.35
#: models with more parameters run eager under "auto": the graph holds a second copy
JIT_MAX_PARAMS = 100_000_000
#: rows (spots) of a new graph's first batch that are also run eagerly for the check: the
#: eager model is the slowest part of a graph's start (~0.2 s per efficientnet_lite0 spot)
CHECK_ROWS = 2
#: most runs of a new graph before its outputs must be stable (they are from the 2nd on)
MAX_WARMUP = 6


class RunnerError(ConfigError):
    """A runner cannot serve this model or device."""


def _as_float(outputs: Outputs) -> Outputs:
    return tuple(o.float() for o in outputs)


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    """(n, ...) -> (size, ...) with the last row repeated; ``x`` itself when n >= size."""
    if len(x) >= size:
        return x
    return torch.cat([x, x[-1:].expand(size - len(x), *x.shape[1:])])


@dataclass
class EagerRunner:
    """The module as is, under the device's autocast.

    On CUDA, batches shorter than ``batch`` are padded to it (and the padding dropped from
    the outputs), so cuDNN sees one input shape: on an H100 (efficientnet_lite0, bf16,
    channels_last) every call with another batch size took 2.3-3.1 s against 0.03 s, which
    made a slide's last, short batch cost 100 full ones. Padding also keeps a spot's
    features independent of where a (resumed) run's batches fall."""

    module: nn.Module
    choice: DeviceChoice
    batch: int | None = None  # CUDA: the one batch size run; None: each batch as is

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> Outputs:
        n = len(x)
        size = self.batch if self.batch and self.choice.device.type == "cuda" else n
        with self.choice.autocast():
            return tuple(o[:n] for o in _as_float(self.module(_pad(x, size))))


@dataclass
class TracedRunner:
    """CPU: weights cast to the autocast dtype, ``torch.jit.trace`` + ``freeze`` with
    oneDNN graph fusion (conv + batch norm + activation fused, weights prepacked).

    One graph per input shape (C, H, W) and ``batch`` rows (default: the first batch's),
    traced at the first batch of that shape; smaller batches are padded to ``batch`` so the
    graph never re-specialises, bigger ones are split. Each new graph is checked against
    the eager module (under autocast) on its first batch: above :data:`MAX_ERROR` it raises
    :class:`RunnerError` rather than return other numbers.
    """

    module: nn.Module
    choice: DeviceChoice
    batch: int | None = None

    def __post_init__(self) -> None:
        if self.choice.device.type != "cpu":
            raise RunnerError("the traced oneDNN runner is for CPUs; use eager or compile")
        self.module.eval()
        self.dtype = self.choice.dtype or torch.float32
        self.cast = (copy.deepcopy(self.module).to(self.dtype)
                     if self.dtype != torch.float32 else self.module)
        self.graphs: dict[tuple[int, ...], tuple[int, torch.jit.ScriptModule]] = {}

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.choice.channels_last \
            else x

    def _trace(self, x: torch.Tensor) -> tuple[torch.jit.ScriptModule, Outputs]:
        """A frozen graph for ``x``'s shape, run until it settles, and its outputs on ``x``.

        The profiling executor runs the first call unfused and fuses from the second on,
        with other rounding: features would depend on how many batches a run had done, and
        a resumed run would not equal an uninterrupted one. So the graph is run on the first
        batch until two calls agree bit for bit (the second and third call, measured)."""
        torch.jit.enable_onednn_fusion(True)
        with warnings.catch_warnings():
            # torch 2.14 marks trace/freeze deprecated in favour of torch.compile, which
            # measured slower here (see the module docstring); they still work as before
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # traced on one row: tracing runs the unfused bf16 model once and records every
            # op in Python (0.35 s for one efficientnet_lite0 patch, 0.97 s for 4); the
            # graph is not fixed to that batch size, and is run and checked on the full one
            graph = torch.jit.freeze(torch.jit.trace(self.cast, x[:1], check_trace=False))
            last = _as_float(graph(x))
            for _ in range(MAX_WARMUP):
                out = _as_float(graph(x))
                if all(torch.equal(a, b) for a, b in zip(out, last, strict=True)):
                    return graph, out
                last = out
        raise RunnerError(f"the traced graph's outputs still changed after {MAX_WARMUP + 1} "
                          "runs on the same input; use --runner eager")

    def _check(self, x: torch.Tensor, got: Outputs) -> None:
        with self.choice.autocast():
            want = _as_float(self.module(x))
        for g, w in zip(got, want, strict=True):
            if g.shape != w.shape:
                raise RunnerError(f"traced graph gives shape {tuple(g.shape)}, the eager "
                                  f"model {tuple(w.shape)}; use --runner eager")
            if len(w) > 1:  # judge the variation between spots, not the mean feature
                g, w = g - g.mean(0), w - w.mean(0)
            err = ((g - w).norm() / w.norm().clamp_min(1e-12)).item()
            if not err <= MAX_ERROR:
                raise RunnerError(f"traced graph disagrees with the eager model (relative "
                                  f"error {err:.3f} > {MAX_ERROR}); use --runner eager")

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> Outputs:
        key, n = tuple(x.shape[1:]), x.shape[0]
        if key not in self.graphs:
            size = self.batch or n
            first = _pad(x[:size], size)  # e.g. a resumed run starting at a short chunk
            graph, out = self._trace(self._input(first))
            self._check(first[:CHECK_ROWS], tuple(o[:CHECK_ROWS] for o in out))
            self.graphs[key] = (size, graph)
            log.debug("traced a %s graph for input %s", self.dtype, tuple(first.shape))
            if n <= size:
                return tuple(o[:n] for o in out)
        size, graph = self.graphs[key]
        if n > size:
            parts = [self(x[i:i + size]) for i in range(0, n, size)]
            return tuple(torch.cat(p) for p in zip(*parts, strict=True))
        return tuple(o[:n] for o in _as_float(graph(self._input(_pad(x, size)))))


@dataclass
class CompiledRunner:
    """``torch.compile`` (inductor) under the device's autocast; dynamic batch sizes."""

    module: nn.Module
    choice: DeviceChoice
    batch: int | None = None  # unused: compiled with dynamic batch sizes

    def __post_init__(self) -> None:
        self.compiled = torch.compile(self.module, dynamic=True)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> Outputs:
        with self.choice.autocast():
            return _as_float(self.compiled(x))


RUNNERS: dict[str, Callable[..., Callable[..., Outputs]]] = {
    "eager": EagerRunner,
    "jit": TracedRunner,
    "compile": CompiledRunner,
}


def resolve_runner(name: str, choice: DeviceChoice, module: nn.Module | None = None) -> str:
    """``auto``: the traced oneDNN graph on a CPU (fastest measured), eager on CUDA and for
    models over :data:`JIT_MAX_PARAMS` parameters (ViT-L pathology encoders: the traced
    path would hold a second copy of their weights)."""
    if name == "auto":
        if choice.device.type != "cpu":
            return "eager"
        if module is not None and sum(p.numel() for p in module.parameters()) > JIT_MAX_PARAMS:
            return "eager"
        return "jit"
    if name not in RUNNERS:
        raise ConfigError(f"unknown runner {name!r}; known: auto, {', '.join(RUNNERS)}")
    return name


def make_runner(name: str, module: nn.Module, choice: DeviceChoice,
                batch: int | None = None) -> Callable[..., Outputs]:
    """A runner from :data:`RUNNERS` (after :func:`resolve_runner`) around ``module``;
    ``batch``: the rows per call the caller will use (fixes the traced graph's size)."""
    return RUNNERS[resolve_runner(name, choice, module)](module, choice, batch)
