"""EmambaIR frames per second at video resolution: one frame plus its 6-bin event voxel grid per forward pass.

The model is the ``emambair-event-deblur`` zoo entry (the paper's configuration; random weights, which do
not change the speed). Each frame is a full forward pass at batch 1 (what real-time video restoration does),
timed as the median of ``--repeat`` after warm-up; on a GPU also under float16 and bfloat16 autocast.

    python benchmarks/bench_emambair_fps.py                     # 1280x720 on this CPU, 2 threads
    python benchmarks/bench_emambair_fps.py --device cuda       # on a GPU (scan backend: the default there)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ssmir.eval.inference import run_model  # noqa: E402
from ssmir.models.zoo import create_entry  # noqa: E402
from ssmir.ops.selective_scan import resolve_backend  # noqa: E402


def fps(model, frame, voxels, repeat, warmup, autocast_dtype=None):
    dev = frame.device

    def once():
        with torch.no_grad(), torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            run_model(model, frame, voxels)
        if dev.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        once()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        once()
        times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="1280x720", help="WIDTHxHEIGHT")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    w, h = (int(v) for v in a.size.lower().split("x"))
    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    model = create_entry("emambair-event-deblur").eval().to(dev)
    frame, voxels = torch.rand(1, 3, h, w, device=dev), torch.randn(1, 6, h, w, device=dev)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {a.threads} threads"
    print(f"EmambaIR (emambair-event-deblur) {w}x{h}, batch 1, {name}, scan backend "
          f"{resolve_backend(dev)}, median of {a.repeat}\n")
    print("| precision | frames / s | ms / frame |\n|---|---:|---:|")
    modes = [("float32", None)] + ([("float16 autocast", torch.float16), ("bfloat16 autocast", torch.bfloat16)]
                                   if dev.type == "cuda" else [])
    for label, dtype in modes:
        f = fps(model, frame, voxels, a.repeat, a.warmup, dtype)
        print(f"| {label} | {f:.2f} | {1000 / f:.1f} |", flush=True)


if __name__ == "__main__":
    main()
