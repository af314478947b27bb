"""Resolution changes: pixel-(un)shuffle down/up-sampling and sub-pixel upscalers."""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=8)
def _subpixel_taps(r: int) -> torch.Tensor:
    """For a 3x3 conv on a ``pixel_shuffle(., r)`` map: index (r, r, r, r, 3, 3) into the conv's 9 taps (9: no
    tap) for output phase (a, b), input phase (a', b') and low-resolution offset (ky - 1, kx - 1). Output pixel
    (r i + a, r j + b) reads high-resolution rows r i + a + dy, dy in {-1, 0, 1}, which lie in low-resolution
    rows i - 1, i, i + 1 (r >= 2): row offset ky - 1 and phase a' with r (ky - 1) + a' - a = dy."""
    taps = torch.full((r, r, r, r, 3, 3), 9, dtype=torch.long)
    for a in range(r):
        for a2 in range(r):
            for ky in range(3):
                dy = r * (ky - 1) + a2 - a
                if abs(dy) > 1:
                    continue
                for b in range(r):
                    for b2 in range(r):
                        for kx in range(3):
                            dx = r * (kx - 1) + b2 - b
                            if abs(dx) <= 1:
                                taps[a, b, a2, b2, ky, kx] = (dy + 1) * 3 + dx + 1
    return taps


def subpixel_conv_weights(conv: nn.Conv2d, r: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weights of the 3x3 conv on the low-resolution grid that equals ``conv`` applied after ``pixel_shuffle(.,
    r)``: ``conv(pixel_shuffle(x, r)) == pixel_shuffle(F.conv2d(x, w, b, padding=1), r)`` for a 3x3, stride-1,
    zero-padded ``conv`` (the zero padding of the large map is the zero padding of the small one). (O r^2,
    C r^2, 3, 3) from (O, C, 3, 3); differentiable in the conv's parameters."""
    weight = conv.weight
    o, c = weight.shape[:2]
    taps = torch.cat([weight.flatten(2), weight.new_zeros(o, c, 1)], dim=2)  # (O, C, 10): tap 9 is zero
    folded = taps[:, :, _subpixel_taps(r).to(weight.device)]  # (O, C, a, b, a', b', ky, kx)
    folded = folded.permute(0, 2, 3, 1, 4, 5, 6, 7).reshape(o * r * r, c * r * r, 3, 3)
    bias = None if conv.bias is None else conv.bias.repeat_interleave(r * r)
    return folded, bias


def _plain_3x3(conv: nn.Module) -> bool:
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.padding == (1, 1) and conv.dilation == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


class PixelShuffleUpscale(nn.Sequential):
    """Sub-pixel upscaler for scale 2**n (n conv+shuffle(2) stages) or 3 (one conv+shuffle(3)).

    ``then_conv(x, conv)`` is ``conv(self(x))``; in inference it runs ``conv`` before the last shuffle, on the
    low-resolution grid (``subpixel_conv_weights``), so that the large C-channel map after the last shuffle is
    never written (EAMambaSR x4 at 128x128: a 64 MB map; the same values to float rounding).
    """

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

    def then_conv(self, x: torch.Tensor, conv: nn.Module) -> torch.Tensor:
        if torch.is_grad_enabled() or exporting() or not _plain_3x3(conv):
            return conv(self(x))
        for layer in list(self)[:-1]:  # every stage is conv + shuffle (__init__): all but the last shuffle
            x = layer(x)
        r = self[-1].upscale_factor
        weight, bias = subpixel_conv_weights(conv, r)
        return pixel_shuffle(F.conv2d(x, weight, bias, padding=1), r)
