"""The selective scan in plain tensor operations that ``torch.export`` and ONNX can represent.

Used while a model is exported (``torch.onnx.export``, ``torch.export``): the sequence is cut into chunks of
``CHUNK`` steps; a ``torch.ops.higher_order.scan`` (an ONNX ``Scan``) walks the chunks and carries the state,
and within a chunk the recurrence h_t = a_t h_{t-1} + x_t is solved by log-depth doubling (products of the
decays a_t = exp(dt_t A) in (0, 1], so nothing overflows). Only Exp, Mul, Add, Concat, Slice, ReduceSum and
friends: no custom operator for users to build. Semantics are ``selective_scan``'s (mamba-ssm's); the
sequence is padded to a whole number of chunks with steps that leave the state alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CHUNK = 64


def _doubling(a: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan of h_t = a_t h_{t-1} + x_t along dim 2 of (B, D, T, N) from h = 0: (products of a, h)."""
    offset = 1
    while offset < a.shape[2]:
        x = torch.cat([x[:, :, :offset], a[:, :, offset:] * x[:, :, :-offset] + x[:, :, offset:]], dim=2)
        a = torch.cat([a[:, :, :offset], a[:, :, offset:] * a[:, :, :-offset]], dim=2)
        offset *= 2
    return a, x


def _chunk_step(carry, xs):
    """One chunk: the state carried in, the chunk's outputs; A and D ride along in the carry (the combine
    function of a scan takes no other tensors, and one module-level function is traced once per shape)."""
    h, A, skip = carry  # (b, d, N), (d, N), (d,)
    u_c, dt_c, B_c, C_c = xs  # (b, d, T), (b, d, T), (b, G, N, T), (b, G, N, T)
    per_group = u_c.shape[1] // B_c.shape[1]
    a = torch.exp(dt_c[..., None] * A[:, None, :])  # (b, d, T, N)
    Bd = B_c.repeat_interleave(per_group, dim=1).transpose(-1, -2)  # (b, d, T, N): each channel's group
    Cd = C_c.repeat_interleave(per_group, dim=1).transpose(-1, -2)
    decay, h_local = _doubling(a, (dt_c * u_c)[..., None] * Bd)
    hs = h_local + decay * h[:, :, None, :]  # the carried state, decayed through the chunk
    y = (hs * Cd).sum(-1) + skip[:, None] * u_c
    return (hs[:, :, -1].clone(), A.clone(), skip.clone()), y


def selective_scan_export(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    """``selective_scan`` (same arguments and shapes; B, C per token, grouped or not) as exportable operations."""
    from torch._higher_order_ops.scan import scan

    dtype_in = u.dtype
    u, delta, A = u.float(), delta.float(), A.float()
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    B, C = B.float(), C.float()
    nb, nd, L = u.shape
    N = A.shape[1]
    if delta_bias is not None:
        delta = delta + delta_bias.float()[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    # padded steps: dt = 0 (decay 1, no input), so the state passes through unchanged; padded even by 0 steps,
    # so that a graph exported with a symbolic length holds the padding for every length
    pad = (-L) % CHUNK
    u, delta, B, C = (F.pad(t, (0, pad)) for t in (u, delta, B, C))
    n_chunks = (L + pad) // CHUNK

    def chunks(t):  # (..., L) -> (chunks, ..., CHUNK)
        return t.reshape(*t.shape[:-1], n_chunks, CHUNK).movedim(-2, 0)

    skip = D.float() if D is not None else u.new_zeros(nd)
    carry = (u.new_zeros(nb, nd, N), A, skip)
    (h_last, _, _), ys = scan(_chunk_step, carry, (chunks(u), chunks(delta), chunks(B), chunks(C)))
    y = ys.movedim(0, -2).reshape(nb, nd, L + pad)[..., :L]
    if z is not None:
        y = y * F.silu(z.float())
    y = y.to(dtype_in)
    return (y, h_last) if return_last_state else y


def exporting() -> bool:
    """Whether the current code runs under ``torch.export`` / ``torch.onnx.export``."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_exporting") and compiler.is_exporting():
        return True
    return bool(torch.onnx.is_in_onnx_export())


def compiling() -> bool:
    """Whether the current code is being traced by ``torch.compile`` (its fast eager paths step aside)."""
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())
