"""Evaluate a model on a benchmark with the field's conventions; write per-image CSV and summaries."""

from __future__ import annotations

import csv
import io
import json
import time
from functools import partial
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from ssmir.data.benchmarks import Benchmark, DatasetError
from ssmir.data.io import atomic_write, save_image
from ssmir.eval.inference import eval_pad_multiple, pad_to_multiple, run_model, upscale_factor
from ssmir.eval.metrics import psnr, ssim
from ssmir.eval.tiling import quadrant_forward, self_ensemble, tiled_forward


def restore_tensor(model: nn.Module, x: torch.Tensor, *extra: torch.Tensor, ensemble: int = 1,
                   tile: int | None = None, overlap: int = 32, tile_batch: int = 1,
                   progress: bool = False, quadrants: int | None = None) -> torch.Tensor:
    """Model output for (B, C, H, W) ``x`` of any size (plus extra inputs such as event voxel grids):
    padding, optional tiling and self-ensemble. ``quadrants`` (EAMamba's ``eval_crop_size``) replaces the
    tiling by the official quadrant split (``ssmir.eval.tiling.quadrant_forward``; single-input models)."""
    def whole(*t):
        return run_model(model, *t)

    bar = partial(tqdm, desc="tiles", leave=False) if progress else None

    def tiled(*t):
        if quadrants:
            return quadrant_forward(whole, t[0], crop_size=quadrants, scale=upscale_factor(model))
        return tiled_forward(whole, *t, tile=tile, overlap=overlap, scale=upscale_factor(model),
                             tile_batch=tile_batch, progress=bar)

    with torch.no_grad():
        return self_ensemble(tiled, x, *extra, mode=ensemble)


def official_input(model: nn.Module, x: torch.Tensor, *extra: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Inputs prepared as the model's official test pipeline does before the network and the ensemble see
    them: reflect-padded at the bottom/right to ``eval_pad_multiple(model)`` (8 for EAMamba). The padding
    matters beyond the border: the scan is global, so it changes every output pixel, and the ensemble
    flips the padded image."""
    m = eval_pad_multiple(model)
    return tuple(pad_to_multiple(t, m)[0] for t in (x, *extra))


def evaluate(model: nn.Module, bench: Benchmark, ensemble: int = 1, tile: int | None = None, overlap: int = 32,
             device: str = "cpu", save_dir: Path | None = None, progress: bool = True) -> tuple[list[dict], dict]:
    """PSNR/SSIM of ``model`` on every sample; returns per-image rows and a summary.

    Inputs are prepared as the model's official test does (``official_input``); a benchmark with an
    official ``eval_crop_size`` (``bench.quadrants``) is run by the official quadrant split unless
    ``tile`` asks for blended tiles.
    """
    quadrants = bench.quadrants if tile is None else None
    channels = getattr(model, "input_channels", (3,))
    model = model.eval().to(device)
    conv = bench.convention
    rows = []
    for sample in tqdm(bench.samples, desc=bench.name, disable=not progress):
        lq, gt = sample.lq(), sample.gt()
        if lq.shape[0] != channels[0]:
            raise DatasetError(f"{bench.name}/{sample.name}: input has {lq.shape[0]} channels, the model takes "
                               f"{channels[0]}")
        extra = []
        if len(channels) > 1:
            if sample.events is None:
                raise DatasetError(f"{bench.name}: the model takes events as well, this dataset has none")
            extra = [sample.events(channels[1])[None].to(device)]
        elif sample.events is not None:
            raise DatasetError(f"{bench.name}: an event dataset needs an event model (e.g. emambair)")
        start = time.perf_counter()
        inputs = official_input(model, lq[None].to(device), *extra)
        if quadrants and len(inputs) > 1:
            raise DatasetError(f"{bench.name}: the official quadrant split takes single-input models only")
        pred = restore_tensor(model, *inputs, ensemble=ensemble, tile=tile, overlap=overlap, quadrants=quadrants)
        seconds = time.perf_counter() - start
        pred = pred[0, :, : gt.shape[1], : gt.shape[2]].float().clamp(0, 1).cpu()
        if pred.shape != gt.shape:
            raise DatasetError(f"{bench.name}/{sample.name}: output {tuple(pred.shape)} does not fit the ground "
                               f"truth {tuple(gt.shape)} (wrong model for this dataset?)")
        rows.append({"image": sample.name, "psnr": psnr(pred, gt, conv.crop, conv.y_only),
                     "ssim": ssim(pred, gt, conv.crop, conv.y_only), "seconds": seconds})
        if save_dir is not None:
            save_image(pred, Path(save_dir) / f"{sample.name}.png")
    n = len(rows)
    summary = {
        "dataset": bench.name, "task": bench.task, **bench.params, "images": n,
        "psnr": sum(r["psnr"] for r in rows) / n, "ssim": sum(r["ssim"] for r in rows) / n,
        "metric": conv.describe(), "ensemble": ensemble, "tile": tile, "quadrants": quadrants,
        "seconds_per_image": sum(r["seconds"] for r in rows) / n, "device": str(device),
    }
    return rows, summary


def write_results(rows: list[dict], summary: dict, out_dir: Path) -> dict[str, Path]:
    """per_image.csv, summary.json and summary.md in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    buf = io.StringIO()
    fields = list(rows[0]) if rows else ["image", "psnr", "ssim", "seconds"]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    for r in rows:
        writer.writerow({k: f"{v:.4f}" if k in ("psnr", "seconds") else f"{v:.6f}" if isinstance(v, float) else v
                         for k, v in r.items()})
    md = ["| " + " | ".join(summary) + " |", "|" + "---|" * len(summary),
          "| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in summary.values()) + " |"]
    files = {"csv": out_dir / "per_image.csv", "json": out_dir / "summary.json", "md": out_dir / "summary.md"}
    atomic_write(files["csv"], lambda t: Path(t).write_text(buf.getvalue()))
    atomic_write(files["json"], lambda t: Path(t).write_text(json.dumps(summary, indent=2) + "\n"))
    atomic_write(files["md"], lambda t: Path(t).write_text("\n".join(md) + "\n"))
    return files
