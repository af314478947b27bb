"""Resolution changes: pixel-(un)shuffle down/up-sampling and sub-pixel upscalers."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ssmir.ops.export_scan import exporting


def pixel_shuffle(x: torch.Tensor, r: int) -> torch.Tensor:
    """``F.pixel_shuffle``; a channels-last input is rearranged by one strided copy into a channels-last result
    (the same values; ATen's kernel for that layout was 1.3-6x slower on the upscalers' large maps)."""
    if exporting() or x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last):
        return F.pixel_shuffle(x, r)
    b, c, h, w = x.shape
    if c % (r * r):
        return F.pixel_shuffle(x, r)  # ATen's error message
    y = x.permute(0, 2, 3, 1).reshape(b, h, w, c // (r * r), r, r).permute(0, 1, 4, 2, 5, 3)
    return y.reshape(b, h * r, w * r, c // (r * r)).permute(0, 3, 1, 2)


class PixelShuffle(nn.PixelShuffle):
    """``nn.PixelShuffle`` through ``pixel_shuffle`` (fast on channels-last maps)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pixel_shuffle(x, self.upscale_factor)


class Downsample(nn.Sequential):
    """Halve H and W, double C: 3x3 conv to C/2 channels, then PixelUnshuffle(2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


class Upsample(nn.Sequential):
    """Double H and W, halve C: 3x3 conv to 2C channels, then PixelShuffle(2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), PixelShuffle(2))


class PixelShuffleUpscale(nn.Sequential):
    """Sub-pixel upscaler for scale 2**n (n conv+shuffle(2) stages) or 3 (one conv+shuffle(3))."""

    def __init__(self, scale: int, dim: int):
        layers: list[nn.Module] = []
        if scale >= 1 and scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(dim, 4 * dim, 3, 1, 1), PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(dim, 9 * dim, 3, 1, 1), PixelShuffle(3)]
        else:
            raise ValueError(f"upscale {scale} is not supported; use a power of 2 or 3")
        super().__init__(*layers)
