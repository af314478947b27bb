"""EAMamba (Lin et al., ICCV 2025): a UNet of MHSSM blocks, and its lightweight SR network.

``EAMamba`` serves denoising, real denoising (SIDD), motion and defocus deblurring, dehazing,
deraining and real SR; ``EAMambaSR`` is the lightweight classic-SR network. Both take exactly the
official YAML ``model.args`` (nested ``mamba_cfg``; the norm option spelled ``layernorm_type``
or ``LayerNorm_type``). Module names follow the official code so released checkpoints load
unchanged. See docs/differences.md for what we do differently on purpose.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

from ssmir.layers.channel_mixers import make_channel_mixer
from ssmir.layers.mhssm import MHSSMConfig, MultiHeadSelectiveScan
from ssmir.layers.norms import LayerNorm2d
from ssmir.layers.resample import Downsample, PixelShuffleUpscale, Upsample
from ssmir.models.registry import register


class MambaFormerBlock(nn.Module):
    """x + MHSSM(norm1(x)), then x + channel_mixer(norm2(x)); (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim, ffn_expansion_factor, bias, layernorm_type, mamba_cfg: MHSSMConfig,
                 channel_mixer_type, use_checkpoint=False):
        super().__init__()
        self.use_checkpoint = use_checkpoint
        self.norm1 = LayerNorm2d(dim, layernorm_type)
        self.mamba = MultiHeadSelectiveScan(dim, mamba_cfg)
        self.norm2 = LayerNorm2d(dim, layernorm_type)
        self.ffn = make_channel_mixer(channel_mixer_type, dim, ffn_expansion_factor, bias)

    def forward(self, x):
        # channels-last memory: the (B, C, H, W) map is its own (B, L, C) tokens, so the norms, the token
        # mixer and the residual adds read it in place (a no-op when it already is)
        x = x.contiguous(memory_format=torch.channels_last)
        h, w = x.shape[-2:]
        tokens = rearrange(self.norm1(x), "b c h w -> b (h w) c")
        x = x + rearrange(self.mamba(tokens, (h, w)), "b (h w) c -> b c h w", h=h, w=w)
        if self.use_checkpoint and torch.is_grad_enabled():
            return x + checkpoint(self.ffn, self.norm2(x), use_reentrant=False)
        return x + self.ffn(self.norm2(x))


def _blocks(num_blocks: int, dim: int, settings: dict) -> nn.Sequential:
    """``num_blocks`` blocks; the first ceil(checkpoint_percentage * n) use gradient checkpointing."""
    n_ckpt = math.ceil(settings["checkpoint_percentage"] * num_blocks)
    kw = {k: v for k, v in settings.items() if k != "checkpoint_percentage"}
    return nn.Sequential(*[MambaFormerBlock(dim, use_checkpoint=i < n_ckpt, **kw) for i in range(num_blocks)])


def _shared_settings(name, ffn_expansion_factor, bias, layernorm_type, LayerNorm_type, checkpoint_percentage,
                     channel_mixer_type, mamba_cfg, extra, ignored) -> dict:
    """Validate the arguments both EAMamba networks share, and return the per-block settings.

    What the official constructor accepts is accepted (with a warning where it is unusual); only what it
    refuses is refused. ``checkpoint_percentage`` acts as in the official code for any value (the first
    ceil(p * n) blocks of a stage are checkpointed).
    """
    if LayerNorm_type is not None and layernorm_type is not None and LayerNorm_type != layernorm_type:
        warnings.warn(f"{name}: layernorm_type={layernorm_type!r} and LayerNorm_type={LayerNorm_type!r} disagree; "
                      "using layernorm_type, the official constructor's argument", stacklevel=3)
    norm = layernorm_type if layernorm_type is not None else LayerNorm_type
    if norm not in (None, "WithBias", "BiasFree"):  # the official LayerNorm: 'BiasFree', else with bias
        warnings.warn(f"{name}: layernorm_type {norm!r} is neither 'WithBias' nor 'BiasFree'; the official code "
                      "builds the WithBias norm for it, and so does this", stacklevel=3)
        norm = "WithBias"
    unknown = sorted(set(extra) - set(ignored))
    if unknown:
        warnings.warn(f"{name}: ignoring unknown argument(s) {unknown}", stacklevel=3)
    make_channel_mixer(channel_mixer_type, 8, ffn_expansion_factor, bias)  # validates the name early
    return {
        "ffn_expansion_factor": ffn_expansion_factor,
        "bias": bias,
        "layernorm_type": norm or "WithBias",
        "mamba_cfg": MHSSMConfig.from_dict(mamba_cfg),
        "channel_mixer_type": channel_mixer_type,
        "checkpoint_percentage": float(checkpoint_percentage),
    }


@register("eamamba")
class EAMamba(nn.Module):
    """The EAMamba UNet: 4 encoder levels, 3 decoder levels, refinement; global residual.

    Input (B, inp_channels, H, W) with H and W multiples of 8 (use ``ssmir.inference`` for any
    size); output (B, out_channels, H * upscale, W * upscale). ``dual_pixel_task`` takes the two
    dual-pixel views stacked as 6 channels and replaces the global residual by a skip conv.
    """

    size_multiple = 8  # three 2x downsamplings
    eval_pad_multiple = 8  # the official test datasets reflect-pad every input to a multiple of 8
    onnx_fixed_size = "its all-around scan orders are computed for one image size"

    def __init__(self, inp_channels=3, out_channels=3, dim=64, num_blocks=(4, 6, 6, 7), num_refinement_blocks=2,
                 ffn_expansion_factor=2.0, bias=False, layernorm_type=None, dual_pixel_task=False,
                 checkpoint_percentage=0.0, channel_mixer_type="Simple", upscale=1, mamba_cfg=None,
                 LayerNorm_type=None, **extra):
        super().__init__()
        if len(num_blocks) < 4:
            raise ValueError(f"eamamba: num_blocks needs 4 entries (one per level), got {list(num_blocks)}")
        if len(num_blocks) > 4:
            warnings.warn(f"eamamba: num_blocks {list(num_blocks)} has more than 4 entries; the official network "
                          "uses the first 4, and so does this", stacklevel=2)
        s = _shared_settings("eamamba", ffn_expansion_factor, bias, layernorm_type, LayerNorm_type,
                             checkpoint_percentage, channel_mixer_type, mamba_cfg, extra, ignored=("heads",))
        self.upscale = int(upscale)
        self.input_channels = (int(inp_channels),)  # one input tensor and its channels
        self.dual_pixel_task = bool(dual_pixel_task)
        d1, d2, d3, d4 = dim, dim * 2, dim * 4, dim * 8

        self.patch_embed = nn.Module()  # OverlapPatchEmbed(inp_channels, dim): never a bias, whatever `bias` says
        self.patch_embed.proj = nn.Conv2d(inp_channels, d1, 3, padding=1, bias=False)
        self.encoder_level1 = _blocks(num_blocks[0], d1, s)
        self.down1_2 = Downsample(d1)
        self.encoder_level2 = _blocks(num_blocks[1], d2, s)
        self.down2_3 = Downsample(d2)
        self.encoder_level3 = _blocks(num_blocks[2], d3, s)
        self.down3_4 = Downsample(d3)
        self.latent = _blocks(num_blocks[3], d4, s)

        self.up4_3 = Upsample(d4)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, 1, bias=bias)
        self.decoder_level3 = _blocks(num_blocks[2], d3, s)
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, 1, bias=bias)
        self.decoder_level2 = _blocks(num_blocks[1], d2, s)
        self.up2_1 = Upsample(d2)
        self.decoder_level1 = _blocks(num_blocks[0], d2, s)  # level 1 decodes at 2*dim, no channel reduction
        self.refinement = _blocks(num_refinement_blocks, d2, s)

        if self.dual_pixel_task:
            self.skip_conv = nn.Conv2d(d1, d2, 1, bias=bias)
        if self.upscale > 1:
            self.upsample = PixelShuffleUpscale(self.upscale, out_channels)
        self.output = nn.Conv2d(d2, out_channels, 3, padding=1, bias=bias)

    def forward(self, x):
        emb = self.patch_embed.proj(x)
        enc1 = self.encoder_level1(emb)
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))

        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1)))
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1)))
        dec1 = self.refinement(self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1)))

        if self.dual_pixel_task:
            return self.output(dec1 + self.skip_conv(emb))
        if self.upscale > 1:
            # The official HEAD feeds the 2*dim features to an upscaler built for out_channels and
            # crashes; we upscale the output image instead (same weights layout). docs/differences.md
            skip = F.interpolate(x, scale_factor=self.upscale, mode="bicubic", align_corners=False)
            return self.upsample(self.output(dec1)) + skip
        return self.output(dec1) + x


class ResidualGroup(nn.Module):
    """Blocks, a 3x3 conv, and a skip around both."""

    def __init__(self, num_blocks, dim, settings):
        super().__init__()
        self.blocks = _blocks(num_blocks, dim, settings)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x):
        return self.conv(self.blocks(x)) + x


@register("eamambasr")
class EAMambaSR(nn.Module):
    """Lightweight EAMamba for classic SR: shallow conv, residual groups, norm, pixel-shuffle upscaler.

    Input (B, inp_channels, H, W); output (B, out_channels, H * upscale, W * upscale).
    """

    eval_pad_multiple = 8  # the official test datasets reflect-pad every input to a multiple of 8
    onnx_fixed_size = "its all-around scan orders are computed for one image size"

    def __init__(self, inp_channels=3, out_channels=3, dim=64, num_blocks=(4, 4, 4, 4), ffn_expansion_factor=2.0,
                 bias=False, layernorm_type=None, checkpoint_percentage=0.0, channel_mixer_type="Simple", upscale=2,
                 mamba_cfg=None, LayerNorm_type=None, **extra):
        super().__init__()
        s = _shared_settings("eamambasr", ffn_expansion_factor, bias, layernorm_type, LayerNorm_type,
                             checkpoint_percentage, channel_mixer_type, mamba_cfg, extra,
                             ignored=("heads", "dual_pixel_task", "num_refinement_blocks"))
        self.upscale = int(upscale)
        self.input_channels = (int(inp_channels),)
        self.conv_first = nn.Conv2d(inp_channels, dim, 3, padding=1, bias=bias)
        self.layers = nn.ModuleList([ResidualGroup(n, dim, s) for n in num_blocks])
        self.norm = LayerNorm2d(dim, s["layernorm_type"])
        self.conv_after_body = nn.Conv2d(dim, dim, 3, padding=1, bias=bias)
        self.conv_before_upsample = nn.Sequential(nn.Conv2d(dim, dim, 3, 1, 1), nn.LeakyReLU(inplace=True))
        self.upsample = PixelShuffleUpscale(self.upscale, dim)
        self.conv_last = nn.Conv2d(dim, out_channels, 3, padding=1, bias=bias)

    def forward(self, x):
        x = self.conv_first(x)
        feats = x
        for layer in self.layers:
            feats = layer(feats)
        x = self.conv_after_body(self.norm(feats)) + x
        return self.upsample.then_conv(self.conv_before_upsample(x), self.conv_last)
