"""Device and precision choice, and free-memory probes. Nothing is probed at import time."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bf16 natively (AVX-512 BF16 or AMX), which makes bf16 faster than fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool({"avx512_bf16", "amx_bf16"} & flags)
    return False


def choose_device(preference: str = "auto") -> torch.device:
    if preference not in ("auto", ""):
        return torch.device(preference)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def choose_dtype(device: torch.device, preference: str = "auto") -> torch.dtype:
    """fp16 on CUDA/MPS (bf16 on GPUs that have it is equally good), bf16 on CPUs with native bf16, else fp32."""
    named = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if preference in named:
        return named[preference]
    if device.type == "cuda":
        return torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def free_vram(device: torch.device) -> int | None:
    """Free bytes on the accelerator, or None for the CPU (offload does not apply)."""
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def _trim_c_heap() -> None:
    """Hand freed heap pages back to the OS (glibc only).

    glibc raises its mmap threshold after large frees, so later mid-sized tensors land on the heap and
    stay resident after the model that owned them is evicted; without a trim RSS creeps up by a few
    hundred MB over many checkpoint switches.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return
    try:
        libc = ctypes.CDLL(name)
        if hasattr(libc, "malloc_trim"):
            libc.malloc_trim(0)
    except OSError:
        pass


def release_memory(device: torch.device) -> None:
    import gc

    gc.collect()
    _trim_c_heap()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
