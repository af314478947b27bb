"""The selective scan on a GPU: the Triton backend against the PyTorch backend (and mamba-ssm when importable).

One short script for a GPU session: first it checks the Triton kernels against the reference on the GPU
(values and all gradients, float32; float16/bfloat16 forward), then it times the scan at EAMamba level-1
shapes (64 channels in 8 heads, N = 16, softplus, delta bias, D; L = 128^2 and 256^2) forward and
forward+backward with CUDA events (median of ``--repeat`` after warm-up) and the peak memory the call adds,
then one training step (forward, L1, backward, AdamW) of the EAMamba denoising recipe's model
(configs/eamamba/denoise-eamamba.yaml, first progressive stage: batch 8, 128x128) with each backend.
``--sweep`` also times the Triton launch configurations (BLOCK_D, CHUNK, warps) at the level-1 shapes.

    python benchmarks/bench_scan_gpu.py [--sweep] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from ssmir.ops.selective_scan import _mamba_ssm_fn, selective_scan  # noqa: E402

SWEEP = [(1, 64, 2), (1, 128, 4), (1, 256, 4), (1, 256, 8), (1, 512, 4), (1, 512, 8), (2, 64, 4), (2, 128, 4),
         (2, 256, 8), (4, 64, 4), (8, 32, 4)]


def inputs(batch, length, dim=64, groups=8, n=16, dtype=torch.float32, device="cuda", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    u = rnd(batch, dim, length)
    delta = rnd(batch, dim, length, scale=0.5)
    A = -torch.exp(torch.log(torch.arange(1, n + 1, dtype=torch.float32, device=device)).repeat(dim, 1))
    B, C = rnd(batch, groups, n, length), rnd(batch, groups, n, length)
    D = torch.ones(dim, device=device)
    z = rnd(batch, dim, length)
    bias = torch.randn(dim, generator=g, device=device) * 0.1
    return [u, delta, A, B, C, D, z, bias]


def run(backend, tensors, grad: bool, weight=None):
    if grad:
        tensors = [t.detach().requires_grad_(True) for t in tensors]
    u, delta, A, B, C, D, z, bias = tensors
    with torch.set_grad_enabled(grad):
        y = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=True, backend=backend)
        if not grad:
            return y, None
        gr = torch.autograd.grad(y, tensors, weight if weight is not None else torch.ones_like(y))
    return y, gr


def max_rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def check(report):
    """Triton against the sequential reference on this GPU."""
    out = {}
    for batch, length in ((2, 300), (1, 1031)):
        t = inputs(batch, length)
        w = torch.randn(batch, 64, length, device="cuda")
        y_ref, g_ref = run("reference", t, True, w)
        y, g = run("triton", t, True, w)
        errs = [max_rel(y, y_ref)] + [max_rel(a, b) for a, b in zip(g, g_ref, strict=True)]
        out[f"fp32 B{batch} L{length}: max rel err y,du,ddelta,dA,dB,dC,dD,dz,dbias"] = [f"{e:.1e}" for e in errs]
    for dtype in (torch.float16, torch.bfloat16):
        t = inputs(1, 777, dtype=dtype)
        y_ref = run("reference", [x.float() for x in t], False)[0]
        y = run("triton", t, False)[0]
        out[f"{dtype} forward max rel err"] = f"{max_rel(y, y_ref):.1e}"
    t = inputs(1, 128 * 128)
    w = torch.randn(1, 64, 128 * 128, device="cuda")
    y_t, g_t = run("torch", t, True, w)
    y, g = run("triton", t, True, w)
    errs = [max_rel(y, y_t)] + [max_rel(a, b) for a, b in zip(g, g_t, strict=True)]
    out["vs torch backend L=128^2: max rel err y + 8 grads"] = [f"{e:.1e}" for e in errs]
    report["check"] = out
    print(json.dumps(out, indent=1), flush=True)


def cuda_time(fn, repeat, warmup=2):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeat):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def peak_extra(fn):
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def time_scan(backend, batch, side, grad, repeat, atomic=False):
    t = inputs(batch, side * side)
    os.environ["SSMIR_TRITON_ATOMIC"] = "1" if atomic else "0"
    try:
        return cuda_time(lambda: run(backend, t, grad), repeat), peak_extra(lambda: run(backend, t, grad))
    finally:
        os.environ.pop("SSMIR_TRITON_ATOMIC")


def bench_scan(report, backends, repeat):
    """Each backend at each shape; 'triton-atomic' is the Triton backend with SSMIR_TRITON_ATOMIC=1."""
    rows = []
    print("\n| batch | L | mode | backend | ms | vs torch | peak extra MiB |\n|---|---|---|---|---:|---:|---:|")
    for batch, side in ((1, 128), (1, 256), (8, 128)):
        for grad in (False, True):
            base = None
            for backend in backends + (["triton-atomic"] if grad else []):
                name = backend.removesuffix("-atomic")
                ms, mib = time_scan(name, batch, side, grad, repeat, atomic=backend.endswith("-atomic"))
                base = ms if backend == "torch" else base
                row = dict(batch=batch, L=f"{side}^2", mode="fwd+bwd" if grad else "fwd", backend=backend,
                           ms=round(ms, 3), peak_mib=round(mib, 1))
                rows.append(row)
                rel = f"{base / ms:.1f}x" if base else "-"
                print(f"| {batch} | {side}^2 | {row['mode']} | {backend} | {ms:.3f} | {rel} | {mib:.0f} |", flush=True)
    report["scan"] = rows


def sweep(report, repeat):
    rows = []
    print("\n| BLOCK_D | CHUNK | warps | B1 L256^2 fwd | fwd+bwd | B8 L128^2 fwd | fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for bd, ch, w in SWEEP:
        os.environ.update(SSMIR_TRITON_BLOCK_D=str(bd), SSMIR_TRITON_CHUNK=str(ch), SSMIR_TRITON_WARPS=str(w))
        try:
            cells = [time_scan("triton", b, s, g, repeat)[0] for b, s in ((1, 256), (8, 128)) for g in (False, True)]
        except Exception as e:  # a configuration that does not compile (registers, shared memory)
            cells = [float("nan")] * 4
            print(f"config {bd, ch, w} failed: {str(e)[:200]}")
        rows.append(dict(block_d=bd, chunk=ch, warps=w, ms=[round(c, 3) for c in cells]))
        print(f"| {bd} | {ch} | {w} | " + " | ".join(f"{c:.3f}" for c in cells) + " |", flush=True)
    for k in ("SSMIR_TRITON_BLOCK_D", "SSMIR_TRITON_CHUNK", "SSMIR_TRITON_WARPS"):
        os.environ.pop(k, None)
    report["sweep"] = rows


def train_step(report, backends, repeat):
    import ssmir.models as models
    from ssmir.train.config import load_config
    from ssmir.train.schedulers import make_optimizer

    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs/eamamba/denoise-eamamba.yaml"))
    rows = []
    print("\n| training step, EAMamba denoise recipe (dim 64, [4,6,6,7]), batch 8, 128x128 | ms / step | peak GiB |"
          "\n|---|---:|---:|")
    for backend in backends:
        os.environ["SSMIR_SCAN_BACKEND"] = backend
        torch.manual_seed(0)
        model = models.create(cfg["model"]["name"], **cfg["model"]["args"]).cuda()
        opt = make_optimizer(model.parameters(), cfg["optimizer"])
        x, y = torch.rand(8, 3, 128, 128, device="cuda"), torch.rand(8, 3, 128, 128, device="cuda")

        def step(model=model, opt=opt, x=x, y=y):
            loss = (model(x) - y).abs().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        ms = cuda_time(step, repeat)
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        gib = torch.cuda.max_memory_allocated() / 2**30
        rows.append(dict(backend=backend, ms=round(ms, 1), peak_gib=round(gib, 2)))
        print(f"| {backend} | {ms:.1f} | {gib:.2f} |", flush=True)
        del model, opt
        torch.cuda.empty_cache()
    os.environ.pop("SSMIR_SCAN_BACKEND", None)
    report["train_step"] = rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()
    import triton

    report = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              "mamba_ssm": _mamba_ssm_fn() is not None}
    print(json.dumps(report), flush=True)
    backends = ["torch", "triton"] + (["cuda"] if report["mamba_ssm"] else [])
    t0 = time.time()
    try:
        check(report)
        bench_scan(report, backends, a.repeat)
        if a.sweep:
            sweep(report, max(3, a.repeat // 2))
        if not a.skip_train:
            train_step(report, backends, max(3, a.repeat // 2))
    finally:
        report["seconds"] = round(time.time() - t0, 1)
        if a.json:
            with open(a.json, "w") as f:
                json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
