"""PSNR and SSIM as EAMamba's evaluation (test.py) computes them.

Inputs are (B, C, H, W) or (C, H, W) float tensors in [0, ``data_range``]; the caller clips predictions
to that range first, as the official code does (no quantisation to 8 bits).

- ``y_only``: evaluate on the ITU-R BT.601 luma, Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16/255.
- ``crop``: pixels removed at each border before measuring (SR: the scale factor).
- PSNR = 20 log10(data_range / sqrt(MSE)), the MSE over all pixels and channels.
- SSIM: an 11x11 Gaussian window (sigma 1.5) on 0-255 values, constants (0.01*255)^2 and (0.03*255)^2,
  filtered in valid mode; the official code then discards ``window_crop`` = 5 more pixels on each side of
  the SSIM map before averaging over pixels and channels. ``window_crop=0`` gives scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)``.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def _batched(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 3:
        return x[None]
    if x.dim() != 4:
        raise ValueError(f"metrics expect (B, C, H, W) or (C, H, W) tensors, got shape {tuple(x.shape)}")
    return x


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of an RGB image in [0, 1]: (B, 3, H, W) -> (B, 1, H, W), in [16/255, 235/255]."""
    if x.shape[1] != 3:
        raise ValueError(f"rgb_to_y needs 3 channels, got {x.shape[1]}")
    w = torch.tensor([65.481, 128.553, 24.966], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return ((x * w).sum(1, keepdim=True) + 16.0) / 255.0


def _prepare(pred, gt, crop, y_only):
    pred, gt = _batched(pred).double(), _batched(gt).double()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape")
    if crop:
        pred, gt = pred[..., crop:-crop, crop:-crop], gt[..., crop:-crop, crop:-crop]
    if y_only:
        pred, gt = rgb_to_y(pred), rgb_to_y(gt)
    return pred, gt


def psnr(pred: torch.Tensor, gt: torch.Tensor, crop: int = 0, y_only: bool = False, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB (inf for identical images)."""
    pred, gt = _prepare(pred, gt, crop, y_only)
    mse = (pred - gt).pow(2).mean().item()
    return math.inf if mse == 0 else 20 * math.log10(data_range / math.sqrt(mse))


@functools.lru_cache(maxsize=4)
def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(pred: torch.Tensor, gt: torch.Tensor, crop: int = 0, y_only: bool = False, data_range: float = 1.0,
         window_crop: int = 5) -> float:
    """Structural similarity, the official way (see the module docstring for ``window_crop``)."""
    pred, gt = _prepare(pred, gt, crop, y_only)
    pred, gt = pred * (255.0 / data_range), gt * (255.0 / data_range)
    c = pred.shape[1]
    window = _gaussian_window().to(pred.device).expand(c, 1, 11, 11)

    def filt(t):
        return F.conv2d(t, window, groups=c)  # valid mode

    mu1, mu2 = filt(pred), filt(gt)
    s11 = filt(pred * pred) - mu1 * mu1
    s22 = filt(gt * gt) - mu2 * mu2
    s12 = filt(pred * gt) - mu1 * mu2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 * mu1 + mu2 * mu2 + c1) * (s11 + s22 + c2))
    if window_crop:
        ssim_map = ssim_map[..., window_crop:-window_crop, window_crop:-window_crop]
    if ssim_map.numel() == 0:
        raise ValueError(f"image too small for SSIM after cropping: {tuple(pred.shape[-2:])}")
    return ssim_map.mean().item()
