"""MambaIR (Guo et al., ECCV 2024): the state-space restoration baseline that MambaIRv2 improves on.

A SwinIR-shaped network of Residual State Space Groups. Each block is a VMamba SS2D (four-direction
selective scan, ``ssmir.layers.ssm_heads.four_way_scan``) and a channel-attention conv block (CAB), each
with a learned-scale skip. ``upsampler: pixelshuffledirect`` selects the lightweight-SR variant (its CAB
uses depth-wise and dilated convs). Constructor arguments are the official BasicSR ``network_g`` options
of ``csguoh/MambaIR`` (``basicsr/archs/mambair_arch.py``); module names follow the official code so that
released checkpoints load unchanged.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ssmir.layers.ssm_heads import add_scan_parameters, four_way_scan, init_scan_parameters
from ssmir.models.mambairv2 import (
    apply_residual_conv,
    build_reconstruction,
    count_indexed,
    detect_reconstruction,
    init_weights,
    reconstruct,
    residual_conv,
)
from ssmir.models.registry import register, register_detector
from ssmir.ops.linear import TokenLinear


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole sample's branch with probability ``p`` (scaled by
    1/(1-p)); the identity in eval."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep if keep > 0 else x * mask


class ChannelAttention(nn.Module):
    """RCAN's squeeze-excitation: global mean, 1x1 to C // squeeze, ReLU, 1x1 back, sigmoid gate."""

    def __init__(self, dim: int, squeeze_factor: int = 30):
        super().__init__()
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(dim, dim // squeeze_factor, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(dim // squeeze_factor, dim, 1),
            nn.Sigmoid(),
        )

    def forward(self, x):
        if self.attention[1].out_channels == 0:
            raise ValueError(f"mambair: the channel attention of {x.shape[1]} channels squeezes them to "
                             f"{x.shape[1]} // 30 = 0 and cannot run (the official code fails here too); use "
                             "embed_dim >= 30")
        return x * self.attention(x)


class CAB(nn.Module):
    """Channel-attention conv block: 3x3 conv to C/3, GELU, 3x3 conv back, channel attention. The light-SR
    form: 1x1 to C/2, 3x3 depth-wise, GELU, 1x1 back, dilated 3x3 depth-wise, channel attention."""

    def __init__(self, dim: int, light: bool = False):
        super().__init__()
        if light:
            half = dim // 2
            self.cab = nn.Sequential(
                nn.Conv2d(dim, half, 1), nn.Conv2d(half, half, 3, 1, 1, groups=half), nn.GELU(),
                nn.Conv2d(half, dim, 1), nn.Conv2d(dim, dim, 3, 1, 2, dilation=2, groups=dim), ChannelAttention(dim),
            )
        else:
            self.cab = nn.Sequential(
                nn.Conv2d(dim, dim // 3, 3, 1, 1), nn.GELU(), nn.Conv2d(dim // 3, dim, 3, 1, 1), ChannelAttention(dim),
            )

    def forward(self, x):
        return self.cab(x)


class SS2D(nn.Module):
    """VMamba's 2D selective scan block: (B, H, W, C) -> (B, H, W, C).

    in_proj to x and gate z; x through a depth-wise conv and SiLU, scanned in four directions (summed);
    LayerNorm, gated by SiLU(z), out_proj.
    """

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 3, expand: float = 2.0):
        super().__init__()
        self.d_inner = int(expand * d_model)
        self.in_proj = TokenLinear(d_model, 2 * self.d_inner, bias=False)
        self.conv2d = nn.Conv2d(self.d_inner, self.d_inner, d_conv, padding=(d_conv - 1) // 2, groups=self.d_inner)
        add_scan_parameters(self, 4, self.d_inner, d_state, math.ceil(d_model / 16))
        init_scan_parameters(self)
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = TokenLinear(self.d_inner, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x, z = self.in_proj(x).chunk(2, dim=-1)
        x = self.conv2d(x.permute(0, 3, 1, 2))  # a channels-last view
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, self.d_inner)
        y = four_way_scan(self, x, h, w, activation="silu").view(b, h, w, self.d_inner)
        return self.out_proj(self.out_norm(y.to(z.dtype)) * F.silu(z))


class VSSBlock(nn.Module):
    """x * s1 + SS2D(LN(x)), then x * s2 + CAB(LN(x)), on (B, H, W, C) maps."""

    def __init__(self, dim: int, d_state: int, expand: float, drop_path: float, light: bool):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = SS2D(dim, d_state=d_state, expand=expand)
        self.drop_path = DropPath(drop_path)
        self.skip_scale = nn.Parameter(torch.ones(dim))
        self.conv_blk = CAB(dim, light)
        self.ln_2 = nn.LayerNorm(dim)
        self.skip_scale2 = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x = x * self.skip_scale + self.drop_path(self.self_attention(self.ln_1(x)))
        mixed = self.conv_blk(self.ln_2(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x * self.skip_scale2 + mixed


class ResidualStateSpaceGroup(nn.Module):
    """RSSG: ``depth`` VSS blocks, a conv, and a skip around them; (B, H, W, C) maps."""

    def __init__(self, dim, depth, d_state, expand, drop_path, resi_connection, light):
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.blocks = nn.ModuleList(
            [VSSBlock(dim, d_state, expand, drop_path[i], light) for i in range(depth)])
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x):
        y = x
        for block in self.residual_group.blocks:
            y = block(y)
        y = apply_residual_conv(self.conv, y.permute(0, 3, 1, 2), "mambair").permute(0, 2, 3, 1)
        return y + x


@register("mambair")
class MambaIR(nn.Module):
    """MambaIR (v1): classic SR ('pixelshuffle'), lightweight SR ('pixelshuffledirect'), colour denoising
    and JPEG artefact removal (no upsampler). Input (B, in_chans, H, W), any H and W."""

    # accepted and without effect on the network, as in the official constructor (which swallows **kwargs)
    _IGNORED = ("img_size", "patch_size", "norm_layer", "use_checkpoint", "window_size", "num_heads",
                "interval", "type")

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=96, depths=(6, 6, 6, 6), drop_rate=0.0,
                 d_state=16, mlp_ratio=2.0, drop_path_rate=0.1, norm_layer=None, patch_norm=True,
                 use_checkpoint=False, upscale=2, img_range=1.0, upsampler="", resi_connection="1conv", **extra):
        super().__init__()
        unknown = sorted(set(extra) - set(self._IGNORED))
        if unknown:
            warnings.warn(f"mambair: ignoring unknown argument(s) {unknown}", stacklevel=2)
        if embed_dim < 30:
            warnings.warn(f"mambair: embed_dim {embed_dim} < 30 leaves the channel attention's squeeze with "
                          f"{embed_dim} // 30 = 0 channels; the official code builds this network and fails in "
                          "forward, as this one will", stacklevel=2)
        if upsampler not in ("", "pixelshuffle", "pixelshuffledirect"):
            warnings.warn(f"mambair: upsampler {upsampler!r} is not 'pixelshuffle' or 'pixelshuffledirect'; the "
                          "official code builds and runs the denoising head ('') for it", stacklevel=2)
            upsampler = ""
        if resi_connection not in ("1conv", "3conv"):
            warnings.warn(f"mambair: resi_connection {resi_connection!r} is not '1conv' or '3conv'; the official code "
                          "builds no residual convolution for it and fails in forward, as this network will",
                          stacklevel=2)
        self.img_range, self.upscale, self.upsampler = img_range, int(upscale), upsampler
        self.input_channels = (int(in_chans),)
        mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        light = upsampler == "pixelshuffledirect"

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = nn.Module()
        if patch_norm:
            self.patch_embed.norm = nn.LayerNorm(embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        # stochastic depth grows with depth
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        starts = [sum(depths[:i]) for i in range(len(depths))]
        self.layers = nn.ModuleList([
            ResidualStateSpaceGroup(embed_dim, depth, d_state, mlp_ratio, rates[start:start + depth], resi_connection,
                                    light)
            for depth, start in zip(depths, starts, strict=True)
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)
        build_reconstruction(self, upsampler, embed_dim, in_chans)
        self.apply(init_weights)

    def forward_features(self, x):
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C): the blocks work on channels-last maps
        if hasattr(self.patch_embed, "norm"):
            x = self.patch_embed.norm(x)
        x = self.pos_drop(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x).permute(0, 3, 1, 2)

    def _deep_features(self, x):
        return apply_residual_conv(self.conv_after_body, self.forward_features(x), "mambair")

    def forward(self, x):
        x = (x - self.mean.to(x.dtype)) * self.img_range
        return reconstruct(self, x) / self.img_range + self.mean.to(x.dtype)


def _ratio(d_inner: int, dim: int) -> float:
    """An mlp_ratio r with int(r * dim) == d_inner, the plain quotient where it gives that."""
    r = d_inner / dim
    return r if int(r * dim) == d_inner else (d_inner + 0.5) / dim


@register_detector
def detect(sd: dict) -> tuple[str, dict] | None:
    """Recognise a MambaIR (v1) state_dict and rebuild its constructor args from keys and shapes.

    ``img_range`` cannot be read from weights; every released model uses 1.0, which is assumed.
    """
    first = "layers.0.residual_group.blocks.0."
    if f"{first}self_attention.x_proj_weight" not in sd or "conv_first.weight" not in sd:
        return None
    embed_dim, in_chans = (int(n) for n in sd["conv_first.weight"].shape[:2])
    groups = count_indexed(sd, "layers.")
    d_inner = sd[f"{first}self_attention.out_norm.weight"].shape[0]
    args = {
        "in_chans": in_chans, "embed_dim": embed_dim,
        "depths": [count_indexed(sd, f"layers.{i}.residual_group.blocks.") for i in range(groups)],
        "d_state": int(sd[f"{first}self_attention.A_logs"].shape[1]),
        "mlp_ratio": _ratio(int(d_inner), embed_dim), "img_range": 1.0,
        "resi_connection": "3conv" if "layers.0.conv.0.weight" in sd else "1conv",
    }
    if "patch_embed.norm.weight" not in sd:
        args["patch_norm"] = False
    args.update(detect_reconstruction(sd, in_chans))
    return "mambair", args
