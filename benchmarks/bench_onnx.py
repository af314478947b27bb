"""ONNX Runtime (CPU execution provider) against ssmir's PyTorch forward, at the same input sizes.

Each model is exported at a fixed size with ``ssmir.deploy.onnx.export_onnx`` (zoo architecture, initial
weights: the speed does not depend on them), then both runtimes are timed in this process with ``--threads``
threads: the median of ``--repeat`` forward passes after one warm-up. Exports come first and timings after, so
that nothing else runs while the timings are taken.

    python benchmarks/bench_onnx.py
    python benchmarks/bench_onnx.py --models eamambasr-light-x2:128 --repeat 5
    python benchmarks/bench_onnx.py --keep /tmp/onnx            # keep the files, then time them again alone:
    python benchmarks/bench_onnx.py --keep /tmp/onnx --reuse
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

CASES = ["eamambasr-light-x2:128", "mambairv2light-sr-x2:128", "eamamba-small-denoise-blind:256",
         "emambair-event-deblur:128"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=CASES, help="ZOO_ENTRY:SIDE")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--keep", type=Path, help="folder to keep the .onnx files in")
    p.add_argument("--reuse", action="store_true", help="time the .onnx files already in --keep (exported by an "
                   "earlier run with the same --models) instead of exporting again")
    a = p.parse_args()
    import onnxruntime as ort
    import torch

    from ssmir.deploy.onnx import ExportReport, example_inputs, export_onnx
    from ssmir.models.zoo import create_entry

    torch.set_num_threads(a.threads)
    folder = a.keep or Path(tempfile.mkdtemp(prefix="ssmir-onnx-"))
    exported = []
    if a.reuse and not a.keep:
        p.error("--reuse needs --keep FOLDER")
    for item in a.models:
        name, side = item.split(":")
        model = create_entry(name).eval()
        path = folder / f"{name}-{side}.onnx"
        if a.reuse:
            if not path.is_file():
                p.error(f"--reuse: {path} does not exist")
            report = ExportReport(path, path.stat().st_size, 0, [], [], float("nan"), float("nan"), False)
            exported.append((name, int(side), model, report))
            continue
        report = export_onnx(model, path, int(side), int(side), threads=a.threads)
        print(f"exported {name} at {side}x{side}: {report.size_bytes / 2**20:.1f} MiB in {report.seconds:.0f} s, "
              f"max error {report.max_error:.1e}", file=sys.stderr, flush=True)
        exported.append((name, int(side), model, report))

    def median(fn):
        fn()
        times = []
        for _ in range(a.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times)

    print(f"forward pass, batch 1, {a.threads} threads, median of {a.repeat} after one warm-up\n")
    print("| model | input | PyTorch (s) | ONNX Runtime (s) | ORT / PyTorch | export (s) | file (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, side, model, report in exported:
        inputs = example_inputs(model, side, side)
        options = ort.SessionOptions()
        options.intra_op_num_threads = a.threads
        session = ort.InferenceSession(str(report.path), options, providers=["CPUExecutionProvider"])
        feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
        with torch.no_grad():
            t_torch = median(lambda model=model, inputs=inputs: model(*inputs))
        t_ort = median(lambda session=session, feed=feed: session.run(None, feed))
        print(f"| {name} | {side}x{side} | {t_torch:.3f} | {t_ort:.3f} | {t_ort / t_torch:.2f} | "
              f"{report.seconds:.0f} | {report.size_bytes / 2**20:.1f} |", flush=True)


if __name__ == "__main__":
    main()
