"""Time and peak memory of the selective-scan backends at EAMamba level-1 shapes.

Shape: batch 1, 64 channels in 8 groups (8 heads of 8 channels), N = 16, float32, softplus and
delta bias on, L = side**2. Each (backend, L, mode) runs in a fresh process so that its peak
resident memory can be read; the table shows the median of ``--repeat`` runs after one warm-up,
the speed-up over the sequential reference timed the same way, and the peak memory added by the
call as a multiple of the inputs' size.

    python benchmarks/bench_scan.py                      # L = 64^2, 128^2, 256^2, 2 threads
    python benchmarks/bench_scan.py --sides 64 128 --repeat 3 --modes forward
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

BACKENDS = ("reference", "torch", "numba")


def worker(backend: str, side: int, mode: str, repeat: int, threads: int) -> dict:
    import torch

    from ssmir.ops import selective_scan
    from ssmir.profiling.measure import rss_bytes

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    b, d, g, n, length = 1, 64, 8, 16, side * side
    u = torch.randn(b, d, length)
    delta = torch.randn(b, d, length) * 0.5
    A = -torch.exp(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(d, 1))
    B = torch.randn(b, g, n, length)
    C = torch.randn(b, g, n, length)
    D = torch.ones(d)
    bias = torch.randn(d) * 0.1
    inputs = (u, delta, A, B, C, D, bias)
    input_bytes = sum(t.numel() * t.element_size() for t in inputs)

    def run():
        if mode == "forward":
            with torch.no_grad():
                selective_scan(u, delta, A, B, C, D, delta_bias=bias, delta_softplus=True, backend=backend)
        else:
            leaves = [t.detach().requires_grad_(True) for t in inputs]
            y = selective_scan(*leaves[:6], delta_bias=leaves[6], delta_softplus=True, backend=backend)
            y.sum().backward()

    if backend == "numba":  # compile (or load the cached compilation) on a tiny input first
        from ssmir.ops import selective_scan_numba

        small = [t[..., :8] if t.dim() > 1 and t.shape[-1] == length else t for t in inputs]
        for grad in (False, True):
            leaves = [t.detach().clone().requires_grad_(grad) for t in small]
            y = selective_scan_numba(*leaves[:6], delta_bias=leaves[6], delta_softplus=True)
            if grad:
                y.sum().backward()
    base = rss_bytes()
    times = []
    for i in range(repeat + 1):
        t0 = time.perf_counter()
        run()
        if i:  # the first run is the warm-up
            times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"seconds": statistics.median(times), "peak_bytes": max(peak, 0), "input_bytes": input_bytes}


def measure(backend, side, mode, repeat, threads) -> dict:
    cmd = [sys.executable, __file__, "--worker", backend, str(side), mode, str(repeat), str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), NUMBA_NUM_THREADS=str(threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"{backend} L={side}^2 {mode} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sides", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--modes", nargs="+", default=["forward", "forward+backward"],
                   choices=["forward", "forward+backward"])
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        backend, side, mode, repeat, threads = a.worker
        print(json.dumps(worker(backend, int(side), mode, int(repeat), int(threads))))
        return
    if "reference" not in a.backends:
        a.backends = ["reference", *a.backends]
    print(f"selective scan, batch 1, D 64 (8 groups), N 16, float32, {a.threads} threads, median of {a.repeat}\n")
    print("| L | mode | backend | time (ms) | speed-up vs reference | peak extra memory (MiB) | x inputs |")
    print("|---|---|---|---:|---:|---:|---:|")
    for side in a.sides:
        for mode in a.modes:
            ref = None
            for backend in a.backends:
                r = measure(backend, side, mode, a.repeat, a.threads)
                ref = r["seconds"] if backend == "reference" else ref
                mib = r["peak_bytes"] / 2**20
                print(f"| {side}x{side} | {mode} | {backend} | {1000 * r['seconds']:.1f} | "
                      f"{ref / r['seconds']:.1f}x | {mib:.0f} | {r['peak_bytes'] / r['input_bytes']:.1f} |",
                      flush=True)


if __name__ == "__main__":
    main()
