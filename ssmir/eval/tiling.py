"""Tiled inference with smooth blending, and self-ensembles; shared by restore, test and training validation.

``tiled_forward`` runs a function over overlapping tiles and blends them with weights that ramp down
linearly across the overlap, so there are no seams; its working memory is bounded by the tile size
(plus the output image). The outer quarter of each overlap gets weight 0, so a model whose receptive
field reaches no further than overlap/4 pixels gives exactly its whole-image result.
``self_ensemble`` averages the outputs over flips (the official x4) or over all eight flips and
rotations (x8), each undone before averaging.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

Fn = Callable[..., torch.Tensor]


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def _ramp(n: int, overlap: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """1-D blending weights where a neighbouring tile overlaps: 0 for the outer quarter of the overlap (the
    samples a tile's own border disturbs most), then a linear ramp to 1 at its inner quarter."""
    w = torch.ones(n)
    if overlap > 0:
        margin = overlap // 4
        r = ((torch.arange(min(overlap, n)) + 0.5 - margin) / max(overlap - 2 * margin, 1)).clamp(0, 1)
        if not at_start:
            w[: len(r)] = torch.minimum(w[: len(r)], r)
        if not at_end:
            w[n - len(r):] = torch.minimum(w[n - len(r):], r.flip(0))
    return w


def tile_boxes(h: int, w: int, tile: int, overlap: int) -> Iterator[tuple[int, int, int, int]]:
    """(top, left, height, width) of the tiles that cover an h x w image."""
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    stride = tile - overlap
    for top in _starts(h, tile, stride):
        for left in _starts(w, tile, stride):
            yield top, left, min(tile, h), min(tile, w)


@torch.no_grad()
def tiled_forward(fn: Fn, x: torch.Tensor, *extra: torch.Tensor, tile: int | None = 512, overlap: int = 32,
                  scale: int = 1, tile_batch: int = 1, progress: Callable | None = None) -> torch.Tensor:
    """``fn(x, *extra)`` computed tile by tile and blended; x (B, C, H, W), output (B, C', H*scale, W*scale).

    ``extra`` inputs (e.g. event voxel grids) are cut into the same tiles. ``progress`` wraps the tile
    iterator (e.g. ``functools.partial(tqdm, desc="tiles")``). The output is accumulated in float32 on
    the device of ``x``.
    """
    h, w = x.shape[-2:]
    if tile is None or (h <= tile and w <= tile):
        return fn(x, *extra)
    boxes = list(tile_boxes(h, w, tile, overlap))
    out = weight = None
    it = progress(range(0, len(boxes), tile_batch)) if progress else range(0, len(boxes), tile_batch)
    for i in it:
        group = boxes[i:i + tile_batch]
        crops = [torch.cat([t[..., a:a + th, b:b + tw] for a, b, th, tw in group]) for t in (x, *extra)]
        pred = fn(*crops).float()
        if out is None:
            out = x.new_zeros(x.shape[0], pred.shape[1], h * scale, w * scale, dtype=torch.float32)
            weight = x.new_zeros(1, 1, h * scale, w * scale, dtype=torch.float32)
        for j, (a, b, th, tw) in enumerate(group):
            wy = _ramp(th * scale, overlap * scale, a == 0, a + th == h)
            wx = _ramp(tw * scale, overlap * scale, b == 0, b + tw == w)
            wt = (wy[:, None] * wx[None, :]).to(out.device)
            piece = pred[j * x.shape[0]:(j + 1) * x.shape[0]]
            out[..., a * scale:(a + th) * scale, b * scale:(b + tw) * scale] += piece * wt
            weight[..., a * scale:(a + th) * scale, b * scale:(b + tw) * scale] += wt
    return (out / weight).to(x.dtype)


@torch.no_grad()
def quadrant_forward(fn: Fn, x: torch.Tensor, crop_size: int = 2048, shave: int = 16, scale: int = 1) -> torch.Tensor:
    """EAMamba's ``forward_patch`` (its ``test.py`` with ``eval_crop_size``), reproduced exactly.

    The image is cut into four overlapping quadrants (their cut points kept on multiples of 8, ``shave``
    pixels of overlap); each quadrant is run whole if the image has fewer than ``crop_size``**2 pixels,
    else cut again the same way (the recursion passes scale 1, as the official code does); the output
    takes each quadrant's own corner. Unlike ``tiled_forward`` there is no blending: this is the official
    protocol of the RealSR and DPDD test configs, kept for reproducing their numbers.
    """
    b, c, h, w = x.shape
    top = slice(0, int(h // 2 + shave - (h // 2 % 8)))
    bottom = slice(int(h - h // 2 - shave + ((h - h // 2) % 8)), h)
    left = slice(0, int(w // 2 + shave - (w // 2 % 8)))
    right = slice(int(w - w // 2 - shave + ((w - w // 2) % 8)), w)
    chops = [x[..., top, left], x[..., top, right], x[..., bottom, left], x[..., bottom, right]]
    if h * w < crop_size * crop_size:
        outs = [fn(chop) for chop in chops]
    else:
        outs = [quadrant_forward(fn, chop, crop_size, shave) for chop in chops]
    h, w = h * scale, w * scale
    y = x.new_empty(b, outs[0].shape[1], h, w)
    top, bottom, bottom_r = slice(0, h // 2), slice(h - h // 2, h), slice(h // 2 - h, None)
    left, right, right_r = slice(0, w // 2), slice(w - w // 2, w), slice(w // 2 - w, None)
    y[..., top, left] = outs[0][..., top, left]
    y[..., top, right] = outs[1][..., top, right_r]
    y[..., bottom, left] = outs[2][..., bottom_r, left]
    y[..., bottom, right] = outs[3][..., bottom_r, right_r]
    return y


# the eight symmetries of the square: (number of 90-degree rotations, flip W first)
_DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]
_FLIPS = [(), (-1,), (-2,), (-2, -1)]  # the official x4: none, W, H, both


def self_ensemble(fn: Fn, x: torch.Tensor, *extra: torch.Tensor, mode: int = 4) -> torch.Tensor:
    """Mean of ``fn`` over transformed inputs, each output transformed back. ``mode``: 1, 4 (flips) or 8."""
    if mode == 1:
        return fn(x, *extra)
    if mode == 4:
        total = 0
        for dims in _FLIPS:
            def t(v, dims=dims):
                return v.flip(dims) if dims else v

            total = total + t(fn(t(x), *map(t, extra)))
        return total / 4
    if mode == 8:
        total = 0
        for k, flip in _DIHEDRAL:
            def fwd(v, k=k, flip=flip):
                return torch.rot90(v.flip(-1) if flip else v, k, dims=(-2, -1))

            y = torch.rot90(fn(fwd(x), *map(fwd, extra)), -k, dims=(-2, -1))
            total = total + (y.flip(-1) if flip else y)
        return total / 8
    raise ValueError(f"self-ensemble mode must be 1, 4 or 8, got {mode}")
