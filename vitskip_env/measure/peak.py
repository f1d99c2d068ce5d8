"""Peak working memory of one call, measured in this process (used by the fresh-process memory probes).

The probe processes start with ``MALLOC_MMAP_THRESHOLD_`` fixed (64 KiB) so that large activations
are mapped and unmapped as they live and die and the resident set follows the live memory; then
:func:`peak_of` runs one warm-up call, returns freed heap memory to the kernel (``malloc_trim``),
resets the kernel's peak-RSS counter (``/proc/self/clear_refs``) and runs the measured call. On
CUDA it reads the allocator's peak instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["peak_of"]


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_memory() -> None:
    """Hand freed heap memory back to the kernel (glibc ``malloc_trim``), so RSS counts live memory only."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_of(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, device: torch.device) -> tuple[float, str]:
    """Peak working memory (MiB) of ``fn(x)`` after a warm-up call, and how it was measured."""
    fn(x)  # warm-up: one-time allocations are not working memory
    gc.collect()
    _release_free_memory()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(x)
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20, "cuda allocator peak"
    if _reset_peak() and _status_kib("VmRSS") is not None:
        before_kib = _status_kib("VmRSS") or 0
        fn(x)
        return ((_status_kib("VmHWM") or 0) - before_kib) / 1024, "peak RSS (VmHWM reset) - RSS before"
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fn(x)
    after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after_kib - before_kib) / 1024, "ru_maxrss growth (lower bound)"
