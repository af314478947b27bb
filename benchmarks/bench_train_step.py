"""Time of one training step (forward, L1 loss, backward, AdamW) of a training config's model on this CPU.

The model, batch and crop size come from the config (default: the bundled denoiser's recipe). Each scan
backend is timed in the same run, so the ratio between them holds on any machine; the table shows the median
of ``--repeat`` steps after ``--warmup`` steps.

    python benchmarks/bench_train_step.py
    python benchmarks/bench_train_step.py --config configs/ssmir/denoise-color-small.yaml --backends numba torch
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def step_times(cfg: dict, backend: str, repeat: int, warmup: int) -> list[float]:
    import torch

    import ssmir.models as models
    from ssmir.train.schedulers import make_optimizer

    os.environ["SSMIR_SCAN_BACKEND"] = backend
    torch.manual_seed(0)
    model = models.create(cfg["model"]["name"], **(cfg["model"].get("args") or {}))
    optimizer = make_optimizer(model.parameters(), cfg["optimizer"])
    batch, crop = cfg["train_dataset"]["batch_size"], cfg["train_dataset"]["crop_size"]
    channels = cfg["model"]["args"].get("inp_channels", 3)
    x, y = torch.rand(batch, channels, crop, crop), torch.rand(batch, channels, crop, crop)
    times = []
    for _ in range(warmup + repeat):
        t = time.perf_counter()
        loss = (model(x) - y).abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    return times[warmup:]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/ssmir/denoise-color-small.yaml")
    p.add_argument("--backends", nargs="+", default=["numba", "torch"])
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    import torch

    from ssmir.train.config import load_config

    torch.set_num_threads(a.threads)
    cfg = load_config(a.config)
    batch, crop = cfg["train_dataset"]["batch_size"], cfg["train_dataset"]["crop_size"]
    print(f"{a.config}: {cfg['model']['name']}, batch {batch}, crop {crop}, {a.threads} threads, "
          f"median of {a.repeat} steps after {a.warmup}\n")
    print("| scan backend | s / step | relative to first |")
    print("|---|---:|---:|")
    first = None
    for backend in a.backends:
        med = statistics.median(step_times(cfg, backend, a.repeat, a.warmup))
        first = first or med
        print(f"| {backend} | {med:.3f} | {med / first:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
