"""Channel LayerNorms for (B, C, H, W) feature maps, as Restormer-style networks use them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

LAYERNORM_TYPES = ("WithBias", "BiasFree")


class _WithBias(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):  # (..., C): (x - mean) / sqrt(biased var + 1e-5) * weight + bias, fused
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class _BiasFree(nn.Module):
    """Scales by the standard deviation without centring (Restormer's bias-free variant)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):  # (..., C)
        var = x.var(-1, keepdim=True, unbiased=False)
        return x / torch.sqrt(var + 1e-5) * self.weight


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of each pixel. Weights live under ``body.`` (official key layout)."""

    def __init__(self, dim: int, layernorm_type: str = "WithBias"):
        super().__init__()
        if layernorm_type not in LAYERNORM_TYPES:
            raise ValueError(f"layernorm_type {layernorm_type!r} is not one of {LAYERNORM_TYPES}")
        self.body = _BiasFree(dim) if layernorm_type == "BiasFree" else _WithBias(dim)

    def forward(self, x):  # (B, C, H, W)
        h, w = x.shape[-2:]
        return rearrange(self.body(rearrange(x, "b c h w -> b (h w) c")), "b (h w) c -> b c h w", h=h, w=w)
