"""EmambaIR's image-event fusion: TSAM (top-k sparse cross-modal attention) and GSSM (gated state space).

Module and parameter names follow the official code (``YunhangWickert/EmambaIR``) so that its
state_dicts load unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmir.layers.norms import LayerNorm2d
from ssmir.layers.ssm_heads import add_scan_parameters, four_way_scan, init_scan_parameters
from ssmir.ops.linear import TokenLinear

TOPK_FRACTIONS = (1 / 2, 2 / 3, 3 / 4, 4 / 5)


class TopKChannelAttention(nn.Module):
    """Transposed (channel) attention of image queries over event keys/values, kept sparse by top-k.

    Attention between the channels of each head is computed once and masked to its top C/2, 2C/3,
    3C/4 and 4C/5 entries per row; the four softmax-ed results are mixed with learned weights.
    """

    def __init__(self, dim: int, num_heads: int, bias: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)
        for i in range(1, 5):
            setattr(self, f"attn{i}", nn.Parameter(torch.tensor([0.2])))
        self.q = nn.Conv2d(dim, dim, 1, bias=bias)
        self.q_dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=bias)
        self.k2 = nn.Conv2d(dim, dim, 1, bias=bias)
        self.k2_dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=bias)
        self.v2 = nn.Conv2d(dim, dim, 1, bias=bias)
        self.v2_dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim, bias=bias)
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))

    def forward(self, image: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        heads = self.num_heads
        q = rearrange(self.q_dwconv(self.q(image)), "b (k c) h w -> b k c (h w)", k=heads)
        k = rearrange(self.k2_dwconv(self.k2(event)), "b (k c) h w -> b k c (h w)", k=heads)
        v = rearrange(self.v2_dwconv(self.v2(event)), "b (k c) h w -> b k c (h w)", k=heads)
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        channels = q.shape[2]
        scale = torch.clamp(self.logit_scale, max=math.log(1.0 / 0.01)).exp()
        attn = (q @ k.transpose(-2, -1)) * scale  # (B, heads, C, C)
        out = 0
        for i, frac in enumerate(TOPK_FRACTIONS, start=1):
            top = torch.topk(attn, k=int(channels * frac), dim=-1, largest=True).indices
            keep = torch.zeros_like(attn).scatter_(-1, top, 1.0) > 0
            sparse = torch.where(keep, attn, torch.full_like(attn, float("-inf"))).softmax(dim=-1)
            out = out + (sparse @ v) * getattr(self, f"attn{i}")
        return self.project_out(rearrange(out, "b k c (h w) -> b (k c) h w", h=h, w=w))


class TSAM(nn.Module):
    """Top-k Sparse Attention Module: event-gated image features refined by cross-modal attention."""

    def __init__(self, dim: int, num_heads: int, bias: bool = False, layernorm_type: str = "WithBias"):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1, bias=bias)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1, bias=bias)
        self.conv3 = nn.Conv2d(dim, dim, 3, padding=1, bias=bias)
        self.norm2_image = LayerNorm2d(dim, layernorm_type)
        self.attn1 = TopKChannelAttention(dim, num_heads, bias)
        self.norm1_image = LayerNorm2d(dim, layernorm_type)
        self.norm1_event = LayerNorm2d(dim, layernorm_type)

    def forward(self, image, event):
        x = self.conv2(event) * torch.sigmoid(self.conv1(image)) + image
        x = x + self.attn1(self.norm1_image(x), self.norm1_event(event))
        return self.conv3(self.norm2_image(x)) + x


class FourWayScan(nn.Module):
    """VMamba's SS2D with a separate gate input: four scans (rows, columns, both reversed), summed.

    (B, C, H, W) features and gate -> (B, C, H, W).
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: float = 2.0):
        super().__init__()
        self.d_inner = int(expand * d_model)
        self.in_proj = TokenLinear(d_model, self.d_inner, bias=False)
        self.in_proj1 = TokenLinear(d_model, self.d_inner, bias=False)
        self.conv2d = nn.Conv2d(self.d_inner, self.d_inner, d_conv, padding=(d_conv - 1) // 2, groups=self.d_inner)
        add_scan_parameters(self, 4, self.d_inner, d_state, math.ceil(d_model / 16))
        init_scan_parameters(self)
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = TokenLinear(self.d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        length = h * w
        x = self.in_proj(rearrange(x, "b c h w -> b (h w) c"))  # tokens (B, L, d_inner)
        z = self.in_proj1(rearrange(z, "b c h w -> b (h w) c"))
        x = self.conv2d(x.view(b, h, w, self.d_inner).permute(0, 3, 1, 2))  # a channels-last view of the tokens
        x = x.permute(0, 2, 3, 1).reshape(b, length, self.d_inner)
        y = four_way_scan(self, x, h, w, activation="silu")  # (B, L, d_inner)
        y = self.out_norm(y.to(z.dtype)) * F.silu(z)
        return rearrange(self.out_proj(y), "b (h w) c -> b c h w", h=h, w=w)


class MultiScaleFeature(nn.Module):
    """Parallel 3x3 and 1x1 depth-wise branches, mixed across scales, then projected (official 'Multiscalefeature')."""

    def __init__(self, dim: int, ffn_expansion_factor: float = 2.0, bias: bool = False):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.dwconv3x3 = nn.Conv2d(dim, hidden * 2, 3, 1, 1, groups=dim, bias=bias)
        self.dwconv1x1 = nn.Conv2d(dim, hidden * 2, 1, 1, 0, groups=dim, bias=bias)
        self.dwconv3x3_1 = nn.Conv2d(hidden * 2, hidden, 3, 1, 1, groups=hidden, bias=bias)
        self.dwconv1x1_1 = nn.Conv2d(hidden * 2, hidden, 1, 1, 0, groups=hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden * 2, dim, 1, bias=bias)

    def forward(self, x):
        a3, b3 = F.relu(self.dwconv3x3(x)).chunk(2, dim=1)
        a1, b1 = F.relu(self.dwconv1x1(x)).chunk(2, dim=1)
        a = F.relu(self.dwconv3x3_1(torch.cat([a3, a1], dim=1)))
        b = F.relu(self.dwconv1x1_1(torch.cat([b3, b1], dim=1)))
        return self.project_out(torch.cat([a, b], dim=1))


class NonlinearGatedUnit(nn.Module):
    """(B, L, C) -> (B, L, C): fc1 to 2*hidden, split, gelu(gate) * value, fc2."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = TokenLinear(dim, 2 * hidden)
        self.fc2 = TokenLinear(hidden, dim)

    def forward(self, x):
        value, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.gelu(gate) * value)


class GSSM(nn.Module):
    """Gated State Space Module: multi-scale conv mixer, four-way selective scan, gated MLP, each residual."""

    def __init__(self, dim: int, ffn_expansion_factor: float = 4.0, conv_expansion_factor: float = 2.0,
                 bias: bool = False, layernorm_type: str = "WithBias"):
        super().__init__()
        self.norm3_image = LayerNorm2d(dim, layernorm_type)
        self.norm2 = LayerNorm2d(dim, layernorm_type)
        self.norm3 = nn.LayerNorm(dim)
        self.NonlinearGatedUnit = NonlinearGatedUnit(dim, int(dim * ffn_expansion_factor))
        self.Multiscalefeature = MultiScaleFeature(dim, conv_expansion_factor, bias=False)
        self.SS2D = FourWayScan(dim)

    def forward(self, x):
        h, w = x.shape[-2:]
        x = x + self.Multiscalefeature(self.norm2(x))
        normed = self.norm3_image(x)
        x = self.SS2D(normed, normed) + x
        tokens = rearrange(x, "b c h w -> b (h w) c")
        tokens = self.NonlinearGatedUnit(self.norm3(tokens)) + tokens
        return rearrange(tokens, "b (h w) c -> b c h w", h=h, w=w)


class ImageEventFusion(nn.Module):
    """TSAM then GSSM (the official ``GatedStateSpaceModule``): fuse event features into image features."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float = 4.0, bias: bool = False,
                 layernorm_type: str = "WithBias"):
        super().__init__()
        self.TSAM = TSAM(dim, num_heads, bias, layernorm_type)
        self.GSSM = GSSM(dim, ffn_expansion_factor, 2.0, bias, layernorm_type)

    def forward(self, image, event):
        if image.shape != event.shape:
            raise ValueError(f"image features {tuple(image.shape)} and event features {tuple(event.shape)} differ")
        return self.GSSM(self.TSAM(image, event))
