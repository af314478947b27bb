"""Effective receptive field (ERF): how strongly each input pixel moves one output pixel.

For each image, the gradient of the output value at a position (the centre by default, summed over
output channels) with respect to the input frame, in absolute value and summed over input channels;
the map is averaged over images. Models with extra inputs (EmambaIR's events) get zero extra inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssmir.data.io import IMAGE_SUFFIXES, list_images


def effective_receptive_field(model: nn.Module, images: list[torch.Tensor],
                              position: tuple[int, int] | None = None) -> np.ndarray:
    """Mean |d out[pos] / d input| over ``images`` (each (C, H, W)); returns an (H, W) float64 map."""
    model = model.eval()
    total = None
    for img in images:
        x = img[None].clone().requires_grad_(True)
        extra = [torch.zeros(1, c, *img.shape[-2:]) for c in getattr(model, "input_channels", (3,))[1:]]
        out = model(x, *extra)
        oh, ow = out.shape[-2:]
        ph, pw = position if position is not None else (oh // 2, ow // 2)
        (grad,) = torch.autograd.grad(out[..., ph, pw].sum(), x)
        g = grad.abs().sum(dim=(0, 1)).double().numpy()
        total = g if total is None else total + g
    if total is None:
        raise ValueError("effective_receptive_field: no images given")
    return total / len(images)


def _center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    h, w = arr.shape[:2]
    if h < size or w < size:
        raise ValueError(f"image of {h}x{w} is smaller than the {size}x{size} crop")
    top, left = (h - size) // 2, (w - size) // 2
    return arr[top:top + size, left:left + size]


def load_images(folder: str | Path | None, size: int = 128, count: int = 16, noise: float = 0.0,
                seed: int = 0) -> list[torch.Tensor]:
    """RGB images as (3, size, size) tensors in [0, 1], centre-cropped; optional Gaussian noise (sigma on 0-255).

    ``folder=None`` uses the colour sample images shipped with scikit-image.
    """
    arrays = []
    if folder is None:
        try:
            from skimage import data
        except ImportError:
            raise RuntimeError("no --images folder given and scikit-image is not installed "
                               "(pip install 'ssmir[tools]')") from None
        samples = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")
        for name in samples:
            try:
                arrays.append(getattr(data, name)())
            except Exception:  # a sample missing from this scikit-image version
                continue
    else:
        from PIL import Image

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"--images {folder}: no such folder")
        files = list_images(folder)
        if not files:
            raise FileNotFoundError(f"--images {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        for p in files:
            try:
                arrays.append(np.asarray(Image.open(p).convert("RGB")))
            except Exception as e:
                raise ValueError(f"{p}: cannot read image ({e})") from None
    rng = np.random.default_rng(seed)
    out = []
    for arr in arrays:
        if arr.ndim != 3 or min(arr.shape[:2]) < size:
            continue
        img = _center_crop(arr[..., :3], size).astype(np.float32) / 255.0
        if noise > 0:
            img = img + rng.normal(0.0, noise / 255.0, img.shape).astype(np.float32)
        out.append(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))))
        if len(out) == count:
            break
    if not out:
        raise ValueError(f"no image is at least {size}x{size} pixels")
    return out


def save_heatmaps(maps: dict[str, np.ndarray], path: str | Path, floor: float = 1e-4) -> Path:
    """Side-by-side heatmaps on one colour scale: each map over its own maximum, log10, in [log10 floor, 0]."""
    from ssmir.profiling.plots import pyplot

    plt = pyplot()
    n = len(maps)
    fig, axes = plt.subplots(1, n, figsize=(4 * n + 1, 4), squeeze=False)
    vmin = np.log10(floor)
    im = None
    for ax, (label, m) in zip(axes[0], maps.items(), strict=True):
        norm = np.log10(np.maximum(m / max(m.max(), 1e-30), floor))
        im = ax.imshow(norm, cmap="inferno", vmin=vmin, vmax=0.0)
        ax.set_title(label, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[0].tolist(), label="log10(|grad| / max)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
