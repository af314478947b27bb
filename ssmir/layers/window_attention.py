"""Swin-style (shifted) window self-attention with a relative position bias, as MambaIRv2 uses it.

The attention runs through ``torch.nn.functional.scaled_dot_product_attention``, whose CPU and GPU kernels
fuse the bias, the softmax and both products (6-7x the separate ``bmm``/``add``/``softmax`` passes on a 2-core
CPU), except in float32 inference on CPU, where ``attention`` calls a numba kernel that is faster still for
MambaIRv2's thin heads (``ssmir.ops._numba_scan.window_attention``). The shifted-window mask is zero inside
the image: only the windows of the last window row or column see it, so ``WindowAttention.attend_map`` groups
the windows by mask pattern (``window_order``) and attends each group with the bias plus at most one (n, n)
mask (a broadcast mask, the fast path), which gives the same result as adding the mask to every window
(``WindowAttention.forward``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmir.ops.export_scan import compiling, exporting
from ssmir.ops.linear import TokenLinear
from ssmir.ops.selective_scan import _numba_kernels, _set_numba_threads, numba_available


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C), windows in row-major order."""
    return rearrange(x, "b (nh wh) (nw ww) c -> (b nh nw) (wh ww) c", wh=ws, ww=ws)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of ``window_partition``: -> (B, H, W, C)."""
    return rearrange(windows, "(b nh nw) (wh ww) c -> b (nh wh) (nw ww) c", nh=h // ws, nw=w // ws, wh=ws, ww=ws)


def relative_position_index(ws: int) -> torch.Tensor:
    """(ws*ws, ws*ws) index into the (2ws-1)^2 bias table for every pair of positions in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)  # (2, ws*ws)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)  # (ws*ws, ws*ws, 2), >= 0
    return rel[..., 0] * (2 * ws - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, ws: int) -> torch.Tensor:
    """(nW, ws*ws, ws*ws) additive mask (0 / -100) keeping attention inside regions after a ws/2 cyclic shift."""
    return _shifted_window_mask(h, w, ws)[0]


def shifted_window_mask_traced(h, w, ws: int, device=None) -> torch.Tensor:
    """``shifted_window_mask`` from tensor operations, for graphs exported with symbolic height and width."""
    shift = ws // 2

    def regions(n):  # 0 before the last window, 1 in its first half, 2 in its second half
        i = torch.arange(n, device=device)
        return (i >= n - ws).long() + (i >= n - shift).long()

    region = (regions(h)[:, None] * 3 + regions(w)[None, :])[None, :, :, None].float()  # (1, H, W, 1)
    win = window_partition(region, ws).squeeze(-1)  # (nW, ws*ws)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    return torch.where(diff != 0, -100.0, 0.0)


def masked_windows(h: int, w: int, ws: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the windows whose shifted-window mask is all zero, and of the others (the last window row
    and column)."""
    return _shifted_window_mask(h, w, ws)[1:]


@functools.lru_cache(maxsize=32)
def _shifted_window_mask(h: int, w: int, ws: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(nW, ws*ws, ws*ws) additive mask (0 / -100) keeping attention inside regions after a ws/2 cyclic shift."""
    shift = ws // 2
    region = torch.zeros(1, h, w, 1)
    label = 0
    for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
        for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
            region[:, hs, wsl, :] = label
            label += 1
    win = window_partition(region, ws).squeeze(-1)  # (nW, ws*ws)
    diff = win.unsqueeze(1) - win.unsqueeze(2)
    mask = diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)
    nonzero = mask.flatten(1).ne(0).any(1)
    return mask, torch.nonzero(~nonzero).flatten(), torch.nonzero(nonzero).flatten()


@functools.lru_cache(maxsize=32)
def window_order(b: int, h: int, w: int, ws: int, shift: int) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    """How ``attend_map`` takes the tokens of ``b`` (h, w) maps into windows in one gather.

    The windows of the maps cyclically shifted by ``-shift`` in both directions (``torch.roll``) are grouped
    by their shifted-window mask: the windows it leaves alone first, then one group per distinct masked
    pattern (the last window row, the last column, the corner; all of them masked when a single window covers
    the map), each group image-major, each window's tokens
    in row-major order. Returns the gather index (b*h*w,) into the flattened (b*h*w) tokens, its inverse (the
    scatter back to token order), the number of windows of each group and each group's additive mask (n, n),
    None for the unmasked group.
    """
    nh, nw = h // ws, w // ws
    if shift:
        mask = _shifted_window_mask(h, w, ws)[0]
        patterns, group = torch.unique(mask.flatten(1), dim=0, return_inverse=True)
        zero = patterns.ne(0).any(1).logical_not()  # the all-zero pattern (none when one window covers the map)
        ids = sorted(range(len(patterns)), key=lambda g: not zero[g])
        sels = [torch.nonzero(group == g).flatten() for g in ids]
        masks = tuple(None if zero[g] else patterns[g].view(ws * ws, ws * ws) for g in ids)
    else:
        sels, masks = [torch.arange(nh * nw)], (None,)
    image = torch.arange(b)
    img = torch.cat([image[:, None].expand(b, len(sel)).flatten() for sel in sels])
    win = torch.cat([sel.repeat(b) for sel in sels])
    iy, ix = (t.flatten() for t in torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij"))
    y = ((win // nw)[:, None] * ws + iy + shift) % h
    x = ((win % nw)[:, None] * ws + ix + shift) % w
    index = (img[:, None] * (h * w) + y * w + x).flatten()
    return index, torch.argsort(index), tuple(b * len(sel) for sel in sels), masks


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)`` for windows (W, heads, n, d) and a
    bias (1, heads, n, n); in float32 inference on CPU with n and d multiples of 4, the numba kernel
    ``ssmir.ops._numba_scan.window_attention`` (MambaIRv2-Light's 12-channel heads: 9.6 ms against 17-21 ms for
    SDPA per 64 windows of 256 tokens, docs/benchmarks.md). Its result is a (W, heads, n, d) view of a (W, n, heads,
    d) tensor, as SDPA's CPU kernel returns."""
    w, heads, n, d = q.shape
    if (torch.is_grad_enabled() or q.device.type != "cpu" or q.dtype != torch.float32 or n % 4 or d % 4
            or exporting() or compiling() or not numba_available() or bias.shape != (1, heads, n, n)
            or any(t.dtype != torch.float32 for t in (k, v, bias))):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)
    _set_numba_threads()
    out = q.new_empty(w, n, heads, d).transpose(1, 2)
    _numba_kernels().window_attention(q.numpy(), k.numpy(), v.numpy(), bias.contiguous().numpy(),
                                      np.float32(scale), out.numpy())
    return out


class WindowAttention(nn.Module):
    """Multi-head attention inside windows from precomputed q, k, v: (nW*B, n, 3C) -> (nW*B, n, C)."""

    def __init__(self, dim: int, window_size: int, num_heads: int):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.proj = TokenLinear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, qkv: torch.Tensor, rpi: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``mask`` (nW, n, n): the shifted-window mask, added to every window (the models attend whole maps
        with ``attend_map``, which adds it to the masked windows only; this is its written-out definition and
        the exported graph's path)."""
        bw, n, _ = qkv.shape
        if self.dim % self.num_heads:
            raise ValueError(f"window attention: {self.dim} channels do not split into {self.num_heads} heads")
        q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=self.num_heads)
        bias = self._position_bias(rpi, q.dtype)
        if exporting():  # the written-out attention: MatMul / Add / Softmax in the exported graph
            logits = (q * self.scale) @ k.transpose(-2, -1) + bias
            if mask is not None:
                nw = mask.shape[0]
                logits = (logits.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]).flatten(0, 1)
            out = logits.softmax(dim=-1) @ v
        else:
            if mask is not None:  # (B*nW, heads, n, n), the windows of each image in order
                bias = (bias + mask.to(q.dtype).unsqueeze(1)).repeat(bw // mask.shape[0], 1, 1, 1)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(rearrange(out, "b h n d -> b n (h d)"))

    def attend_map(self, x: torch.Tensor, size: tuple[int, int], rpi: torch.Tensor, shift: int,
                   to_qkv=None) -> torch.Tensor:
        """(Shifted) window attention of whole maps in token layout: qkv (B, H*W, 3C) -> (B, H*W, C), the same as
        rolling by ``-shift``, ``window_partition``, ``forward`` with the shifted-window mask, ``window_reverse`` and
        rolling back, with one gather in and one gather out (``window_order``: the windows grouped by their mask
        pattern, so that each group is one slice attended with the bias plus one (n, n) mask, or none).
        With ``to_qkv`` (a per-token projection C -> 3C), x is the tokens (B, H*W, C) and the projection is
        taken after the gather, which then moves a third of the data. The relative-position bias is kept between
        calls while no gradient is taken."""
        b, length, cx = x.shape
        h, w = size
        n, heads = self.window_size**2, self.num_heads
        if self.dim % heads:
            raise ValueError(f"window attention: {self.dim} channels do not split into {heads} heads")
        index, inverse, counts, masks = window_order(b, h, w, self.window_size, shift)
        index, inverse = index.to(x.device), inverse.to(x.device)
        win = x.reshape(b * length, cx).index_select(0, index)
        if to_qkv is not None:
            win = to_qkv(win)
        win = win.view(-1, n, 3 * self.dim)
        q, k, v = rearrange(win, "b n (three h d) -> three b h n d", three=3, h=heads)
        bias = self._bias(rpi, q.dtype)  # (1, heads, n, n)
        outs, start = [], 0
        for count, mask in zip(counts, masks, strict=True):  # one attention call per mask pattern
            if count:
                part = slice(start, start + count)
                full = bias if mask is None else bias + mask.to(q.device, q.dtype)
                outs.append(attention(q[part], k[part], v[part], full, self.scale))
            start += count
        # (windows, n, heads, d): a view of the attention kernel's output, whose memory is in this order
        out = torch.cat([o.transpose(1, 2) for o in outs]) if len(outs) > 1 else outs[0].transpose(1, 2)
        out = out.reshape(-1, self.dim).index_select(0, inverse).view(b, length, self.dim)
        return self.proj(out)

    def _bias(self, rpi: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The relative-position bias (1, heads, n, n) from the table; cached while no gradient is taken (keyed by
        the table's version, so that loading or training it invalidates the cache)."""
        table = self.relative_position_bias_table
        grad = torch.is_grad_enabled() and table.requires_grad
        key = (table._version, table.data_ptr(), rpi.data_ptr(), rpi._version, dtype)
        cached = getattr(self, "_bias_cache", None)
        if not grad and cached is not None and cached[0] == key:
            return cached[1]
        bias = self._position_bias(rpi, dtype).contiguous()
        if not grad:
            self._bias_cache = (key, bias)
        return bias

    def _position_bias(self, rpi: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The relative-position bias (1, heads, n, n): the table's rows for every pair of positions."""
        n = rpi.shape[0]
        return self.relative_position_bias_table[rpi.reshape(-1)].view(n, n, -1).permute(2, 0, 1).unsqueeze(0).to(dtype)
