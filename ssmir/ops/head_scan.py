"""Multi-head selective scan over an image's tokens, each head along its own scan order, in token layout.

Vision Mamba blocks (EAMamba's MHSSM, VMamba's four-way SS2D, MambaIRv2's ASSM) hold their features as
tokens, (batch, L, channels), and scan each head's channels along a permutation of the tokens (diagonal,
Hilbert, reversed, sorted by route, ...). Written with ``selective_scan`` this takes a transposition to
(batch, channels, L), a gather into each head's order, and the inverse gather and transposition after the scan:
four copies of the features per call. ``scan_heads_in_orders`` takes the tokens as they are and returns the
result in the same layout; on CPU the compiled kernel (``ssmir.ops._numba_scan.scan_tokens_*``) reads and
writes the tokens at their scan positions itself, so no copy is made. Elsewhere (other backends, devices)
it is the gather / ``selective_scan`` / scatter composition, which is also the reference the tests use.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor  # noqa: F401 (the custom operators' annotations are resolved at module scope)

from ssmir.ops.export_scan import compiling, exporting
from ssmir.ops.linear import token_linear
from ssmir.ops.selective_scan import (
    _NUMBA_CHUNK,
    _SCAN_CLOCK,
    FLOP_RECORDER,
    _compute_dtype,
    _numba_kernels,
    _set_numba_threads,
    _sum_parts,
    resolve_backend,
    scan_flops,
    selective_scan,
)


def _check(u, delta, A, B, C, D, delta_bias, orders, c_offset):
    if u.dim() != 4:
        raise ValueError(f"scan_heads_in_orders: u must be (batch, L, heads, d), got {tuple(u.shape)}")
    nb, L, K, d = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"scan_heads_in_orders: delta {tuple(delta.shape)} != u {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != K * d:
        raise ValueError(f"scan_heads_in_orders: A must be (heads*d={K * d}, N), got {tuple(A.shape)}")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C), ("c_offset", c_offset)):
        if t is not None and t.shape != (nb, L, K, N):
            raise ValueError(f"scan_heads_in_orders: {name} must be {(nb, L, K, N)}, got {tuple(t.shape)}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (K * d,):
            raise ValueError(f"scan_heads_in_orders: {name} must be ({K * d},), got {tuple(t.shape)}")
    if orders.dim() == 2:
        orders = orders.unsqueeze(0)
    if orders.dim() != 3 or orders.shape[1:] != (K, L) or orders.shape[0] not in (1, nb):
        raise ValueError(f"scan_heads_in_orders: orders must be (heads={K}, L={L}) or (batch, heads, L), "
                         f"got {tuple(orders.shape)}")
    return orders


# How ``_reference`` puts heads into their scan orders when the order is shared by the batch: "flat" (one
# ``index_select`` of all heads' tokens, default) or "per-head" (one per head, as before: K times the
# operations, i.e. kernel launches on a GPU). A module setting for benchmarks' A/B runs (bench_train_step.py).
HEAD_GATHER = "flat"


def _reference(u, delta, A, B, C, D, delta_bias, delta_softplus, orders, c_offset, backend):
    """Gather every head into its order, ``selective_scan``, put the outputs back: (batch, L, heads, d).

    Orders shared by the batch are applied to all heads at once by one ``index_select`` over the (L * heads)
    token-head rows (an exported graph then holds one (heads * L,) index, not an index of the features'
    size); per-image orders with ``gather``.
    """
    nb, L, K, d = u.shape
    orders = orders.to(u.device)
    shared = orders.shape[0] == 1
    inverse = torch.argsort(orders, dim=-1)  # step of each token
    per_head = shared and HEAD_GATHER == "per-head"
    if shared and not per_head:
        heads = torch.arange(K, device=u.device)[:, None]
        rows_in = (orders[0] * K + heads).reshape(-1)  # row k*L + t: token orders[k, t] of head k
        rows_out = (inverse[0] + heads * L).t().reshape(-1)  # row tok*K + k: step inverse[k, tok] of head k

    def in_order(t):  # (batch, L, K, X) -> (batch, K, X, L), step t of head k holding token orders[k, t]
        if per_head:
            return torch.stack([t[:, :, k].index_select(1, orders[0, k]) for k in range(K)], dim=1).transpose(2, 3)
        if shared:
            return t.reshape(nb, L * K, -1).index_select(1, rows_in).view(nb, K, L, -1).transpose(2, 3)
        t = t.permute(0, 2, 3, 1)
        return torch.gather(t, 3, orders.expand(nb, K, L)[:, :, None, :].expand(-1, -1, t.shape[2], -1))

    Cs = in_order(C)
    if c_offset is not None:  # by scan position: added after the gather
        Cs = Cs + c_offset.permute(0, 2, 3, 1)
    y = selective_scan(in_order(u).reshape(nb, K * d, L), in_order(delta).reshape(nb, K * d, L), A, in_order(B),
                       Cs, D, delta_bias=delta_bias, delta_softplus=delta_softplus, backend=backend)
    y = y.view(nb, K, d, L)
    if per_head:
        return torch.stack([y[:, k].index_select(2, inverse[0, k]) for k in range(K)], dim=1).permute(0, 3, 1, 2)
    if shared:
        return y.transpose(2, 3).reshape(nb, K * L, d).index_select(1, rows_out).view(nb, L, K, d)
    out = torch.gather(y, 3, inverse.expand(nb, K, L)[:, :, None, :].expand(-1, -1, d, -1))
    return out.permute(0, 3, 1, 2)


def _parts(nb: int, K: int, d: int) -> int:
    """Channel slices per head, so that the kernels have at least two tasks per thread."""
    return max(1, min(d, math.ceil(2 * torch.get_num_threads() / (nb * K))))


def _numba_forward(u, dt, A, B, C, C_off, D, orders, need_grad: bool):
    """The compiled forward: y (batch, L, K, d) and the chunk-start states (for the backward pass)."""
    k = _numba_kernels()
    _set_numba_threads()
    nb, L, K, d = u.shape
    N = A.shape[1]
    has_off = C_off is not None
    y = u.new_empty(nb, L, K, d)
    h_last = u.new_empty(nb, K * d, N)
    h_ckpt = u.new_empty(nb, K * d, max(1, math.ceil(L / _NUMBA_CHUNK)) if need_grad else 1, N)
    k.scan_tokens_forward(u.numpy(), dt.numpy(), A.numpy(), B.numpy(), C.numpy(), (C_off if has_off else C).numpy(),
                          has_off, D.numpy(), orders.numpy(), _NUMBA_CHUNK, need_grad, _parts(nb, K, d), y.numpy(),
                          h_last.numpy(), h_ckpt.numpy())
    return y, h_ckpt


def _numba_backward(dy, u, dt, A, B, C, C_off, D, orders, h_ckpt):
    """Gradients for u, dt, A, B, C, C_off (empty without an offset) and D."""
    k = _numba_kernels()
    _set_numba_threads()
    nb, L, K, d = u.shape
    N = A.shape[1]
    parts = _parts(nb, K, d)
    has_off = C_off is not None
    du, ddt = u.new_empty(nb, L, K, d), u.new_empty(nb, L, K, d)
    dA = torch.empty(nb, K * d, N, dtype=torch.float64)
    dD = torch.empty(nb, K * d, dtype=torch.float64)
    dB_parts = u.new_empty(nb, parts, L, K, N)
    dC_parts = u.new_empty(nb, parts, L, K, N)
    k.scan_tokens_backward(u.numpy(), dt.numpy(), A.numpy(), B.numpy(), C.numpy(), (C_off if has_off else C).numpy(),
                           has_off, D.numpy(), orders.numpy(), _NUMBA_CHUNK, h_ckpt.numpy(), dy.contiguous().numpy(),
                           parts, du.numpy(), ddt.numpy(), dA.numpy(), dD.numpy(), dB_parts.numpy(),
                           dC_parts.numpy())
    dC = _sum_parts(dC_parts, 1)
    if has_off:  # by scan position: the token's dC at each step
        idx = orders.expand(nb, K, L).transpose(1, 2)[..., None].expand(-1, -1, -1, N)  # (nb, L, K, N)
        dC_off = torch.gather(dC, 1, idx)
    else:
        dC_off = u.new_empty(0)
    return du, ddt, dA.sum(0).to(u.dtype), _sum_parts(dB_parts, 1), dC, dC_off, dD.sum(0).to(u.dtype)


def _setup_context(ctx, inputs, output):
    u, dt, A, B, C, C_off, D, orders, _need_grad = inputs
    ctx.save_for_backward(u, dt, A, B, C, C_off, D, orders, output[1])


def _grads(dy, saved, backward):
    u, dt, A, B, C, C_off, D, orders, h_ckpt = saved
    du, ddt, dA, dB, dC, dC_off, dD = backward(dy, u, dt, A, B, C, C_off, D, orders, h_ckpt)
    return du, ddt, dA, dB, dC, (dC_off if C_off is not None else None), dD, None, None


class _NumbaHeadScan(torch.autograd.Function):
    """The eager path (no import of torch.compile's machinery, which a custom operator's first call costs)."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, C_off, D, orders):
        y, h_ckpt = _numba_forward(u, dt, A, B, C, C_off, D, orders, any(ctx.needs_input_grad))
        _setup_context(ctx, (u, dt, A, B, C, C_off, D, orders, None), (y, h_ckpt))
        return y

    @staticmethod
    def backward(ctx, dy):
        return _grads(dy, ctx.saved_tensors, _numba_backward)[:8]


def _register_ops():
    """The scan as ``torch.library`` custom operators with fake (meta) implementations and autograd, so that
    ``torch.compile`` traces models through it without a graph break (torch >= 2.4). Registered at import
    (cheap); called only under torch.compile, since an operator's first eager call imports the compiler."""
    if not hasattr(torch.library, "custom_op"):
        return None

    @torch.library.custom_op("ssmir::scan_tokens", mutates_args=())
    def forward_op(u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, C_off: Tensor | None, D: Tensor,
                   orders: Tensor, need_grad: bool) -> tuple[Tensor, Tensor]:
        return _numba_forward(u, dt, A, B, C, C_off, D, orders, need_grad)

    @forward_op.register_fake
    def _(u, dt, A, B, C, C_off, D, orders, need_grad):
        nb, L, K, d = u.shape
        chunks = max(1, math.ceil(L / _NUMBA_CHUNK)) if need_grad else 1
        return u.new_empty(nb, L, K, d), u.new_empty(nb, K * d, chunks, A.shape[1])

    @torch.library.custom_op("ssmir::scan_tokens_backward", mutates_args=())
    def backward_op(dy: Tensor, u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, C_off: Tensor | None,
                    D: Tensor, orders: Tensor, h_ckpt: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor,
                                                                        Tensor, Tensor]:
        return _numba_backward(dy, u, dt, A, B, C, C_off, D, orders, h_ckpt)

    @backward_op.register_fake
    def _(dy, u, dt, A, B, C, C_off, D, orders, h_ckpt):
        return (u.new_empty(u.shape), u.new_empty(u.shape), A.new_empty(A.shape), B.new_empty(B.shape),
                C.new_empty(C.shape), u.new_empty(C.shape if C_off is not None else (0,)), D.new_empty(D.shape))

    def backward(ctx, dy, _dh_ckpt):
        return _grads(dy, ctx.saved_tensors, backward_op)

    forward_op.register_autograd(backward, setup_context=_setup_context)
    return forward_op


_SCAN_OP = _register_ops()


def _numba_head_scan(u, dt, A, B, C, C_off, D, orders):
    if _SCAN_OP is not None and compiling():
        need_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (u, dt, A, B, C, C_off, D))
        return _SCAN_OP(u, dt, A, B, C, C_off, D, orders, need_grad)[0]
    return _NumbaHeadScan.apply(u, dt, A, B, C, C_off, D, orders)


def scan_heads_in_orders(u, delta, A, B, C, D=None, delta_bias=None, delta_softplus=False, orders=None,
                         c_offset=None, backend: str | None = None):
    """Selective scans of ``heads`` heads over the tokens, each along its own order, in token layout.

    u, delta: (batch, L, heads, d), any strides (an ``expand`` over heads is fine); A (heads*d, N);
    B, C: (batch, L, heads, N) per token; D, delta_bias: (heads*d,); ``orders``: (heads, L) or
    (batch, heads, L) int64 permutations (identity when None): head k scans tokens orders[k, 0], orders[k, 1],
    ...; ``c_offset`` (batch, L, heads, N) is added to C by scan position (MambaIRv2's prompts). Returns
    (batch, L, heads, d): each token's output of each head, in the dtype of ``u``. The same as gathering
    every head into its order, ``selective_scan`` with B/C grouped by head, and putting the outputs back.
    """
    if u.dim() != 4:
        raise ValueError(f"scan_heads_in_orders: u must be (batch, L, heads, d), got {tuple(u.shape)}")
    nb, L, K, d = u.shape
    if orders is None:
        orders = torch.arange(L).expand(K, L)
    orders = _check(u, delta, A, B, C, D, delta_bias, orders, c_offset)
    if u.device.type == "meta" or exporting():  # export: plain operations (``ssmir.ops.export_scan``)
        return _reference(u, delta, A, B, C, D, delta_bias, delta_softplus, orders, c_offset, backend)
    name = resolve_backend(u.device, backend)
    if name != "numba":
        return _reference(u, delta, A, B, C, D, delta_bias, delta_softplus, orders, c_offset, backend)
    if compiling():  # torch.compile traces the operator itself; the instruments below are for eager runs
        return _numba_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, orders, c_offset)
    with _instruments(nb, K * d, L, A.shape[1]):
        return _numba_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, orders, c_offset)


@contextlib.contextmanager
def _instruments(nb: int, channels: int, L: int, N: int):
    """An eager compiled scan call as ``count_flops`` (FLOP recorder) and ``timing_scans`` (clock) see it."""
    recorder, clock = FLOP_RECORDER.get(), _SCAN_CLOCK.get()
    if recorder is not None:
        recorder(scan_flops(nb, channels, L, N))
    t0 = time.perf_counter()
    yield
    if clock is not None:
        clock.seconds += time.perf_counter() - t0
        clock.calls += 1


def _numba_scan(u, delta, A, B, C, D, delta_bias, delta_softplus, orders, c_offset):
    """The CPU path: step and bias in PyTorch (vectorised, differentiated by autograd), then the kernel."""
    nb, L, K, d = u.shape
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    dt = delta.to(ct)
    if delta_bias is not None:
        dt = dt + delta_bias.to(ct).view(K, d)
    if delta_softplus:
        dt = F.softplus(dt)
    y = _numba_head_scan(u.to(ct), dt, A.to(ct).contiguous(), B.to(ct), C.to(ct),
                         None if c_offset is None else c_offset.to(ct),
                         (D if D is not None else u.new_zeros(K * d)).to(ct).contiguous(),
                         orders.to(torch.int64).contiguous())
    return y.to(dtype_in)


def scan_heads_projected(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A, D, orders=None, c_offset=None,
                         activation: str | None = None, backend: str | None = None):
    """The per-head projections and scans of a Mamba-style mixer, from its inputs: x (B, L, K, d) through
    ``activation`` (None or 'silu'), (dt_r, B, C) = x_proj_weight[k] (R + 2N, d) @ x per head, the step
    dt = softplus(dt_projs_weight[k] (d, R) @ dt_r + dt_projs_bias (K, d)), then ``scan_heads_in_orders``
    with A (K*d, N) and D (K*d,). Returns (B, L, K, d), float32 (float64 for float64 inputs).

    Inference on CPU with the numba backend (no gradient needed) runs all of it in one compiled kernel
    (``ssmir.ops._numba_scan.scan_tokens_infer``): the activation, the projections, the step and the scan per
    token, without the (B, L, K, R + 2N) and (B, L, K, d) intermediates. Everywhere else, and as its
    reference, the same composition of PyTorch operations and ``scan_heads_in_orders``.
    """
    if activation not in (None, "silu"):
        raise ValueError(f"scan_heads_projected: activation must be None or 'silu', got {activation!r}")
    nb, L, K, d = u.shape
    if orders is None:
        orders = torch.arange(L).expand(K, L)
    if _fusable(u, (x_proj_weight, dt_projs_weight, dt_projs_bias, A, D, c_offset), backend):
        return _projected_numba(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A, D, orders, c_offset, activation)
    return _projected_reference(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A, D, orders, c_offset, activation,
                                backend)


# How ``head_linear`` multiplies: "auto" (block-diagonal GEMM when training on CUDA, "mixed" when training on
# CPU, einsum elsewhere), or "einsum" / "blockdiag" / "mixed" everywhere. A module setting for benchmarks' A/B
# runs (benchmarks/bench_train_step.py).
HEAD_PROJECTION = "auto"
_METHODS = ("auto", "einsum", "blockdiag", "mixed")


def _block_diag(weight):  # (K, c, d) -> (K c, K d)
    return torch.block_diag(*weight.unbind(0))


class _MixedHeadLinear(torch.autograd.Function):
    """The einsum forward, and a backward of large GEMMs: the input gradient through the block-diagonal weight
    and the weight gradient as the diagonal blocks of one (K c, B L) @ (B L, K d) product, part by part of the
    output's split (so the parts' gradients are never concatenated)."""

    @staticmethod
    def forward(ctx, x, weight, sizes):
        ctx.save_for_backward(x, weight)
        ctx.sizes = sizes
        return tuple(torch.einsum("blkd,kcd->blkc", x, weight).split(sizes, dim=3))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        x, weight = ctx.saved_tensors
        nb, L, K, d = x.shape
        rows = [g.reshape(nb * L, -1) for g in grads]  # (B L, K c_i), each part's gradient as it came
        dx = dw = None
        if ctx.needs_input_grad[0]:
            for g, w in zip(rows, weight.split(ctx.sizes, dim=1), strict=True):
                dx = torch.addmm(dx, g, _block_diag(w)) if dx is not None else g @ _block_diag(w)
            dx = dx.view(nb, L, K, d)
        if ctx.needs_input_grad[1]:
            xs = x.reshape(nb * L, K * d)
            dw = torch.cat([(g.t() @ xs).view(K, -1, K, d).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
                            for g in rows], dim=1)
        return dx, dw, None


def head_linear(x, weight, method: str | None = None, split: list[int] | None = None):
    """Each head's own linear map, ``y[b, l, k] = weight[k] @ x[b, l, k]``: x (B, L, K, d), weight (K, c, d) ->
    (B, L, K, c), or with ``split`` the tuple of its parts along c (``y.split(split, dim=3)``).

    Written as ``einsum("blkd,kcd->blkc")`` (a batched GEMM over the heads) for inference. Where gradients are
    taken, the einsum's backward is K GEMMs of shape (B L, c) @ (c, d) and (c, B L) @ (B L, d), whose tiny
    inner or output sizes both cuBLAS and CPU BLAS run slowly. On a CUDA device it is then one GEMM with the
    block-diagonal (K c, K d) weight, forward and backward: K times the multiply-adds but 4.8x faster on an
    H200 (``benchmarks/bench_head_projection.py``; half of a training step's GPU time for the bundled
    denoiser before). On CPU ("mixed") the forward stays the einsum (as fast as the block-diagonal GEMM) and
    only the backward uses large GEMMs, part by part of ``split``, so that the parts' gradients (the scan's
    dB, dC and the step's) are not concatenated first (``benchmarks/bench_train_step.py --projections``).
    ``method`` (default ``HEAD_PROJECTION``) forces "einsum", "blockdiag" or "mixed".
    """
    method = method or HEAD_PROJECTION
    if method not in _METHODS:
        raise ValueError(f"head_linear: method must be one of {', '.join(map(repr, _METHODS))}, got {method!r}")
    if method == "auto":
        training = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
        if not training or exporting() or compiling():
            method = "einsum"
        else:  # other devices (MPS, XPU) keep the einsum: the other forms are unmeasured there
            method = "blockdiag" if x.is_cuda else "mixed" if x.device.type == "cpu" else "einsum"
    sizes = list(split) if split is not None else [weight.shape[1]]
    if method == "mixed":
        parts = _MixedHeadLinear.apply(x, weight, sizes)
    else:
        if method == "einsum":
            y = torch.einsum("blkd,kcd->blkc", x, weight)
        else:
            nb, L, K, d = x.shape
            y = (x.reshape(nb, L, K * d) @ _block_diag(weight).t()).view(nb, L, K, -1)
        parts = y.split(sizes, dim=3)
    return tuple(parts) if split is not None else parts[0]


def _projected_reference(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A, D, orders, c_offset, activation,
                         backend):
    if activation == "silu":
        u = F.silu(u)
    d_state, dt_rank = A.shape[1], dt_projs_weight.shape[2]
    dts, Bs, Cs = head_linear(u, x_proj_weight, split=[dt_rank, d_state, d_state])  # (B, L, K, R / N / N)
    dts = head_linear(dts, dt_projs_weight)
    ct = _compute_dtype(u)  # float32, or float64 for float64 inputs
    return scan_heads_in_orders(
        u.to(ct), dts.to(ct), A.to(ct), Bs.to(ct), Cs.to(ct), D.to(ct), delta_bias=dt_projs_bias.to(ct).view(-1),
        delta_softplus=True, orders=orders, c_offset=None if c_offset is None else c_offset.to(ct), backend=backend)


def _fusable(u, tensors, backend) -> bool:
    """The fused inference kernel applies: CPU, numba backend, float32/float64, no gradient, not traced."""
    if u.device.type != "cpu" or exporting() or compiling() or u.dtype not in (torch.float32, torch.float64):
        return False
    if any(t is not None and t.dtype != u.dtype for t in tensors):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (u, *tensors)):
        return False
    return resolve_backend(u.device, backend) == "numba"


def _projected_numba(u, x_proj_weight, dt_projs_weight, dt_projs_bias, A, D, orders, c_offset, activation):
    k = _numba_kernels()
    _set_numba_threads()
    nb, L, K, d = u.shape
    N = A.shape[1]
    orders = _check(u, u, A, None, None, D, dt_projs_bias.reshape(-1), orders, c_offset).to(torch.int64).contiguous()
    parts = _parts(nb, K, d)
    silu = activation == "silu"
    if parts == 1:  # every task holds a whole head: the projections are computed in the kernel
        xd = u
    else:  # channel slices of a head share its projections: computed once here, per token
        x = F.silu(u) if silu else u
        if K == 1 or x.stride(2) == 0:  # one head, or heads sharing their input: one product for all heads
            xd = token_linear(x[:, :, 0], x_proj_weight.reshape(-1, d)).view(nb, L, K, -1)
        else:
            xd = torch.einsum("blkd,kcd->blkc", x, x_proj_weight)
    y = u.new_empty(nb, L, K, d)

    def arr(t):
        return t.detach().numpy()

    with _instruments(nb, K * d, L, N):
        k.scan_tokens_infer(arr(u), silu, arr(xd), parts > 1, arr(x_proj_weight.transpose(1, 2).contiguous()),
                            arr(dt_projs_weight.contiguous()), arr(dt_projs_bias.reshape(-1).contiguous()),
                            arr(A.contiguous()), arr(c_offset if c_offset is not None else u), c_offset is not None,
                            arr(D.contiguous()), orders.numpy(), _NUMBA_CHUNK, parts, y.numpy())
    return y
