"""How the forward pass runs: a registry of runners (eager autocast, traced oneDNN graph,
torch.compile), picked per device.

A runner wraps a module whose ``forward(x)`` returns a tuple of tensors and gives back a
callable with the same outputs, in float32. Measured on the 2-core AMX CPU
(efficientnet_lite0, 32 views per forward, 2 threads; ``make bench-embed`` and the
figures in issue 4's note): eager bf16 autocast + channels_last 175 views/s;
bf16 weights eager 187; ``torch.compile`` 188 (45 s to compile), with inductor freezing
240 (15 s); ``torch.jit.trace`` + ``freeze`` 247; the same with oneDNN graph fusion 292-303
(about 1.5 s once per graph: trace, fusion compile, the check against eager; the check
also runs the graph once more, one batch's time, on its probe inputs).
mobilenet_v2: eager 210, oneDNN fusion 396.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from data.errors import ConfigError
from embed.device import DeviceChoice

log = logging.getLogger("hespot")

Outputs = tuple[torch.Tensor, ...]

#: above this error against the eager outputs a traced graph is not used (that input shape
#: runs eagerly instead): relative error of the features of the check's two fixed inputs
#: (:func:`_probes`), centred over the two. Measured (efficientnet_lite0, 8 views, stages;
#: bf16 graph): against bf16-autocast eager (the check) 0.10 pooled / 0.05 stages, against
#: fp32 eager 0.15 / 0.09; the graph's rows swapped 2.0, its model's weights off by 10 % of
#: their spread 1.19. Centring instead over two spots of a slide, as this check once did:
#: real tissue 0.08-0.17, blank glass from the slides' corners 0.45-0.53, synthetic glass
#: (uint8 235 +-2) 1.0-1.2, so blank first spots stopped runs; a real spot with one probe
#: still gave 0.46 on synthetic glass (bf16 rounding moves flat input's features: there
#: bf16-autocast eager is itself 20-40 % of a feature vector off fp32 or the graph)
MAX_ERROR = 0.35
#: models with more parameters run eager under "auto": the graph holds a second copy
JIT_MAX_PARAMS = 100_000_000
#: seed of the check's probe images (fixed: the check is the same on every run)
PROBE_SEED = 0
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


def _probes(like: torch.Tensor) -> torch.Tensor:
    """The check's fixed inputs, (2, C, H, W) in ``like``'s dtype (``like``: one (C, H, W)
    row): pixel noise, and smooth random blobs (a 7 x 7 grid, upsampled). Both lie in
    [-1, 1], inside every backbone's normalised range (mean/std 0.5: [-1, 1]; ImageNet's:
    about [-2.1, 2.6]); their features are far apart, as no two patches of a slide need be."""
    gen = torch.Generator().manual_seed(PROBE_SEED)
    channels, height, width = like.shape
    noise = torch.rand(channels, height, width, generator=gen) * 2 - 1
    coarse = torch.rand(1, channels, 7, 7, generator=gen) * 2 - 1
    blobs = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
    return torch.stack([noise, blobs[0].clamp(-1, 1)]).to(like.dtype)


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
    the eager module (under autocast) on a probe batch (:meth:`_check`); a graph that
    disagrees, gives other shapes or never settles is dropped with a warning, and that input
    shape runs eagerly (as :class:`EagerRunner`) from its first batch on.
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
        self.eager = EagerRunner(self.module, self.choice)
        # per input shape: (rows per graph run, the graph; None: runs eagerly)
        self.graphs: dict[tuple[int, ...], tuple[int, torch.jit.ScriptModule | None]] = {}

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.choice.channels_last \
            else x

    def _trace(self, x: torch.Tensor) -> tuple[torch.jit.ScriptModule, Outputs] | None:
        """A frozen graph for ``x``'s shape, run until it settles, and its outputs on ``x``;
        None (with a warning) when it does not settle.

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
        log.warning("the traced graph's outputs still changed after %d runs on the same "
                    "input %s; falling back to the eager model for this input shape",
                    MAX_WARMUP + 1, tuple(x.shape))
        return None

    def _check(self, graph: torch.jit.ScriptModule, like: torch.Tensor, size: int) -> bool:
        """Whether ``graph`` (run ``size`` rows at a time) agrees with the eager module
        under autocast on the two :func:`_probes` shaped as ``like`` (one input row).

        Judged on the probes' features centred over the two (their difference, the kind of
        variation between spots stage 2 learns from), on fixed inputs: the decision is the
        same whatever a slide's first batch shows. Centred over that batch's own spots the
        scale was tiny for blank glass, and bf16 rounding, which on flat glass moves the
        eager bf16 features too, looked like disagreement. The eager module runs on the
        two probes only (~0.2 s each for efficientnet_lite0); the graph once, padded to
        ``size``. Nothing here changes what the graph returns for real batches. Logs the
        reason when False."""
        rows = _probes(like)
        parts = [_as_float(graph(self._input(_pad(rows[i:i + size], size))))
                 for i in range(0, len(rows), size)]
        got = tuple(torch.cat(p)[:len(rows)] for p in zip(*parts, strict=True))
        want = self.eager(rows)
        if len(got) != len(want) or any(g.shape != w.shape
                                         for g, w in zip(got, want, strict=False)):
            log.warning("the traced graph gives shapes %s, the eager model %s; falling back "
                        "to the eager model for input %s", [tuple(g.shape) for g in got],
                        [tuple(w.shape) for w in want], tuple(like.shape))
            return False
        centred = [(g - g.mean(0), w - w.mean(0)) for g, w in zip(got, want, strict=True)]
        err = max(((g - w).norm() / w.norm().clamp_min(1e-12)).item() for g, w in centred)
        if not err <= MAX_ERROR:
            log.warning("the traced graph disagrees with the eager model (relative error %.3f "
                        "> %s); falling back to the eager model for input %s",
                        err, MAX_ERROR, tuple(like.shape))
            return False
        log.debug("traced graph vs eager: relative error %.3f (at most %s)", err, MAX_ERROR)
        return True

    def _new_graph(self, x: torch.Tensor) -> Outputs | None:
        """Trace and check the graph for ``x``'s input shape and record it (or None: eager);
        the graph's outputs on ``x`` when it is used and ``x`` fits in one run."""
        n = len(x)
        size = self.batch or n
        first = _pad(x[:size], size)  # e.g. a resumed run starting at a short chunk
        traced = self._trace(self._input(first))
        if traced is None or not self._check(traced[0], first[0], size):
            self.graphs[tuple(x.shape[1:])] = (size, None)
            return None
        graph, out = traced
        self.graphs[tuple(x.shape[1:])] = (size, graph)
        log.debug("traced a %s graph for input %s", self.dtype, tuple(first.shape))
        return tuple(o[:n] for o in out) if n <= size else None

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> Outputs:
        key, n = tuple(x.shape[1:]), x.shape[0]
        if key not in self.graphs:
            out = self._new_graph(x)
            if out is not None:
                return out
        size, graph = self.graphs[key]
        if graph is None:
            return self.eager(x)
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
