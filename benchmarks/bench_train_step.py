"""Time of one training step (forward, L1 loss, backward, AdamW) of a training config's model, on this CPU or a
CUDA GPU.

The model, batch and crop size come from the config (default: the bundled denoiser's recipe); ``--dim``,
``--batch`` and ``--crop`` override them. Random images, no data loading. Every combination of scan backend,
way of writing the heads' projection (``ssmir.ops.head_scan.head_linear``: "auto", "einsum", "blockdiag",
"mixed") and way of putting the heads into their scan orders where the scan is not the compiled CPU kernel
(``ssmir.ops.head_scan.HEAD_GATHER``: "flat", one ``index_select`` for all heads, or "per-head") is timed in
the same run, so the ratios between them hold on any machine; the table shows the median of ``--repeat``
steps after ``--warmup`` steps, the forward pass without gradients, and the ATen operations of one step
(views not counted: on a GPU, about its kernel launches).
``--profile`` then prints the PyTorch profiler's table of two steps of the first combination, by device time
and by CPU time.

    python benchmarks/bench_train_step.py
    python benchmarks/bench_train_step.py --config configs/ssmir/denoise-color-small.yaml --backends numba torch
    python benchmarks/bench_train_step.py --device cuda --config configs/ssmir/denoise-color-small-v2-gpu.yaml \\
        --backends auto --projections einsum blockdiag --batch 16 32 --profile
    python benchmarks/bench_train_step.py --config configs/ssmir/denoise-color-small-v2.yaml --backends torch \\
        --gathers per-head flat
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time


def build(cfg: dict, dim: int | None, batch: int, crop: int, device):
    import torch

    import ssmir.models as models
    from ssmir.train.schedulers import make_optimizer

    torch.manual_seed(0)
    args = dict(cfg["model"].get("args") or {})
    if dim:
        args["dim"] = dim
    model = models.create(cfg["model"]["name"], **args).to(device).train()
    optimizer = make_optimizer(model.parameters(), cfg["optimizer"])
    channels = args.get("inp_channels", 3)
    x = torch.rand(batch, channels, crop, crop, device=device)
    return model, optimizer, x, torch.rand_like(x)


def timed(fn, n: int, sync) -> list[float]:
    times = []
    for _ in range(n):
        sync()
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return times


def count_ops(fn) -> int:
    """ATen operations that ``fn`` dispatches, forward and backward, views excluded."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                self.n += 1
            return func(*args, **(kwargs or {}))

    with Counter() as counter:
        fn()
    return counter.n


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/ssmir/denoise-color-small.yaml")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--backends", nargs="+", default=None,
                   help="scan backends to time (default: numba torch on CPU, auto elsewhere)")
    p.add_argument("--projections", nargs="+", default=["auto"], choices=["auto", "einsum", "blockdiag", "mixed"])
    p.add_argument("--gathers", nargs="+", default=["flat"], choices=["flat", "per-head"],
                   help="how the composed (non-CPU-kernel) scan puts heads into their orders")
    p.add_argument("--dim", type=int, nargs="+", default=[None], help="model width(s) instead of the config's")
    p.add_argument("--batch", type=int, nargs="+", default=[None], help="batch size(s) instead of the config's")
    p.add_argument("--crop", type=int, default=None, help="crop size instead of the config's")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--keep-malloc", action="store_true",
                   help="leave glibc's allocator as it is (default: ssmir.runtime.retain_freed_memory, as ssmir train)")
    p.add_argument("--profile", action="store_true", help="print the profiler's tables of the first combination")
    a = p.parse_args()
    import torch

    from ssmir.ops import head_scan
    from ssmir.ops.selective_scan import resolve_backend
    from ssmir.train.config import load_config

    if not a.keep_malloc:  # as the ssmir command does; without it every step page-faults its large tensors anew
        from ssmir.runtime import retain_freed_memory

        retain_freed_memory()
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_train_step: --device cuda, but PyTorch sees no CUDA device here")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    backends = a.backends or (["numba", "torch"] if device.type == "cpu" else ["auto"])
    torch.set_num_threads(a.threads)
    cfg = load_config(a.config)
    crop = a.crop or cfg["train_dataset"]["crop_size"]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {a.threads} threads"
    print(f"{a.config}: {cfg['model']['name']}, crop {crop}, {where}, median of {a.repeat} steps after "
          f"{a.warmup}\n")
    print("| dim | batch | scan backend | projection | gather | s / step | forward, no grad (s) | ops / step | "
          "relative to first |")
    print("|---:|---:|---|---|---|---:|---:|---:|---:|")
    first = None
    combos = itertools.product(a.dim, a.batch, backends, a.projections, a.gathers)
    for dim, batch, backend, projection, gather in combos:
        batch = batch or cfg["train_dataset"]["batch_size"]
        os.environ["SSMIR_SCAN_BACKEND"] = backend
        head_scan.HEAD_PROJECTION = projection
        head_scan.HEAD_GATHER = gather
        model, optimizer, x, y = build(cfg, dim, batch, crop, device)

        def step(model=model, optimizer=optimizer, x=x, y=y):
            loss = (model(x) - y).abs().mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        def forward(model=model, x=x):
            with torch.no_grad():
                model(x)

        med = statistics.median(timed(step, a.warmup + a.repeat, sync)[a.warmup:])
        fwd = statistics.median(timed(forward, 1 + min(a.repeat, 5), sync)[1:])
        ops = count_ops(step)
        first = first or med
        shown = resolve_backend(device, backend)
        print(f"| {dim or cfg['model']['args'].get('dim', '')} | {batch} | {shown} | {projection} | {gather} | "
              f"{med:.3f} | {fwd:.3f} | {ops:,} | {med / first:.2f}x |", flush=True)
        if a.profile:
            a.profile = False
            from torch.profiler import ProfilerActivity, profile

            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                for _ in range(2):
                    step()
                sync()
            table = prof.key_averages()
            key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
            print(table.table(sort_by=key, row_limit=22, max_name_column_width=60), flush=True)
            if device.type == "cuda":
                print(table.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60), flush=True)
        del model, optimizer, x, y
    head_scan.HEAD_PROJECTION = "auto"
    head_scan.HEAD_GATHER = "flat"


if __name__ == "__main__":
    main()
