"""EmambaIR (arXiv 2605.08073): event-guided image restoration with TSAM and GSSM.

A two-branch UNet: an event encoder turns the event voxel grid (B, ev_chn, H, W) into features at
each level, and the image encoder fuses them in with ``ImageEventFusion`` (TSAM + GSSM) before each
downsampling; a plain decoder with skip connections follows. Constructor arguments are the official
ones; module names follow the official code so its state_dicts load unchanged. The official release
calls an undefined ``get_input_chn``; as in EFNet, which it grew from, the first level's input width
is ``wf``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmir.layers.event_fusion import ImageEventFusion
from ssmir.models.registry import register


class PixelAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.pa = nn.Sequential(nn.Conv2d(dim, dim // 8, 1), nn.ReLU(inplace=True), nn.Conv2d(dim // 8, 1, 1),
                                nn.Sigmoid())

    def forward(self, x):
        return x * self.pa(x)


class ChannelAttention(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.ca = nn.Sequential(nn.Conv2d(dim, dim // 8, 1), nn.ReLU(inplace=True), nn.Conv2d(dim // 8, dim, 1),
                                nn.Sigmoid())

    def forward(self, x):
        return x * self.ca(F.adaptive_avg_pool2d(x, 1))


class AttentionResBlock(nn.Module):
    """conv-ReLU with a skip, conv, channel then pixel attention, outer skip (the official ``Block``)."""

    def __init__(self, dim):
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)
        self.calayer = ChannelAttention(dim)
        self.palayer = PixelAttention(dim)

    def forward(self, x):
        res = self.conv2(F.relu(self.conv1(x)) + x)
        return self.palayer(self.calayer(res)) + x


class PartialConv(nn.Module):
    """3x3 conv on the first quarter of the channels, the rest passed through."""

    def __init__(self, dim, n_div=4):
        super().__init__()
        self.dim_conv3 = dim // n_div
        self.partial_conv3 = nn.Conv2d(self.dim_conv3, self.dim_conv3, 3, 1, 1)

    def forward(self, x):
        a, b = torch.split(x, [self.dim_conv3, x.shape[1] - self.dim_conv3], dim=1)
        return torch.cat([self.partial_conv3(a), b], dim=1)


class EnhancedSpatialAttention(nn.Module):
    """ESA: a strided, max-pooled low-resolution branch producing a per-pixel sigmoid mask.

    Needs inputs of at least 15 x 15 pixels (3x3 stride-2 conv, then a 7x7 stride-3 max-pool).
    """

    def __init__(self, channels, n_feats):
        super().__init__()
        self.conv1 = nn.Conv2d(n_feats, channels, 1)
        self.conv_f = nn.Conv2d(channels, channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2, padding=0)
        self.conv3 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv4 = nn.Conv2d(channels, n_feats, 1)

    def forward(self, x):
        c1 = self.conv1(x)
        low = self.conv3(F.max_pool2d(self.conv2(c1), kernel_size=7, stride=3))
        low = F.interpolate(low, x.shape[-2:], mode="bilinear", align_corners=False)
        return x * torch.sigmoid(self.conv4(low + self.conv_f(c1)))


class ResidualLocalFeatureBlock(nn.Module):
    """RLFB: three convs (the middle one partial) with a skip, an attention block, 1x1 conv, ESA."""

    def __init__(self, in_channels, mid_channels, out_channels):
        super().__init__()
        self.c1_r = nn.Conv2d(in_channels, mid_channels, 3, padding=1)
        self.c2_r = PartialConv(mid_channels)
        self.c3_r = nn.Conv2d(mid_channels, in_channels, 3, padding=1)
        self.Block1 = AttentionResBlock(in_channels)
        self.c5 = nn.Conv2d(in_channels, out_channels, 1)
        self.esa = EnhancedSpatialAttention(out_channels // 4, out_channels)

    def forward(self, x):
        out = F.leaky_relu(self.c1_r(x), 0.2)
        out = F.leaky_relu(self.c2_r(out), 0.2)
        out = F.leaky_relu(self.c3_r(out), 0.2) + x
        return self.esa(self.c5(self.Block1(out)))


def _conv_down(dim):
    return nn.Conv2d(dim, dim, 4, stride=2, padding=1, bias=False)


class ImageEncoderLevel(nn.Module):
    """RLFB with a 1x1 skip, fused with the level's event features, then (optionally) downsampled."""

    def __init__(self, in_size, out_size, downsample, num_heads=None):
        super().__init__()
        self.identity = nn.Conv2d(in_size, out_size, 1)
        self.block = ResidualLocalFeatureBlock(in_size, out_size, out_size)
        self.downsample = _conv_down(out_size) if downsample else None
        if num_heads is not None:
            self.image_event_transformer = ImageEventFusion(out_size, num_heads, ffn_expansion_factor=4, bias=False)

    def forward(self, x, event=None, fuse_before_downsample=True):
        out = self.block(x) + self.identity(x)
        if event is not None and fuse_before_downsample:
            out = self.image_event_transformer(out, event)
        if self.downsample is not None:
            down = self.downsample(out)
            if event is not None and not fuse_before_downsample:
                down = self.image_event_transformer(down, event)
            return down, out
        if event is not None and not fuse_before_downsample:
            out = self.image_event_transformer(out, event)
        return out


class EventEncoderLevel(nn.Module):
    """Attention block, conv-LeakyReLU with a 1x1 skip, a 1x1 conv before merging; optional downsampling."""

    def __init__(self, in_size, out_size, downsample, relu_slope):
        super().__init__()
        self.relu_slope = relu_slope
        self.identity = nn.Conv2d(in_size, out_size, 1)
        self.Block = AttentionResBlock(in_size)
        self.conv_1 = nn.Conv2d(in_size, out_size, 3, padding=1)
        self.conv_before_merge = nn.Conv2d(out_size, out_size, 1)
        self.downsample = _conv_down(out_size) if downsample else None

    def forward(self, x, fuse_before_downsample=True):
        x = self.Block(x)
        out = self.identity(x) + F.leaky_relu(self.conv_1(x), self.relu_slope)
        if self.downsample is None:
            return self.conv_before_merge(out)
        down = self.downsample(out)
        if fuse_before_downsample:
            return down, self.conv_before_merge(out)
        return self.conv_before_merge(down), out


class DecoderLevel(nn.Module):
    """Transposed-conv upsampling, concatenation with the skip, an encoder level without fusion."""

    def __init__(self, in_size, out_size):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_size, out_size, kernel_size=2, stride=2)
        self.conv_block = ImageEncoderLevel(in_size, out_size, downsample=False)

    def forward(self, x, bridge):
        return self.conv_block(torch.cat([self.up(x), bridge], dim=1))


@register("emambair")
class EmambaIR(nn.Module):
    """EmambaIR: ``model(frame, event_voxel)``, frame (B, in_chn, H, W), voxel grid (B, ev_chn, H, W).

    H and W must be multiples of 2**(depth-1) and each level at least 15 pixels; use ``ssmir.run_model``,
    which pads to a working size, for any input.
    """

    def __init__(self, in_chn=3, ev_chn=6, wf=48, depth=3, fuse_before_downsample=True, relu_slope=0.2,
                 num_heads=(1, 2, 4)):
        super().__init__()
        if len(num_heads) < depth:
            raise ValueError(f"emambair: num_heads {list(num_heads)} needs one entry per level (depth={depth})")
        self.depth = depth
        self.fuse_before_downsample = fuse_before_downsample
        self.input_channels = (int(in_chn), int(ev_chn))  # the frame and its event voxel grid
        self.size_multiple = 2 ** (depth - 1)
        self.min_size = 15 * 2 ** (depth - 1)  # the coarsest level's ESA needs 15 x 15
        self.down_path_1 = nn.ModuleList()
        self.conv_01 = nn.Conv2d(in_chn, wf, 3, 1, 1)
        self.down_path_ev = nn.ModuleList()
        self.conv_ev1 = nn.Conv2d(ev_chn, wf, 3, 1, 1)
        prev = wf
        for i in range(depth):
            downsample = i + 1 < depth
            self.down_path_1.append(ImageEncoderLevel(prev, 2**i * wf, downsample, num_heads=num_heads[i]))
            self.down_path_ev.append(EventEncoderLevel(prev, 2**i * wf, downsample, relu_slope))
            prev = 2**i * wf
        self.up_path_1 = nn.ModuleList()
        self.skip_conv_1 = nn.ModuleList()
        for i in reversed(range(depth - 1)):
            self.up_path_1.append(DecoderLevel(prev, 2**i * wf))
            self.skip_conv_1.append(nn.Conv2d(2**i * wf, 2**i * wf, 3, 1, 1))
            prev = 2**i * wf
        # conv1, conv2 and cat12 are unused in the official forward; kept so its state_dicts load
        self.conv1 = nn.Conv2d(prev, prev, 3, padding=1)
        self.conv2 = nn.Conv2d(prev, 3, 3, padding=1)
        self.cat12 = nn.Conv2d(prev * 2, prev, 1)
        self.last = nn.Conv2d(prev, in_chn, 3, 1, 1)
        self.Block = AttentionResBlock(wf)

    def forward(self, x, event):
        if x.shape[-2:] != event.shape[-2:]:
            raise ValueError(f"emambair: frame {tuple(x.shape)} and event voxel grid {tuple(event.shape)} "
                             "must have the same height and width")
        events = []
        e = self.conv_ev1(event)
        for i, level in enumerate(self.down_path_ev):
            if i < self.depth - 1:
                e, e_full = level(e, self.fuse_before_downsample)
                events.append(e_full if self.fuse_before_downsample else e)
            else:
                e = level(e, self.fuse_before_downsample)
                events.append(e)

        x1 = self.conv_01(x)
        skips = []
        for i, level in enumerate(self.down_path_1):
            if i + 1 < self.depth:
                x1, x_full = level(x1, events[i], self.fuse_before_downsample)
                skips.append(x_full)
            else:
                x1 = level(x1, events[i], self.fuse_before_downsample)
        for i, level in enumerate(self.up_path_1):
            x1 = level(x1, self.skip_conv_1[i](skips[-i - 1]))
        return self.last(self.Block(x1))
