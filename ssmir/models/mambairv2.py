"""MambaIRv2 (Guo et al., CVPR 2025) and MambaIRv2-Light: attentive state-space restoration.

A SwinIR-shaped network whose layers pair shifted-window attention with the Attentive State Space
Module (``ssmir.layers.assm``). ``mambairv2`` uses a ConvFFN channel mixer, ``mambairv2light`` a
gated MLP. Constructor arguments are the official BasicSR ``network_g`` options; module names follow
the official code so that released checkpoints load unchanged.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmir.layers.assm import AttentiveStateSpace
from ssmir.layers.resample import PixelShuffle, PixelShuffleUpscale
from ssmir.layers.window_attention import (
    WindowAttention,
    relative_position_index,
    shifted_window_mask_traced,
    window_partition,
    window_reverse,
)
from ssmir.models.registry import register, register_detector
from ssmir.ops.export_scan import exporting
from ssmir.ops.linear import TokenLinear, token_linear_halves

UPSAMPLERS = ("", "pixelshuffle", "pixelshuffledirect", "nearest+conv")


def _to_map(x, h, w):
    return rearrange(x, "b (h w) c -> b c h w", h=h, w=w)


def _to_tokens(x):
    return rearrange(x, "b c h w -> b (h w) c")


class ConvFFN(nn.Module):
    """Linear, GELU, plus a depth-wise conv branch (conv + GELU), linear: (B, L, C) -> (B, L, C)."""

    def __init__(self, dim: int, hidden: int, kernel_size: int = 5):
        super().__init__()
        self.fc1 = TokenLinear(dim, hidden)
        self.dwconv = nn.Module()
        self.dwconv.depthwise_conv = nn.Sequential(
            nn.Conv2d(hidden, hidden, kernel_size, 1, (kernel_size - 1) // 2, groups=hidden), nn.GELU())
        self.fc2 = TokenLinear(hidden, dim)

    def forward(self, x, size):
        x = F.gelu(self.fc1(x))
        x = x + _to_tokens(self.dwconv.depthwise_conv(_to_map(x, *size)))
        return self.fc2(x)


class GatedMLP(nn.Module):
    """Linear, GELU, spatial gate (one half, normalised and depth-wise convolved, gates the other), linear."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = TokenLinear(dim, hidden)
        self.sg = nn.Module()
        self.sg.norm = nn.LayerNorm(hidden // 2)
        self.sg.conv = nn.Conv2d(hidden // 2, hidden // 2, 5, 1, 2, groups=hidden // 2)
        self.fc2 = TokenLinear(hidden // 2, dim)

    def forward(self, x, size):
        a, b = (F.gelu(t) for t in token_linear_halves(x, self.fc1))  # contiguous: the norm reads b in place
        gate = _to_tokens(self.sg.conv(_to_map(self.sg.norm(b), *size)))
        return self.fc2(a * gate)


class AttentiveLayer(nn.Module):
    """Window attention + FFN, then ASSM + FFN, each half with a learned-scale long skip."""

    def __init__(self, dim, d_state, num_heads, window_size, shift_size, inner_rank, num_tokens, convffn_kernel_size,
                 mlp_ratio, light: bool, routing: str, qkv_bias: bool = True):
        super().__init__()
        self.window_size, self.shift_size = window_size, shift_size
        self.scale1 = nn.Parameter(1e-4 * torch.ones(dim))
        self.scale2 = nn.Parameter(1e-4 * torch.ones(dim))
        self.norm1, self.norm2, self.norm3, self.norm4 = (nn.LayerNorm(dim) for _ in range(4))
        self.wqkv = TokenLinear(dim, 3 * dim, bias=qkv_bias)
        self.win_mhsa = WindowAttention(dim, window_size, num_heads)
        self.assm = AttentiveStateSpace(dim, d_state, num_tokens=num_tokens, inner_rank=inner_rank,
                                        mlp_ratio=mlp_ratio, routing=routing)
        hidden = int(dim * mlp_ratio)
        if light:
            self.convffn1, self.convffn2 = GatedMLP(dim, hidden), GatedMLP(dim, hidden)
        else:
            self.convffn1 = ConvFFN(dim, hidden, convffn_kernel_size)
            self.convffn2 = ConvFFN(dim, hidden, convffn_kernel_size)
        self.embeddingA = nn.Embedding(inner_rank, d_state)  # prompt basis shared by the layer's ASSM
        nn.init.uniform_(self.embeddingA.weight, -1 / inner_rank, 1 / inner_rank)

    def forward(self, x, size, rpi):
        h, w = size
        b, n, c = x.shape
        ws, shift = self.window_size, self.shift_size

        shortcut = x
        if exporting():  # rolls and rearranges: the exported graph keeps height and width symbolic
            qkv = self.wqkv(self.norm1(x)).reshape(b, h, w, 3 * c)
            mask = None
            if shift > 0:
                qkv = torch.roll(qkv, shifts=(-shift, -shift), dims=(1, 2))
                mask = shifted_window_mask_traced(h, w, ws, x.device).to(x.dtype)
            attn = window_reverse(self.win_mhsa(window_partition(qkv, ws), rpi, mask), ws, h, w)
            if shift > 0:
                attn = torch.roll(attn, shifts=(shift, shift), dims=(1, 2))
            attn = attn.reshape(b, n, c)
        else:  # one gather into windows and one back (``WindowAttention.attend_map``), q, k, v taken in windows
            attn = self.win_mhsa.attend_map(self.norm1(x), size, rpi, shift, to_qkv=self.wqkv)
        x_win = attn + shortcut
        x_win = self.convffn1(self.norm2(x_win), size) + x_win
        x = torch.addcmul(x_win, shortcut, self.scale1)  # shortcut * scale1 + x_win in one pass

        shortcut = x
        x_ssm = self.assm(self.norm3(x), size, self.embeddingA) + x
        x = x_ssm + self.convffn2(self.norm4(x_ssm), size)
        return torch.addcmul(x, shortcut, self.scale2)


def residual_conv(dim: int, kind: str) -> nn.Module | None:
    """The conv after a group of layers; None for a ``resi_connection`` the official code builds no conv for."""
    if kind == "1conv":
        return nn.Conv2d(dim, dim, 3, 1, 1)
    if kind == "3conv":
        return nn.Sequential(nn.Conv2d(dim, dim // 4, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim // 4, 1, 1, 0), nn.LeakyReLU(0.2, inplace=True),
                             nn.Conv2d(dim // 4, dim, 3, 1, 1))
    return None


def apply_residual_conv(conv: nn.Module | None, x: torch.Tensor, owner: str) -> torch.Tensor:
    if conv is None:
        raise NotImplementedError(f"{owner}: resi_connection is neither '1conv' nor '3conv', so the network has no "
                                  "residual convolution and cannot run (the official code fails here too)")
    return conv(x)


def init_weights(m: nn.Module) -> None:
    """The official initialisation of the SwinIR-shaped MambaIR networks: truncated-normal (std 0.02) linear
    weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def build_reconstruction(model: nn.Module, upsampler: str, embed_dim: int, in_chans: int) -> None:
    """The official SwinIR-style heads, with their module names, on ``model`` (whose ``upscale`` is set):
    'pixelshuffle' (classic SR), 'pixelshuffledirect' (lightweight SR), 'nearest+conv' (x4), else a
    conv back to the image (denoising / JPEG, no upscaling: ``model.upscale`` becomes 1)."""
    num_feat = 64
    if upsampler in ("pixelshuffle", "nearest+conv"):
        model.conv_before_upsample = nn.Sequential(nn.Conv2d(embed_dim, num_feat, 3, 1, 1), nn.LeakyReLU(inplace=True))
    if upsampler == "pixelshuffle":
        model.upsample = PixelShuffleUpscale(model.upscale, num_feat)
        model.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
    elif upsampler == "pixelshuffledirect":
        model.upsample = nn.Sequential(nn.Conv2d(embed_dim, model.upscale**2 * in_chans, 3, 1, 1),
                                       PixelShuffle(model.upscale))
    elif upsampler == "nearest+conv":
        model.conv_up1 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        model.conv_up2 = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        model.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        model.conv_last = nn.Conv2d(num_feat, in_chans, 3, 1, 1)
    else:
        model.upscale = 1  # denoising / JPEG: the official forward ignores `upscale` here
        model.conv_last = nn.Conv2d(embed_dim, in_chans, 3, 1, 1)


def reconstruct(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Shallow conv, ``model._deep_features`` with the long skip, and the head of ``build_reconstruction``;
    x is the normalised input, the result is still normalised."""
    if model.upsampler == "pixelshuffle":
        x = model.conv_first(x)
        x = model._deep_features(x) + x
        return model.upsample.then_conv(model.conv_before_upsample(x), model.conv_last)
    if model.upsampler == "pixelshuffledirect":
        x = model.conv_first(x)
        return model.upsample(model._deep_features(x) + x)
    if model.upsampler == "nearest+conv":
        x = model.conv_first(x)
        x = model.conv_before_upsample(model._deep_features(x) + x)
        x = F.leaky_relu(model.conv_up1(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
        x = F.leaky_relu(model.conv_up2(F.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
        return model.conv_last(F.leaky_relu(model.conv_hr(x), 0.2))
    first = model.conv_first(x)
    return x + model.conv_last(model._deep_features(first) + first)


class AttentiveStateSpaceGroup(nn.Module):
    """ASSB: ``depth`` attentive layers (every other one shifted), a conv, and a skip around them."""

    def __init__(self, dim, depth, resi_connection, window_size, **layer_args):
        super().__init__()
        self.residual_group = nn.Module()
        self.residual_group.layers = nn.ModuleList([
            AttentiveLayer(dim, window_size=window_size, shift_size=0 if i % 2 == 0 else window_size // 2,
                           **layer_args)
            for i in range(depth)
        ])
        self.conv = residual_conv(dim, resi_connection)

    def forward(self, x, size, rpi):
        y = x
        for layer in self.residual_group.layers:
            y = layer(y, size, rpi)
        return _to_tokens(apply_residual_conv(self.conv, _to_map(y, *size), "mambairv2")) + x


class _MambaIRv2Base(nn.Module):
    """Shared body of MambaIRv2 and MambaIRv2-Light. Input (B, in_chans, H, W), any H and W."""

    light = False
    _IGNORED = ("norm_layer", "use_checkpoint", "drop_rate", "attn_drop_rate", "drop_path_rate", "type")

    def __init__(self, img_size=64, patch_size=1, in_chans=3, embed_dim=48, d_state=8, depths=(6, 6, 6, 6),
                 num_heads=(4, 4, 4, 4), window_size=16, inner_rank=32, num_tokens=64, convffn_kernel_size=5,
                 mlp_ratio=2.0, qkv_bias=True, ape=False, patch_norm=True, use_checkpoint=False, upscale=2,
                 img_range=1.0, upsampler="", resi_connection="1conv", routing="argmax", **extra):
        super().__init__()
        # Whatever the official constructor builds, this builds too (warning where the official network
        # would be unusual or fail later); it refuses only what the official constructor refuses.
        name = self.registry_name
        unknown = sorted(set(extra) - set(self._IGNORED))
        if unknown:
            warnings.warn(f"{name}: ignoring unknown argument(s) {unknown}", stacklevel=2)
        if len(num_heads) < len(depths):  # the official code reads num_heads[i] for every group
            raise ValueError(f"{name}: num_heads {list(num_heads)} has fewer entries than depths {list(depths)}")
        if len(num_heads) > len(depths):
            warnings.warn(f"{name}: num_heads {list(num_heads)} is longer than depths {list(depths)}; the extra "
                          "entries are ignored (as the official code does)", stacklevel=2)
        num_heads = list(num_heads)[: len(depths)]
        if any(embed_dim % heads for heads in num_heads):
            warnings.warn(f"{name}: embed_dim {embed_dim} is not divisible by every num_heads {num_heads}; the "
                          "window attention cannot run (as in the official code)", stacklevel=2)
        if upsampler not in UPSAMPLERS:
            warnings.warn(f"{name}: upsampler {upsampler!r} is not one of {UPSAMPLERS}; the official code builds and "
                          "runs the denoising head ('') for it", stacklevel=2)
            upsampler = ""
        if resi_connection not in ("1conv", "3conv"):
            warnings.warn(f"{name}: resi_connection {resi_connection!r} is not '1conv' or '3conv'; the official code "
                          "builds no residual convolution for it and fails in forward, as this network will",
                          stacklevel=2)
        if upsampler == "nearest+conv" and int(upscale) != 4:  # an assertion of the official constructor
            raise ValueError(f"{name}: upsampler 'nearest+conv' supports upscale 4 only, got {upscale}")
        self.img_range, self.upscale, self.upsampler = img_range, int(upscale), upsampler
        self.window_size = window_size
        self.input_channels = (int(in_chans),)
        mean = torch.tensor([0.4488, 0.4371, 0.4040]).view(1, 3, 1, 1) if in_chans == 3 else torch.zeros(1, 1, 1, 1)
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("relative_position_index_SA", relative_position_index(window_size))

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = nn.Module()
        if patch_norm:
            self.patch_embed.norm = nn.LayerNorm(embed_dim)
        if ape:  # absolute position embedding: one vector per token of an img_size input
            ih, iw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, (ih // ph) * (iw // pw), embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.layers = nn.ModuleList([
            AttentiveStateSpaceGroup(embed_dim, depth, resi_connection, window_size, d_state=d_state,
                                     num_heads=heads, inner_rank=inner_rank, num_tokens=num_tokens,
                                     convffn_kernel_size=convffn_kernel_size, mlp_ratio=mlp_ratio, light=self.light,
                                     routing=routing, qkv_bias=qkv_bias)
            for depth, heads in zip(depths, num_heads, strict=True)
        ])
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = residual_conv(embed_dim, resi_connection)

        build_reconstruction(self, upsampler, embed_dim, in_chans)
        self.apply(init_weights)

    def set_routing(self, routing: str) -> None:
        """'argmax' (deterministic, the eval default) or 'gumbel' (sampled, as in training) for every ASSM."""
        for m in self.modules():
            if isinstance(m, AttentiveStateSpace):
                m.routing = routing

    def forward_features(self, x):
        h, w = x.shape[-2:]
        tokens = _to_tokens(x)
        if hasattr(self.patch_embed, "norm"):
            tokens = self.patch_embed.norm(tokens)
        if hasattr(self, "absolute_pos_embed"):
            if tokens.shape[1] != self.absolute_pos_embed.shape[1]:
                raise ValueError(f"{self.registry_name}: ape=True fixes the number of tokens to "
                                 f"{self.absolute_pos_embed.shape[1]} (img_size / patch_size squared); the padded "
                                 f"input {h}x{w} has {tokens.shape[1]}")
            tokens = tokens + self.absolute_pos_embed
        for layer in self.layers:
            tokens = layer(tokens, (h, w), self.relative_position_index_SA)
        return _to_map(self.norm(tokens), h, w)

    def _deep_features(self, x):
        return apply_residual_conv(self.conv_after_body, self.forward_features(x), self.registry_name)

    def forward(self, x):
        h0, w0 = x.shape[-2:]
        ws = self.window_size
        h, w = -(-h0 // ws) * ws, -(-w0 // ws) * ws
        # mirror-pad to whole windows (the official padding: append flipped copies, then crop)
        x = torch.cat([x, torch.flip(x, [2])], 2)[:, :, :h, :]
        x = torch.cat([x, torch.flip(x, [3])], 3)[:, :, :, :w]
        x = (x - self.mean.to(x.dtype)) * self.img_range

        x = reconstruct(self, x)
        x = x / self.img_range + self.mean.to(x.dtype)
        return x[..., : h0 * self.upscale, : w0 * self.upscale]


@register("mambairv2")
class MambaIRv2(_MambaIRv2Base):
    """MambaIRv2 (ConvFFN): classic SR, colour denoising, JPEG artefact removal."""


@register("mambairv2light")
class MambaIRv2Light(_MambaIRv2Base):
    """MambaIRv2-Light (gated MLP): lightweight SR."""

    light = True


def count_indexed(sd: dict, prefix: str) -> int:
    """How many consecutive indices ``prefix{i}.`` occur among the keys."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in sd):
        n += 1
    return n


def detect_reconstruction(sd: dict, in_chans: int) -> dict:
    """``upsampler`` and ``upscale`` of a ``build_reconstruction`` head, read from its keys and shapes."""
    if "conv_up1.weight" in sd:
        return {"upsampler": "nearest+conv", "upscale": 4}
    if "conv_before_upsample.0.weight" in sd:
        convs = [k for k in sd if k.startswith("upsample.") and k.endswith(".weight")]
        out = sd[convs[0]].shape[0] // sd[convs[0]].shape[1]
        return {"upsampler": "pixelshuffle", "upscale": 3 if out == 9 else 2 ** len(convs)}
    if "upsample.0.weight" in sd:
        return {"upsampler": "pixelshuffledirect",
                "upscale": int(round((sd["upsample.0.weight"].shape[0] / in_chans) ** 0.5))}
    return {"upsampler": "", "upscale": 1}


@register_detector
def detect(sd: dict) -> tuple[str, dict] | None:
    """Recognise a MambaIRv2(-Light) state_dict and rebuild its constructor args from keys and shapes.

    ``img_range`` cannot be read from weights; every released model uses 1.0, which is assumed.
    """
    first = "layers.0.residual_group.layers.0."
    if f"{first}assm.selectiveScan.x_proj_weight" not in sd or "conv_first.weight" not in sd:
        return None
    light = f"{first}convffn1.sg.norm.weight" in sd
    embed_dim, in_chans = sd["conv_first.weight"].shape[:2]
    groups = count_indexed(sd, "layers.")
    depths = [count_indexed(sd, f"layers.{i}.residual_group.layers.") for i in range(groups)]
    heads = [sd[f"layers.{i}.residual_group.layers.0.win_mhsa.relative_position_bias_table"].shape[1]
             for i in range(groups)]
    table = sd[f"{first}win_mhsa.relative_position_bias_table"].shape[0]  # (2 ws - 1)^2 rows
    ws = (int(round(table**0.5)) + 1) // 2
    inner_rank, d_state = sd[f"{first}embeddingA.weight"].shape
    args = {
        "in_chans": int(in_chans), "embed_dim": int(embed_dim), "depths": depths, "num_heads": [int(h) for h in heads],
        "window_size": ws, "d_state": int(d_state), "inner_rank": int(inner_rank),
        "num_tokens": int(sd[f"{first}assm.embeddingB.weight"].shape[0]),
        "mlp_ratio": sd[f"{first}convffn1.fc1.weight"].shape[0] / embed_dim,
        "img_range": 1.0,
        "resi_connection": "3conv" if "layers.0.conv.0.weight" in sd else "1conv",
    }
    if f"{first}wqkv.bias" not in sd:
        args["qkv_bias"] = False
    if "patch_embed.norm.weight" not in sd:
        args["patch_norm"] = False
    if "absolute_pos_embed" in sd:  # a square img_size is assumed (the official configs' img_size is an int)
        args.update(ape=True, patch_size=1, img_size=int(round(sd["absolute_pos_embed"].shape[1] ** 0.5)))
    if not light:
        args["convffn_kernel_size"] = int(sd[f"{first}convffn1.dwconv.depthwise_conv.0.weight"].shape[-1])
    args.update(detect_reconstruction(sd, int(in_chans)))
    return ("mambairv2light" if light else "mambairv2"), args
