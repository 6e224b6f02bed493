"""One function picks the device, the autocast dtype and the memory format."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from data.errors import ConfigError

log = logging.getLogger("hespot")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


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
        if self.device.type != "cuda":
            name = "cpu"
        elif torch.cuda.is_available():
            name = torch.cuda.get_device_name(self.device)
        else:
            name = "on the workers"  # a coordinator planning for GPU workers
        return f"{self.device} ({name}), {self.dtype_name}, channels_last={self.channels_last}"


def _cpu_flags(cpuinfo: str | None) -> set[str]:
    if cpuinfo is None:
        path = Path("/proc/cpuinfo")
        cpuinfo = path.read_text() if path.exists() else ""
    return set(cpuinfo.split())


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has native bf16 (AMX or AVX512-BF16), from /proc/cpuinfo flags."""
    return bool(_cpu_flags(cpuinfo) & {"amx_bf16", "avx512_bf16"})


def cpu_has_amx(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has AMX bf16 tiles (fast bf16 training, not only inference)."""
    return "amx_bf16" in _cpu_flags(cpuinfo)


def select_device(prefer: str = "auto", precision: str = "auto",
                  training: bool = False) -> DeviceChoice:
    """Pick device and dtype.

    Args:
        prefer: "auto" (CUDA when present, else CPU), "cuda" or "cpu".
        precision: "auto", "fp32", "bf16" or "fp16".
        training: for training, "auto" on a CPU takes bf16 only with AMX: with AVX512-BF16
            alone bf16 training measured slower than fp32 here (make bench-finetune).

    Returns:
        CUDA with bf16 (fp16 where bf16 is unsupported) autocast; a CPU with AMX or
        AVX512-BF16 -> bf16 autocast + channels_last; else fp32 (channels_last on CPU).
    """
    use_cuda = prefer == "cuda" or (prefer == "auto" and torch.cuda.is_available())
    if use_cuda and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA device")
    device = torch.device("cuda" if use_cuda else "cpu")
    explicit = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision in explicit:
        dtype = explicit[precision]
    elif precision != "auto":
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    elif use_cuda:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        fast_bf16 = cpu_has_amx() if training else cpu_has_bf16()
        dtype = torch.bfloat16 if fast_bf16 else None
    return DeviceChoice(device, dtype, channels_last=True)


def keep_freed_memory(limit_bytes: int = 1 << 30) -> bool:
    """Stop glibc returning large freed blocks to the OS between batches.

    Each forward pass allocates and frees activation buffers of tens of MB; by default
    glibc serves them with mmap/munmap, so every batch pays page faults again (measured
    here: most of a CPU run's time was system time). Raising the mmap and trim thresholds
    keeps the memory for reuse. No-op off glibc. Returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, limit_bytes) and libc.mallopt(
            _M_TRIM_THRESHOLD, 2 * limit_bytes)
    except (OSError, AttributeError):
        return False
    log.debug("glibc mallopt thresholds raised: %s", bool(ok))
    return bool(ok)
