"""Whole-model CPU speed as a ratio to plain 3x3 convolutions doing the same number of multiply-adds.

Absolute times move with the machine's load and clock; the ratio of a model's forward time to the time the
same multiply-adds take in 3x3 convolutions (64 -> 64 channels at the model's input size, the operation CPU
libraries serve best), both timed in one process, is stable. Each model runs in a fresh process (so its peak
memory is its own), with ``--threads`` threads; the table gives the median of ``--repeat`` forward passes after
one warm-up, the conv baseline's time for the same MACs (timed around each pass), the median of the per-pass
ratios, the time spent inside the selective scan
(``selective_scan`` calls, timed in the same passes), and the peak resident memory the forward pass added.

    python benchmarks/bench_models.py                          # the four models of the CPU-speed issue
    python benchmarks/bench_models.py --models eamambasr-light-x4 --repeat 5
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# (zoo entry, input side): the shapes the ratio targets refer to
CASES = [("eamamba-denoise-color", 256), ("eamambasr-light-x4", 128), ("mambairv2light-sr-x4", 128),
         ("emambair-event-deblur", 256)]


def worker(name: str, size: int, repeat: int, threads: int) -> dict:
    import resource
    import statistics
    import time

    import torch

    from ssmir.models.zoo import create_entry
    from ssmir.ops.selective_scan import resolve_backend
    from ssmir.profiling.flops import count_flops, example_inputs

    try:
        from ssmir.ops.selective_scan import timing_scans
    except ImportError:  # an older ssmir (before/after comparisons): no scan clock
        import contextlib

        class _NoClock:
            seconds = float("nan")

            def reset(self):
                pass

        def timing_scans():
            return contextlib.nullcontext(_NoClock())
    from ssmir.profiling.measure import rss_bytes

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_entry(name).eval()
    macs = count_flops(model, size, size).total
    inputs = example_inputs(model, size, size)

    def median_time(fn, n, warmup=1):
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    # the conv baseline: 3x3, 64 -> 64 channels, at the model's input size; timed around every forward
    # pass (median of 5 calls each time), so that the ratio of each pass compares like with like
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).eval()
    feat = torch.randn(1, 64, size, size)
    conv_macs = 64 * 64 * 9 * size * size
    model_t, conv_t, scan_t = [], [], []
    base = rss_bytes()
    with torch.no_grad(), timing_scans() as clock:
        median_time(lambda: conv(feat), 3)
        model(*inputs)  # warm-up
        for _ in range(repeat):
            conv_t.append(median_time(lambda: conv(feat), 5, warmup=0) * macs / conv_macs)
            clock.reset()
            t0 = time.perf_counter()
            model(*inputs)
            model_t.append(time.perf_counter() - t0)
            scan_t.append(clock.seconds)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    ratio = statistics.median(m / c for m, c in zip(model_t, conv_t, strict=True))
    model_s, conv_same_macs = statistics.median(model_t), statistics.median(conv_t)
    return {"gmacs": macs / 1e9, "model_s": model_s, "conv_s": conv_same_macs, "ratio": ratio,
            "scan_s": statistics.median(scan_t), "peak_mib": max(peak, 0) / 2**20,
            "backend": resolve_backend("cpu")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=[n for n, _ in CASES])
    p.add_argument("--size", type=int, help="input side for every model (default: each model's own, see CASES)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        name, size, repeat, threads = a.worker
        print(json.dumps(worker(name, int(size), int(repeat), int(threads))))
        return
    sizes = dict(CASES)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), NUMBA_NUM_THREADS=str(a.threads))
    print(f"forward pass, batch 1, {a.threads} threads, median of {a.repeat} after one warm-up; conv baseline: "
          "3x3 64->64 at the input size, scaled to the model's MACs, same process\n")
    print("| model | input | GMACs | forward (s) | 3x3 conv, same MACs (s) | ratio | in the scan (s) | scan backend "
          "| peak memory (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    rows = []
    for name in a.models:
        size = a.size or sizes.get(name, 128)
        cmd = [sys.executable, __file__, "--worker", name, str(size), str(a.repeat), str(a.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            print(f"| {name} | {size}x{size} | failed: {out.stderr.strip().splitlines()[-1]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"model": name, "size": size, **r})
        print(f"| {name} | {size}x{size} | {r['gmacs']:.1f} | {r['model_s']:.3f} | {r['conv_s']:.3f} | "
              f"{r['ratio']:.2f} | {r['scan_s']:.3f} | {r['backend']} | {r['peak_mib']:.0f} |", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
