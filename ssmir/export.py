"""Task exporters: results in the layouts the official MATLAB evaluation scripts read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from ssmir.data.benchmarks import load_sidd_blocks
from ssmir.data.io import atomic_write, list_images, read_image, save_image
from ssmir.eval.tester import restore_tensor


def export_sidd(model: nn.Module, root: Path, output: Path, name: str = "ssmir", device: str = "cpu",
                ensemble: int = 1) -> Path:
    """Denoise SIDD's ValidationNoisyBlocksSrgb.mat into ``output/<name>_Idenoised.mat``.

    The file holds ``Idenoised``: float32 (N, K, H, W, 3) in [0, 1], the layout SIDD's evaluation
    script (and the official ``evaluate_SIDD.m``) reads.
    """
    import scipy.io

    noisy = load_sidd_blocks(Path(root), "ValidationNoisyBlocksSrgb")
    out = np.zeros(noisy.shape, dtype=np.float32)
    model = model.eval().to(device)
    n, k = noisy.shape[:2]
    for i in tqdm(range(n), desc="SIDD blocks"):
        for j in range(k):
            x = torch.from_numpy(noisy[i, j].astype(np.float32) / 255.0).permute(2, 0, 1)[None].to(device)
            y = restore_tensor(model, x, ensemble=ensemble).clamp(0, 1)
            out[i, j] = y[0].permute(1, 2, 0).cpu().numpy()
    path = Path(output) / f"{name}_Idenoised.mat"
    return atomic_write(path, lambda t: scipy.io.savemat(t, {"Idenoised": out}))


def export_deblur(model: nn.Module, input_dir: Path, output: Path, dataset: str = "GoPro", device: str = "cpu",
                  ensemble: int = 1) -> Path:
    """Deblur every image of ``input_dir`` into ``output/<dataset>/<stem>.png`` (8-bit, rounded), the folder
    the official ``evaluate_gopro_hide.m`` compares with the targets."""
    files = list_images(input_dir)
    if not files:
        raise FileNotFoundError(f"{input_dir}: no images to deblur")
    folder = Path(output) / dataset
    model = model.eval().to(device)
    for p in tqdm(files, desc=f"deblur {dataset}"):
        y = restore_tensor(model, read_image(p)[None].to(device), ensemble=ensemble)
        save_image(y[0].clamp(0, 1).cpu(), folder / f"{p.stem}.png")
    return folder
