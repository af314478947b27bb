"""Scan orders: permutations that turn an H x W grid into a 1-D sequence, and back.

A permutation ``p`` of length H*W is applied as ``seq = x[..., p]`` to a row-major flattened
tensor and undone with ``x = seq[..., inverse(p)]``. Every order works for any H x W,
non-square and odd sizes included, and is computed once per size (``functools.lru_cache``).

Elementary orders: ``row_major``, ``column_major``, ``diagonal`` (anti-diagonals, each walked
top-right to bottom-left as EAMamba does), ``flipped_diagonal`` (the same on the left-right
mirrored grid), ``morton`` (Z-order), ``zorder`` (EAMamba's variant of it), ``zigzag``
(JPEG-style) and ``hilbert``; ``reversed_order`` walks any of them backwards.
``all_around_orders`` builds EAMamba's multi-head set.
"""

from __future__ import annotations

import functools

import numpy as np
import torch

SCAN_TYPES = (None, "diagonal", "zorder", "zigzag", "hilbert")
SCAN_COUNTS = (1, 2, 4, 8)


def _grid(h: int, w: int) -> np.ndarray:
    if h < 1 or w < 1:
        raise ValueError(f"scan order: grid size must be positive, got {h}x{w}")
    return np.arange(h * w).reshape(h, w)


def _tensor(idx: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(idx), dtype=torch.long)


@functools.lru_cache(maxsize=256)
def row_major(h: int, w: int) -> torch.Tensor:
    return _tensor(_grid(h, w).reshape(-1))


@functools.lru_cache(maxsize=256)
def column_major(h: int, w: int) -> torch.Tensor:
    return _tensor(_grid(h, w).T.reshape(-1))


@functools.lru_cache(maxsize=256)
def diagonal(h: int, w: int) -> torch.Tensor:
    """Anti-diagonals r + c = s for s = 0 .. h+w-2, each with the row increasing."""
    g = _grid(h, w)
    parts = []
    for s in range(h + w - 1):
        rows = np.arange(max(0, s - w + 1), min(s + 1, h))
        parts.append(g[rows, s - rows])
    return _tensor(np.concatenate(parts))


@functools.lru_cache(maxsize=256)
def flipped_diagonal(h: int, w: int) -> torch.Tensor:
    """``diagonal`` of the left-right mirrored grid (main-direction diagonals)."""
    mirrored = _grid(h, w)[:, ::-1].reshape(-1)
    return _tensor(mirrored[diagonal(h, w).numpy()])


@functools.lru_cache(maxsize=256)
def zigzag(h: int, w: int) -> torch.Tensor:
    """JPEG-style zigzag over anti-diagonals r + c = s, alternating direction.

    Diagonal s is walked with the row decreasing when (s - h + 1) is odd, increasing when even.
    """
    g = _grid(h, w)
    parts = []
    for s in range(h + w - 1):
        rows = np.arange(min(s, h - 1), max(0, s - w + 1) - 1, -1)  # bottom-left to top-right
        if (s - h + 1) % 2 == 0:
            rows = rows[::-1]
        parts.append(g[rows, s - rows])
    return _tensor(np.concatenate(parts))


def _spread_bits(v: np.ndarray) -> np.ndarray:
    v = v.astype(np.int64) & 0xFFFF
    v = (v | (v << 8)) & 0x00FF00FF
    v = (v | (v << 4)) & 0x0F0F0F0F
    v = (v | (v << 2)) & 0x33333333
    v = (v | (v << 1)) & 0x55555555
    return v


@functools.lru_cache(maxsize=256)
def morton(h: int, w: int) -> torch.Tensor:
    """Textbook Morton (Z) order: column bits in the even positions, row bits in the odd ones."""
    rows, cols = np.divmod(_grid(h, w).reshape(-1), w)
    codes = _spread_bits(cols) | (_spread_bits(rows) << 1)
    return _tensor(np.argsort(codes, kind="stable"))


def _eamamba_spread(n: torch.Tensor) -> torch.Tensor:
    # EAMamba's bit spreading applies the masks from the widest to the narrowest *shift* but pairs
    # them with the masks in the opposite order, so codes collide; kept for checkpoint fidelity.
    for shift, mask in ((8, 0x0000FFFF), (4, 0x00FF00FF), (2, 0x0F0F0F0F), (1, 0x33333333)):
        n = (n | (n << shift)) & mask
    return n


@functools.lru_cache(maxsize=256)
def zorder(h: int, w: int) -> torch.Tensor:
    """EAMamba's ``zorder`` scan, exactly as the official code orders it (see docs/differences.md).

    Its codes are not unique, so ties follow ``torch.argsort``'s default (unstable) CPU sort,
    as in the official implementation. Use ``morton`` for a true Z-order curve.
    """
    _grid(h, w)
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    codes = _eamamba_spread(cols.flatten().int()) | (_eamamba_spread(rows.flatten().int()) << 1)
    return torch.argsort(codes).long()


def _hilbert_index(a: np.ndarray, b: np.ndarray, bits: int) -> np.ndarray:
    """Distance along the Hilbert curve of side 2**bits for points (a, b), ``a`` the first coordinate.

    Walks the bits from the most significant, accumulating the quadrant's offset and rotating the
    remaining coordinates into the quadrant's frame.
    """
    a = a.astype(np.int64).copy()
    b = b.astype(np.int64).copy()
    d = np.zeros_like(a)
    s = 1 << (bits - 1) if bits > 0 else 0
    while s > 0:
        ra = (a & s) > 0
        rb = (b & s) > 0
        d += s * s * ((3 * ra) ^ rb)
        # rotate: when rb == 0, swap (and mirror when ra == 1)
        swap = ~rb
        mirror = swap & ra
        a = np.where(mirror, s - 1 - a, a)
        b = np.where(mirror, s - 1 - b, b)
        a, b = np.where(swap, b, a), np.where(swap, a, b)
        s >>= 1
    return d


@functools.lru_cache(maxsize=256)
def hilbert(h: int, w: int) -> torch.Tensor:
    """Hilbert curve over the smallest 2**p square that holds the grid, cells outside skipped."""
    side = 1
    while side < max(h, w):
        side *= 2
    bits = side.bit_length() - 1
    rows, cols = np.divmod(_grid(h, w).reshape(-1), w)
    d = _hilbert_index(rows, cols, bits)
    return _tensor(np.argsort(d, kind="stable"))


def reversed_order(order: torch.Tensor) -> torch.Tensor:
    return order.flip(0)


def inverse(order: torch.Tensor) -> torch.Tensor:
    """The permutation that undoes ``order``: ``x[..., order][..., inverse(order)] == x``."""
    inv = torch.empty_like(order)
    inv[order] = torch.arange(order.numel(), device=order.device)
    return inv


_BASE_ORDERS = {"diagonal": diagonal, "zorder": zorder, "zigzag": zigzag, "hilbert": hilbert}


def _flip_w(h: int, w: int) -> torch.Tensor:
    return _tensor(_grid(h, w)[:, ::-1].reshape(-1))


@functools.lru_cache(maxsize=256)
def all_around_orders(scan_type: str | None, scan_count: int, h: int, w: int) -> torch.Tensor:
    """EAMamba's per-head scan orders, (scan_count, H*W).

    Head k reads its channels in order ``orders[k]``. Heads come in groups of four: plain,
    reversed, then the same two on a transformed grid (transposed for plain row-major scans and
    for heads 4-7; left-right mirrored for the other scan types). The scan type's curve is then
    applied to every head, except heads 4-7 of an eight-head set, which stay row/column-major
    so that the set covers all eight directions.
    """
    if scan_type not in SCAN_TYPES:
        raise ValueError(f"scan_type {scan_type!r} is not one of {SCAN_TYPES}")
    if scan_count not in SCAN_COUNTS:
        raise ValueError(f"scan_count {scan_count!r} is not one of {SCAN_COUNTS}")
    base = row_major(h, w)
    curve = _BASE_ORDERS[scan_type](h, w) if scan_type is not None else None
    orders = []
    for k in range(scan_count):
        order = base
        if k % 4 in (2, 3):
            order = column_major(h, w) if (scan_type is None or k >= 4) else _flip_w(h, w)
        if k % 2 == 1:
            order = reversed_order(order)
        if curve is not None and (scan_count != 8 or k < 4):
            order = order[curve]
        orders.append(order)
    return torch.stack(orders)


@functools.lru_cache(maxsize=256)
def four_way_orders(h: int, w: int) -> torch.Tensor:
    """VMamba's SS2D heads, (4, H*W): row-major, column-major, then both reversed."""
    return four_way_orders_traced(h, w)


def four_way_orders_traced(h, w, device=None) -> torch.Tensor:
    """``four_way_orders`` from tensor operations, for graphs exported with symbolic height and width."""
    rows = torch.arange(h * w, device=device)
    cols = rows.view(h, w).t().reshape(-1)
    return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])


@functools.lru_cache(maxsize=256)
def four_way_inverses(h: int, w: int) -> torch.Tensor:
    """Row-wise inverses of ``four_way_orders``."""
    return torch.stack([inverse(o) for o in four_way_orders(h, w)])


@functools.lru_cache(maxsize=256)
def all_around_inverses(scan_type: str | None, scan_count: int, h: int, w: int) -> torch.Tensor:
    """Row-wise inverses of ``all_around_orders``."""
    return torch.stack([inverse(o) for o in all_around_orders(scan_type, scan_count, h, w)])
