"""Fixtures the stage-1 tests share (torch is imported here, below ``tests/embed`` only)."""

from __future__ import annotations

import pytest
import torch

from embed.backbones import Backbone, get_backbone
from embed.weights import build_model


@pytest.fixture(scope="module")
def tiny() -> tuple[Backbone, torch.nn.Module]:
    """The ``tiny_random`` backbone and its model in eval mode, one per test module (tests
    may trace it or change its memory format)."""
    backbone = get_backbone("tiny_random")
    return backbone, build_model(backbone)[0].eval()


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models train faster so, and on a shared machine OpenMP's
    barriers with two threads can stall for seconds."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
