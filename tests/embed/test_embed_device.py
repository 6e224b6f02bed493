"""Device / dtype selection (embed.device)."""

from __future__ import annotations

import pytest
import torch

import embed.device as device_mod
from data.errors import ConfigError
from embed.device import DeviceChoice, cpu_has_bf16, select_device


@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor : 0\nflags : fpu vme sse2 avx2 avx512f avx512_bf16 amx_tile\n", True),
    ("flags\t\t: fpu sse2 amx_bf16 amx_tile amx_int8\n", True),
    ("flags : fpu vme sse2 avx2 avx512f avx512_vnni\n", False),
    ("processor : 0\nmodel name : Some CPU\n", False),
    ("", False),
])
def test_cpu_has_bf16_parses_flags(cpuinfo, expected):
    assert cpu_has_bf16(cpuinfo) is expected


def test_cpu_has_bf16_reads_this_machine():
    assert isinstance(cpu_has_bf16(), bool)


def test_select_cpu_fp32():
    c = select_device("cpu", "fp32")
    assert c.device == torch.device("cpu")
    assert c.dtype is None
    assert c.dtype_name == "float32"
    assert "cpu" in c.describe()


def test_select_cpu_bf16():
    c = select_device("cpu", "bf16")
    assert c.device.type == "cpu"
    assert c.dtype is torch.bfloat16
    assert c.dtype_name == "bfloat16"


def test_select_cpu_fp16():
    assert select_device("cpu", "fp16").dtype is torch.float16


@pytest.mark.parametrize("has_bf16, dtype", [(True, torch.bfloat16), (False, None)])
def test_select_cpu_auto_follows_cpu_flags(monkeypatch, has_bf16, dtype):
    monkeypatch.setattr(device_mod, "cpu_has_bf16", lambda cpuinfo=None: has_bf16)
    assert select_device("cpu", "auto").dtype is dtype


@pytest.mark.parametrize("precision", ["fp64", "int8", "", "FP32"])
def test_invalid_precision_raises(precision):
    with pytest.raises(ValueError, match="precision"):
        select_device("cpu", precision)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_requested_without_cuda_raises():
    with pytest.raises(ConfigError, match="cuda"):
        select_device("cuda", "fp32")


def test_autocast_context():
    x = torch.randn(4, 4)
    with DeviceChoice(torch.device("cpu"), None, False).autocast():
        assert (x @ x).dtype == torch.float32
    with DeviceChoice(torch.device("cpu"), torch.bfloat16, False).autocast():
        assert (x @ x).dtype == torch.bfloat16
