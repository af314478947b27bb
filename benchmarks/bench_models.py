"""Forward latency and peak memory of each model on this CPU, with the fast scan and the sequential reference.

Each (model, size, backend) runs in a fresh process (``ssmir.profiling.measure``); the table shows the
median latency over ``--repeat`` runs after one warm-up, the speed-up of the default (fast) scan over the
reference scan timed in the same run, the peak memory, and the multiply-adds.

    python benchmarks/bench_models.py                       # 128x128 and 256x256, 2 threads
    python benchmarks/bench_models.py --sizes 64 --models eamambasr-light-x4
"""

from __future__ import annotations

import argparse
import os

from ssmir.models.zoo import create_entry, get_entry
from ssmir.profiling.flops import count_flops
from ssmir.profiling.measure import MeasureError, measure_in_subprocess

MODELS = ["eamamba-denoise-color", "eamambasr-light-x4", "mambairv2light-sr-x4", "mambairv2-denoise-color-s25",
          "emambair-event-deblur"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement before giving up")
    a = p.parse_args()
    os.environ.update(OMP_NUM_THREADS=str(a.threads), NUMBA_NUM_THREADS=str(a.threads))
    print(f"forward pass, batch 1, {a.threads} threads, median of {a.repeat} after one warm-up\n")
    print("| model | input | GMACs | fast scan (ms) | reference scan (ms) | speed-up | peak memory fast / ref (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in a.models:
        entry = get_entry(name)
        model = create_entry(name)
        spec = {"name": entry.arch, "args": entry.args}
        for size in a.sizes:
            gmacs = count_flops(model, size, size).total / 1e9
            cells = []
            for backend in ("numba", "reference"):
                os.environ["SSMIR_SCAN_BACKEND"] = backend
                try:
                    cells.append(measure_in_subprocess(spec, size, size, repeat=a.repeat, timeout=a.timeout))
                except MeasureError as e:
                    cells.append(e)
            os.environ.pop("SSMIR_SCAN_BACKEND", None)
            fast, ref = cells

            def ms(t):
                return f"{t.latency_ms:.0f}" if not isinstance(t, Exception) else "failed"

            ratio = (f"{ref.latency_ms / fast.latency_ms:.1f}x"
                     if not isinstance(fast, Exception) and not isinstance(ref, Exception) else "-")
            mem = " / ".join(f"{t.peak_memory_bytes / 2**20:.0f}" if not isinstance(t, Exception) else "-"
                             for t in (fast, ref))
            print(f"| {name} | {size}x{size} | {gmacs:.1f} | {ms(fast)} | {ms(ref)} | {ratio} | {mem} |", flush=True)


if __name__ == "__main__":
    main()
