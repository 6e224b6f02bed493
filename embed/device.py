"""One function picks the device, the autocast dtype and the memory format."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class DeviceChoice:
    """Where and how to run: ``dtype`` is the autocast dtype (None = plain fp32)."""

    device: torch.device
    dtype: torch.dtype | None
    channels_last: bool

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.") if self.dtype else "float32"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return f"{self.device} ({name}), {self.dtype_name}, channels_last={self.channels_last}"


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has native bf16 (AMX or AVX512-BF16), from /proc/cpuinfo flags."""
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    flags = set(cpuinfo.split())
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def select_device(prefer: str = "auto", precision: str = "auto") -> DeviceChoice:
    """Pick device and dtype.

    Args:
        prefer: "auto" (CUDA when present, else CPU), "cuda" or "cpu".
        precision: "auto", "fp32", "bf16" or "fp16".

    Returns:
        CUDA with bf16 (fp16 where bf16 is unsupported) autocast; a CPU with AMX or
        AVX512-BF16 -> bf16 autocast + channels_last; else fp32 (channels_last on CPU).
    """
    use_cuda = prefer == "cuda" or (prefer == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda asked for, but torch sees no CUDA device")
    device = torch.device("cuda" if use_cuda else "cpu")
    explicit = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision in explicit:
        dtype = explicit[precision]
    elif precision != "auto":
        raise ValueError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    elif use_cuda:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16 if cpu_has_bf16() else None
    return DeviceChoice(device, dtype, channels_last=True)
