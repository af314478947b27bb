"""Resolution changes: pixel-(un)shuffle down/up-sampling and sub-pixel upscalers."""

from __future__ import annotations

import math

from torch import nn


class Downsample(nn.Sequential):
    """Halve H and W, double C: 3x3 conv to C/2 channels, then PixelUnshuffle(2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


class Upsample(nn.Sequential):
    """Double H and W, halve C: 3x3 conv to 2C channels, then PixelShuffle(2)."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))


class PixelShuffleUpscale(nn.Sequential):
    """Sub-pixel upscaler for scale 2**n (n conv+shuffle(2) stages) or 3 (one conv+shuffle(3))."""

    def __init__(self, scale: int, dim: int):
        layers: list[nn.Module] = []
        if scale >= 1 and scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [nn.Conv2d(dim, 4 * dim, 3, 1, 1), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [nn.Conv2d(dim, 9 * dim, 3, 1, 1), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"upscale {scale} is not supported; use a power of 2 or 3")
        super().__init__(*layers)
