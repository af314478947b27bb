"""Where a training step of the bundled denoiser's architecture spends its time on a CUDA GPU.

Times one training step (forward, L1 loss, backward, AdamW; random images, no data loading) and a forward
pass without gradients for EAMamba-small at dim 16 (batch 16 and 4) and dim 32 (batch 16) of 128x128 crops,
mean of 10 steps after 3 warm-ups, then prints the PyTorch profiler's table of two steps (dim 16, batch 16) by
GPU time and by CPU time. Needs a CUDA device; the scan runs on the backend ssmir picks there (triton without
mamba-ssm).

    python benchmarks/profile_train_step_gpu.py [--config configs/ssmir/denoise-color-small-v2-gpu.yaml]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/ssmir/denoise-color-small-v2-gpu.yaml")
    a = p.parse_args()
    import torch
    import yaml
    from torch.profiler import ProfilerActivity, profile

    from ssmir.models import create
    from ssmir.ops.selective_scan import resolve_backend

    if not torch.cuda.is_available():
        raise SystemExit("profile_train_step_gpu: no CUDA device here")
    dev = torch.device("cuda")
    print("scan backend", resolve_backend(dev), flush=True)
    args = yaml.safe_load(open(a.config))["model"]["args"]
    for dim, bs in [(16, 16), (16, 4), (32, 16)]:
        m = create("eamamba", **dict(args, dim=dim)).to(dev).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
        x = torch.rand(bs, 3, 128, 128, device=dev)
        y = torch.rand_like(x)

        def step(m=m, opt=opt, x=x, y=y):
            loss = torch.nn.functional.l1_loss(m(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(10):
            step()
        torch.cuda.synchronize()
        dt = (time.perf_counter() - t) / 10
        with torch.no_grad():
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(10):
                m(x)
            torch.cuda.synchronize()
            df = (time.perf_counter() - t) / 10
        print(f"dim {dim} batch {bs}x128^2: train step {dt * 1000:.1f} ms, forward (no grad) {df * 1000:.1f} ms",
              flush=True)
        if dim == 16 and bs == 16:
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(2):
                    step()
                torch.cuda.synchronize()
            table = prof.key_averages()
            print(table.table(sort_by="self_cuda_time_total", row_limit=22, max_name_column_width=60), flush=True)
            print(table.table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=60), flush=True)


if __name__ == "__main__":
    main()
