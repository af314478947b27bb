"""Channel mixers (the feed-forward half of a MetaFormer block), all (B, C, H, W) -> (B, C, H, W)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn


class SimpleFFN(nn.Module):
    """1x1 expand, SimpleGate (split in two, multiply), 1x1 project (NAFNet)."""

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.0, bias: bool = False):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        if hidden % 2:
            raise ValueError(f"SimpleFFN: dim * ffn_expansion_factor = {hidden} must be even")
        self.project_in = nn.Conv2d(dim, hidden, 1, bias=bias)
        self.project_out = nn.Conv2d(hidden // 2, dim, 1, bias=bias)

    def forward(self, x):
        a, b = self.project_in(x).chunk(2, dim=1)
        return self.project_out(a * b)


class GDFN(nn.Module):
    """Gated depth-wise conv feed-forward network (Restormer)."""

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.0, bias: bool = False):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1, bias=bias)
        self.dwconv = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x):
        a, b = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(a) * b)


class FFN(nn.Module):
    """Plain 1x1 conv MLP with GELU."""

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.0, bias: bool = False):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, hidden, 1, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x):
        return self.project_out(F.gelu(self.project_in(x)))


class ChannelAttentionBlock(nn.Module):
    """1x1 conv, 3x3 depth-wise conv, squeeze-excitation channel attention, 1x1 conv (EAMamba's 'CCA')."""

    def __init__(self, dim: int, bias: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 1, bias=bias)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=bias)
        self.ca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, dim, 1, bias=bias),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim, dim, 1, bias=bias),
            nn.Sigmoid(),
        )
        self.conv3 = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x):
        x = self.conv2(self.conv1(x))
        return self.conv3(x * self.ca(x))


CHANNEL_MIXERS = ("simple", "gdfn", "ffn", "cca")


def make_channel_mixer(kind: str, dim: int, ffn_expansion_factor: float, bias: bool) -> nn.Module:
    """Build a channel mixer by its (case-insensitive) EAMamba name: Simple, GDFN, FFN or CCA."""
    key = str(kind).lower()
    if key == "simple":
        return SimpleFFN(dim, ffn_expansion_factor, bias)
    if key == "gdfn":
        return GDFN(dim, ffn_expansion_factor, bias)
    if key == "ffn":
        return FFN(dim, ffn_expansion_factor, bias)
    if key == "cca":
        return ChannelAttentionBlock(dim, bias)
    raise ValueError(f"channel_mixer_type {kind!r} is not one of Simple, GDFN, FFN, CCA")
