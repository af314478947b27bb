"""Latency and peak memory of one forward pass, each size measured in a fresh process.

A fresh process per measurement gives a clean peak-memory reading on CPU (peak resident set size over
the baseline before the forward pass; on CUDA ``torch.cuda.max_memory_allocated``) and turns an
out-of-memory failure into a failed child instead of a dead profiler, so a size sweep stops cleanly.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


class MeasureError(RuntimeError):
    """A measurement that did not complete (out of memory, a crash, a size the model rejects)."""


@dataclass
class Timing:
    latency_ms: float  # median over the repeats
    peak_memory_bytes: int


def rss_bytes() -> int:
    """Resident memory of this process now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@torch.no_grad()
def time_forward(model, inputs, repeat: int = 5, warmup: int = 1) -> Timing:
    """Median latency of ``model(*inputs)`` after ``warmup`` runs, and the peak memory it used.

    On CPU the peak is read from the process's high-water mark, so call this in a fresh process
    (``measure_in_subprocess``) for a meaningful number.
    """
    cuda = inputs[0].device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    for _ in range(warmup):
        model(*inputs)
    times = []
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        model(*inputs)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return Timing(1000 * statistics.median(times), max(int(peak), 0))


def measure_in_subprocess(spec: dict, h: int, w: int, device: str = "cpu", repeat: int = 5,
                          timeout: float | None = None) -> Timing:
    """Run ``time_forward`` for the model ``spec`` ({name, args} or {weights, trust}) in a child process."""
    job = {"spec": spec, "h": h, "w": w, "device": device, "repeat": repeat}
    try:
        out = subprocess.run([sys.executable, "-m", "ssmir.profiling.worker"], input=json.dumps(job),
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MeasureError(f"{h}x{w}: took longer than {timeout:.0f} s") from None
    if out.returncode != 0:
        lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
        reason = lines[-1] if lines else f"exit code {out.returncode}"
        if out.returncode < 0 or out.returncode == 137:
            reason = f"killed (signal {-out.returncode if out.returncode < 0 else 9}; out of memory?)"
        raise MeasureError(f"{h}x{w}: {reason}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Timing(data["latency_ms"], data["peak_memory_bytes"])


def doubling_sizes(start: int = 32, stop: int = 1024) -> list[int]:
    sizes, s = [], start
    while s <= stop:
        sizes.append(s)
        s *= 2
    return sizes


def sweep(sizes: list[int], measure: Callable[[int], dict]) -> tuple[list[dict], str | None]:
    """Measure each size in turn; stop at the first that fails. Returns the rows and why it stopped (or None)."""
    rows = []
    for size in sizes:
        try:
            rows.append({"size": size, **measure(size)})
        except (MeasureError, MemoryError, RuntimeError) as e:
            return rows, str(e).splitlines()[0]
    return rows, None
