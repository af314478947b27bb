"""Process-wide settings that make ssmir faster on CPU.

``retain_freed_memory``: glibc's malloc returns every block of 32 MB or more (and, under its dynamic
thresholds, many smaller ones) to the kernel when it is freed, so the next tensor of that size is mapped afresh
and pays one page fault per 4 KiB page on first touch. A forward pass allocates and frees many such tensors:
EAMamba at 256 x 256 took 59,000-90,000 page faults and 0.45-1.9 s of system time per 3-4 s forward pass on a
2-core AMD EPYC VM. Raising the mmap and trim thresholds keeps freed memory in the process for the next tensor:
no page faults, 10-25 % faster forward passes on large maps, and a peak resident size about 20 % higher
(docs/benchmarks.md). The ``ssmir`` command applies it unless ``SSMIR_RETAIN_FREED_MEMORY=0``; Python users call
it themselves. It changes the whole process's allocator and cannot be undone, so a library import does not do it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

ENV = "SSMIR_RETAIN_FREED_MEMORY"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_applied = False


def retain_freed_memory(limit: int = 1 << 30) -> bool:
    """Keep memory that tensors up to ``limit`` bytes free in the process for reuse (glibc's mmap threshold set
    to ``limit``, its trim threshold to twice that). Returns True where applied (Linux with glibc), False
    elsewhere, where it does nothing."""
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or limit <= 0:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    limit = min(int(limit), 2**30)
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, limit)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * limit))
    return _applied


def apply_from_environment() -> bool:
    """``retain_freed_memory()`` unless the environment says ``SSMIR_RETAIN_FREED_MEMORY=0`` (the ``ssmir``
    command's default; its child processes inherit the choice)."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return retain_freed_memory()
