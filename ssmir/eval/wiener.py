"""Collaborative Wiener refinement of a denoiser's output (the second stage of BM3D, with a learned pilot).

BM3D (Dabov et al., TIP 2007) denoises in two stages; its second stage needs only a *pilot*, an estimate of
the clean image, and any good estimate will do. ``collaborative_wiener`` runs that stage with a network's
output as the pilot:

1. block matching on the pilot's luma: for every reference patch (``patch`` x ``patch``, every ``step``
   pixels, plus the last row and column so that every pixel is covered) the ``group`` most similar patches
   within ``search`` pixels;
2. each group of the noisy image and of the pilot is taken to a 3-D orthonormal transform (2-D DCT of each
   patch, Walsh-Hadamard across the group);
3. the noisy spectrum is shrunk by the empirical Wiener gain ``P^2 / (P^2 + sigma^2)`` of the pilot's
   spectrum ``P``, and transformed back;
4. the patches are put back with the weight ``1 / (sigma^2 * sum(gain^2))`` of their group times a Kaiser
   window, and each pixel is the weighted mean of the estimates that cover it.

Colour images are filtered in an orthonormal opponent colour space (luma and two colour differences), where
white Gaussian noise of standard deviation ``sigma`` stays white with the same ``sigma``; the groups matched
on the luma are shared by the three channels, as in CBM3D.

The noise level can be given, or estimated from the image (``estimate_sigma``: the median absolute deviation
of the finest diagonal Haar wavelet band, Donoho's robust estimator), which keeps a blind denoiser blind.
Everything is batched PyTorch, so it runs on any device; memory is bounded by ``chunk`` reference patches
at a time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Orthonormal opponent colour transform: luma (R+G+B)/sqrt(3), then (R-B)/sqrt(2) and (R-2G+B)/sqrt(6).
_OPP = torch.tensor([[1 / math.sqrt(3)] * 3,
                     [1 / math.sqrt(2), 0.0, -1 / math.sqrt(2)],
                     [1 / math.sqrt(6), -2 / math.sqrt(6), 1 / math.sqrt(6)]])


def _dct_matrix(n: int) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def _hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def estimate_sigma(image: torch.Tensor) -> float:
    """Noise standard deviation of a (C, H, W) image with additive white Gaussian noise, from the median
    absolute deviation of its finest diagonal Haar band (``MAD / 0.6745``), averaged over the channels."""
    if image.dim() != 3 or image.shape[1] < 2 or image.shape[2] < 2:
        raise ValueError(f"estimate_sigma: expected a (C, H, W) image of at least 2x2 pixels, got {tuple(image.shape)}")
    x = image.double()
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    x = x[:, :h, :w]
    hh = (x[:, 0::2, 0::2] - x[:, 0::2, 1::2] - x[:, 1::2, 0::2] + x[:, 1::2, 1::2]) / 2
    mad = hh.flatten(1).abs().median(dim=1).values
    return float((mad / 0.6744897501960817).mean())


def _grid(length: int, patch: int, step: int) -> list[int]:
    """Reference corners along one axis: every ``step`` pixels, plus the last one so that every pixel is covered."""
    starts = list(range(0, length - patch + 1, step))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


def _box_sums(x: torch.Tensor, patch: int, step: int, dim: int) -> torch.Tensor:
    """Sums of ``patch`` consecutive entries of ``x`` along ``dim``, starting at the corners of ``_grid``: ``patch``
    strided slices added up (3.6x faster on a CPU than a strided average pool)."""
    length = x.shape[dim]
    span = (length - patch) // step * step + 1           # the stride's corners are 0, step, ..., span - 1
    every_step = (slice(None),) * dim + (slice(None, None, step),)
    out = x.narrow(dim, 0, span)[every_step].clone()
    for k in range(1, patch):
        out += x.narrow(dim, k, span)[every_step]
    if (length - patch) % step:
        out = torch.cat([out, x.narrow(dim, length - patch, patch).sum(dim, keepdim=True)], dim)
    return out


def _match(luma: torch.Tensor, patch: int, step: int, search: int, group: int) -> torch.Tensor:
    """Top-left flat indices (n, group) of the ``group`` patches of ``luma`` (H, W) closest (squared distance)
    to each of the n reference patches (top-left corners: ``_grid`` of the rows times ``_grid`` of the
    columns, row-major), searched within +-``search`` pixels; the reference itself first."""
    h, w = luma.shape
    dev = luma.device
    rows = torch.tensor(_grid(h, patch, step), device=dev)
    cols = torch.tensor(_grid(w, patch, step), device=dev)
    n = rows.numel() * cols.numel()
    best_d = torch.full((group, n), float("inf"), dtype=luma.dtype, device=dev)
    best_k = torch.zeros((group, n), dtype=torch.long, device=dev)
    offsets = [(dy, dx) for dy in range(-search, search + 1) for dx in range(-search, search + 1)]
    # the reference first, given a distance below any other, so it always heads its group
    offsets.remove((0, 0))
    offsets.insert(0, (0, 0))
    pad = F.pad(luma[None, None], (search, search, search, search), mode="replicate")[0, 0]
    ref_i = rows[:, None].expand(-1, cols.numel()).reshape(-1)
    ref_j = cols[None].expand(rows.numel(), -1).reshape(-1)
    per_chunk = max(1, (1 << 23) // (h * w))
    for start in range(0, len(offsets), per_chunk):
        chunk = offsets[start:start + per_chunk]
        sq = torch.stack([pad[search + dy: search + dy + h, search + dx: search + dx + w] for dy, dx in chunk])
        sq.sub_(luma).square_()
        # patch distances at the reference corners only: strided box sums over the rows, then over the columns
        d = _box_sums(_box_sums(sq, patch, step, 1), patch, step, 2).reshape(len(chunk), n)
        dy = torch.tensor([o[0] for o in chunk], device=dev)[:, None]
        dx = torch.tensor([o[1] for o in chunk], device=dev)[:, None]
        ci, cj = ref_i[None] + dy, ref_j[None] + dx
        valid = (ci >= 0) & (ci <= h - patch) & (cj >= 0) & (cj <= w - patch)
        d = d.masked_fill(~valid, float("inf"))
        if start == 0:
            d[0] = -1.0
        k = ci.clamp(0, h - patch) * w + cj.clamp(0, w - patch)
        best_d, pick = torch.cat([best_d, d]).topk(group, dim=0, largest=False, sorted=True)
        best_k = torch.cat([best_k, k]).gather(0, pick)
    return best_k.t().contiguous()


def collaborative_wiener(noisy: torch.Tensor, pilot: torch.Tensor, sigma: float | None = None, *, patch: int = 8,
                         step: int = 3, search: int = 16, group: int = 16, chunk: int = 4096) -> torch.Tensor:
    """Refine ``pilot``, an estimate of the clean image, by collaborative Wiener filtering of ``noisy``.

    ``noisy`` and ``pilot``: (C, H, W) with C = 1 or 3, values in [0, 1]; ``sigma``: the noise standard
    deviation on that scale (``None``: ``estimate_sigma(noisy)``). Returns the refined (C, H, W) image
    (float32, on the input's device). ``group`` must be a power of two.
    """
    if noisy.dim() != 3 or noisy.shape[0] not in (1, 3):
        raise ValueError("collaborative_wiener: expected a (C, H, W) image with 1 or 3 channels, got "
                         f"{tuple(noisy.shape)}")
    if pilot.shape != noisy.shape:
        raise ValueError(f"collaborative_wiener: the pilot's shape {tuple(pilot.shape)} differs from the image's "
                         f"{tuple(noisy.shape)}")
    if group < 1 or group & (group - 1):
        raise ValueError(f"collaborative_wiener: group must be a power of two, got {group}")
    c, h, w = noisy.shape
    if h < patch or w < patch:
        raise ValueError(f"collaborative_wiener: the image ({h}x{w}) is smaller than one {patch}x{patch} patch")
    if sigma is None:
        sigma = estimate_sigma(noisy)
    if sigma < 0:
        raise ValueError(f"collaborative_wiener: sigma must be >= 0, got {sigma}")
    dev = noisy.device
    out_dtype = noisy.dtype if noisy.is_floating_point() else torch.float32
    if sigma == 0:
        return pilot.to(out_dtype).clone()
    z, y = noisy.float(), pilot.float()
    if c == 3:
        opp = _OPP.to(dev)
        z, y = torch.einsum("ij,jhw->ihw", opp, z), torch.einsum("ij,jhw->ihw", opp, y)
    var = float(sigma) ** 2

    tops = _match(y[0], patch, step, search, group)                        # (n, group)

    d = _dct_matrix(patch)
    dct2 = torch.kron(d, d).float().to(dev)              # (p*p, p*p): the 2-D DCT of a row-major flattened patch
    t1 = _hadamard(group).float().to(dev)                                   # (group, group)

    # Groups are gathered group-position-major, (c, group, m, p*p), so that both transforms are single large
    # matrix products: the 2-D DCT on the last axis, the Hadamard transform on the group axis.
    def forward(g: torch.Tensor) -> torch.Tensor:
        g = g @ dct2.t()
        return (t1 @ g.flatten(2)).view(g.shape)

    def inverse(s: torch.Tensor) -> torch.Tensor:
        s = (t1.t() @ s.flatten(2)).view(s.shape)
        return s @ dct2
    window = torch.kaiser_window(patch, periodic=False, beta=2.0, dtype=torch.float64)
    window = torch.outer(window, window).flatten().float().to(dev)          # (p*p,)
    inside = (torch.arange(patch, device=dev)[:, None] * w + torch.arange(patch, device=dev)[None]).flatten()

    zf, yf = z.reshape(c, -1), y.reshape(c, -1)
    num = torch.zeros(c, h * w, device=dev)
    corner = torch.zeros(c, h * w, device=dev)                              # weights at patch corners
    for start in range(0, tops.shape[0], chunk):
        tl = tops[start:start + chunk]                                      # (m, group) top-left corners
        idx = tl.t()[:, :, None] + inside                                   # (group, m, p*p) pixel indices
        flat = idx.reshape(-1)
        zg = zf[:, flat].view(c, *idx.shape)
        yg = yf[:, flat].view(c, *idx.shape)
        p2 = forward(yg).square_()
        gain = p2.div_(p2 + var)
        est = inverse(forward(zg).mul_(gain))                                # back to pixels (orthonormal)
        weight = 1.0 / (var * gain.square_().sum(dim=(1, 3)).clamp_min(1e-12))  # (c, m)
        num.index_add_(1, flat, est.mul_(weight[:, None, :, None] * window).view(c, -1))
        corner.index_add_(1, tl.t().reshape(-1), weight[:, None, :].expand(-1, group, -1).reshape(c, -1))
    # the denominator: each corner's weight spread over its patch by the window (a transposed convolution)
    den = F.conv_transpose2d(corner.reshape(c, 1, h, w), window.reshape(1, 1, patch, patch))[:, 0, :h, :w]
    out = num.reshape(c, h, w) / den
    if c == 3:
        out = torch.einsum("ji,jhw->ihw", _OPP.to(dev), out)
    return out.to(out_dtype)
