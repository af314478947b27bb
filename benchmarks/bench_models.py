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

``--compare DIR`` also runs another checkout of ssmir (e.g. ``git worktree add /tmp/before 234f850``) on the
same models, alternating the two trees for ``--rounds`` rounds so that both see the same machine, and prints
the speed-up of each model (median over rounds of the ratio of their ratios) and, for the issue's models, the
issue's ratio divided by that speed-up: the issue's "ratio now" column was measured at commit 234f850 with a
conv baseline timed on its own, which runs slower than the warm conv timed here, so its scale is reached
through the speed-up rather than read off this script's ratio.

``--retain-freed-memory`` applies ``ssmir.runtime.retain_freed_memory`` (what the ``ssmir`` command does) in the
timed processes: ``both`` trees, or only the ``now`` tree (what a user of the command gets against the baseline's
command); the default, ``none``, times glibc's default allocator, as the issue's numbers were taken. The setting is
loaded from this checkout's ``ssmir/runtime.py``, so that it applies to an older tree as well.
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
# the CPU-speed issue's "ratio now" (low, high) at commit 234f850, and its target
ISSUE = {"eamamba-denoise-color": ((3.8, 4.0), 1.6), "eamambasr-light-x4": ((2.7, 2.8), 1.6),
         "mambairv2light-sr-x4": ((6.0, 7.4), 2.0), "emambair-event-deblur": ((2.6, 2.6), 1.6)}


def retain_freed_memory() -> bool:
    """This checkout's ``ssmir.runtime.retain_freed_memory``, loaded by path (the timed tree may predate it)."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ssmir", "runtime.py")
    spec = importlib.util.spec_from_file_location("_ssmir_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.retain_freed_memory()


def worker(name: str, size: int, repeat: int, threads: int, retain: bool = False) -> dict:
    if retain and not retain_freed_memory():
        raise SystemExit("--retain-freed-memory: glibc's mallopt is not available here")
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
    p.add_argument("--compare", metavar="DIR", help="another ssmir checkout to time against (see above)")
    p.add_argument("--rounds", type=int, default=3, help="with --compare: rounds of both trees")
    p.add_argument("--retain-freed-memory", choices=("none", "both", "now"), default="none",
                   help="keep freed memory in the timed processes (see above); without --compare, both = now")
    p.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        name, size, repeat, threads, retain = a.worker
        print(json.dumps(worker(name, int(size), int(repeat), int(threads), retain == "1")))
        return
    sizes = dict(CASES)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), NUMBA_NUM_THREADS=str(a.threads))
    if a.compare:
        compare(a, sizes, env)
        return
    print(f"forward pass, batch 1, {a.threads} threads, median of {a.repeat} after one warm-up; conv baseline: "
          "3x3 64->64 at the input size, scaled to the model's MACs, same process\n")
    print("| model | input | GMACs | forward (s) | 3x3 conv, same MACs (s) | ratio | in the scan (s) | scan backend "
          "| peak memory (MiB) |")
    print("|---|---|---:|---:|---:|---:|---:|---|---:|")
    rows = []
    for name in a.models:
        size = a.size or sizes.get(name, 128)
        cmd = [sys.executable, __file__, "--worker", name, str(size), str(a.repeat), str(a.threads),
               "0" if a.retain_freed_memory == "none" else "1"]
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


def run_worker(name: str, size: int, a, env: dict, tree: str | None = None, retain: bool = False) -> dict | None:
    cmd = [sys.executable, __file__, "--worker", name, str(size), str(a.repeat), str(a.threads), "1" if retain else "0"]
    env = dict(env, PYTHONPATH=tree) if tree else env
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree or None)
    if out.returncode != 0:
        print(f"{name} ({tree or 'this tree'}) failed: {out.stderr.strip().splitlines()[-1]}", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(a, sizes: dict, env: dict) -> None:
    import statistics

    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    rows = {name: {"base": [], "now": []} for name in a.models}
    for r in range(a.rounds):
        for name in a.models:
            size = a.size or sizes.get(name, 128)
            for key, tree in (("base", os.path.abspath(a.compare)), ("now", here)):
                retain = a.retain_freed_memory == "both" or (key == "now" and a.retain_freed_memory == "now")
                res = run_worker(name, size, a, env, tree, retain)
                if res:
                    rows[name][key].append(res)
        print(f"round {r + 1} of {a.rounds} done", flush=True)
    print(f"\n{a.threads} threads, {a.rounds} rounds alternating the trees, median of {a.repeat} passes each; "
          f"baseline tree: {a.compare}; freed memory retained: {a.retain_freed_memory}\n")
    print("| model | baseline forward (s) | ratio | now forward (s) | ratio | speed-up (ratio) | speed-up (time) "
          "| issue's ratio / speed-up | target |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    out = []
    for name, rr in rows.items():
        if not rr["base"] or len(rr["base"]) != len(rr["now"]):
            continue
        med = statistics.median
        sp_ratio = med([b["ratio"] / n["ratio"] for b, n in zip(rr["base"], rr["now"], strict=True)])
        sp_time = med([b["model_s"] / n["model_s"] for b, n in zip(rr["base"], rr["now"], strict=True)])
        issue, target = ISSUE.get(name, (None, None))
        scaled = f"{issue[0] / sp_ratio:.2f}–{issue[1] / sp_ratio:.2f}" if issue else "–"
        print(f"| {name} | {med([b['model_s'] for b in rr['base']]):.3f} | {med([b['ratio'] for b in rr['base']]):.2f} "
              f"| {med([n['model_s'] for n in rr['now']]):.3f} | {med([n['ratio'] for n in rr['now']]):.2f} "
              f"| {sp_ratio:.2f}× | {sp_time:.2f}× | {scaled} | {target if target else '–'} |", flush=True)
        out.append({"model": name, "base": rr["base"], "now": rr["now"], "speedup_ratio": sp_ratio,
                    "speedup_time": sp_time})
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
