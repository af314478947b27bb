"""Triton kernels of the selective scan (forward and backward), for NVIDIA and AMD GPUs.

Imported only when the ``triton`` backend is used, so that ssmir never needs triton. Each program
owns one batch element and a block of ``BLOCK_D`` channels that share one B/C group, with their
state ``h`` (BLOCK_D, N) held in registers. Time is walked in chunks of ``CHUNK`` steps: a chunk's
inputs are loaded as coalesced (channels, time) tiles, the recurrence inside the chunk is solved by
``tl.associative_scan`` over the affine maps ``h -> a_t * h + b_t`` and the chunk's last state is
carried to the next. The forward pass stores the state at each chunk start (float32, or float64
for float64 inputs); the backward pass walks the chunks in reverse, recomputes the chunk's states
from that checkpoint and runs the adjoint recurrence ``g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}``
as a reverse associative scan.

Gradients of B and C are reduced over the block's channels in registers; each block writes its own
partial gradient and the caller sums the blocks of a group (deterministic). Where those partials would
be large, blocks add into the group's gradient with atomic adds instead, as mamba-ssm does (less memory;
the order of the additions varies, so the last bits may differ between runs): see ``use_atomics``.

Under ``TRITON_INTERPRET=1`` Triton runs these kernels on CPU tensors (how the test suite checks them
without a GPU).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# --------------------------------------------------------------------------- kernels


@triton.jit
def _affine_combine(a1, b1, a2, b2):
    # (a1, b1) is the map applied first (the accumulated one), (a2, b2) the one applied after it
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    return tl.where(x <= 20.0, tl.log(1.0 + tl.exp(x)), x)


@triton.jit
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, y_ptr, hck_ptr, hlast_ptr,
    L, dim, N, n_chunks, dpg_b, dpg_c,
    s_ub, s_ud, s_ad, s_an,
    s_bb, s_bg, s_bn, s_bl, s_cb, s_cg, s_cn, s_cl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    STORE_CKPT: tl.constexpr, F64: tl.constexpr,
    NP: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr,
):
    acc = tl.float64 if F64 else tl.float32
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    offs_t = tl.arange(0, CHUNK)
    group_b = (pid_d * BLOCK_D) // dpg_b  # every channel of the block is in this group of B
    group_c = (pid_d * BLOCK_D) // dpg_c  # ... and in this group of C

    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0).to(acc)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(acc)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(acc)

    row = pid_b * s_ub + offs_d[:, None].to(tl.int64) * s_ud  # (BLOCK_D, 1) offsets of u, delta, z, y
    b_base = B_ptr + pid_b * s_bb + group_b * s_bg + offs_n[:, None] * s_bn  # (NP, 1)
    c_base = C_ptr + pid_b * s_cb + group_c * s_cg + offs_n[:, None] * s_cn
    ck_base = hck_ptr + ((pid_b * dim + offs_d[:, None].to(tl.int64)) * n_chunks) * NP + offs_n[None, :]

    h = tl.zeros((BLOCK_D, NP), dtype=acc)
    for c in range(0, n_chunks):
        if STORE_CKPT:
            tl.store(ck_base + c * NP, h, mask=mask_dn)
        t = c * CHUNK + offs_t
        mask_t = t < L
        m2 = mask_d[:, None] & mask_t[None, :]
        u = tl.load(u_ptr + row + t[None, :], mask=m2, other=0.0).to(acc)
        dt = tl.load(delta_ptr + row + t[None, :], mask=m2, other=0.0).to(acc)
        if HAS_BIAS:
            dt = dt + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(dt)
        mask_nt = mask_n[:, None] & mask_t[None, :]
        Bv = tl.load(b_base + t[None, :] * s_bl, mask=mask_nt, other=0.0).to(acc)  # (NP, CHUNK)
        Cv = tl.load(c_base + t[None, :] * s_cl, mask=mask_nt, other=0.0).to(acc)
        dA = tl.exp(dt[:, None, :] * A[:, :, None])  # (BLOCK_D, NP, CHUNK)
        dA = tl.where(mask_t[None, None, :], dA, 1.0)  # steps past L leave the state alone
        dBu = (dt * u)[:, None, :] * Bv[None, :, :]
        a_cum, b_cum = tl.associative_scan((dA, dBu), 2, _affine_combine)
        hs = b_cum + a_cum * h[:, :, None]
        y = tl.sum(hs * Cv[None, :, :], axis=1)  # (BLOCK_D, CHUNK)
        h = tl.sum(tl.where(offs_t[None, None, :] == CHUNK - 1, hs, 0.0), axis=2)
        if HAS_D:
            y += u * Dv[:, None]
        if HAS_Z:
            z = tl.load(z_ptr + row + t[None, :], mask=m2, other=0.0).to(acc)
            y = y * (z * tl.sigmoid(z))
        tl.store(y_ptr + row + t[None, :], y.to(y_ptr.dtype.element_ty), mask=m2)
    tl.store(hlast_ptr + (pid_b * dim + offs_d[:, None].to(tl.int64)) * N + offs_n[None, :], h, mask=mask_dn)


@triton.jit
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, hck_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dD_ptr, dbias_ptr, dB_ptr, dC_ptr,
    L, dim, N, n_chunks, dpg_b, dpg_c, n_blocks,
    s_ub, s_ud, s_ad, s_an,
    s_bb, s_bg, s_bn, s_bl, s_cb, s_cg, s_cn, s_cl,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    F64: tl.constexpr, NP: tl.constexpr, BLOCK_D: tl.constexpr, CHUNK: tl.constexpr, ATOMIC: tl.constexpr,
):
    acc = tl.float64 if F64 else tl.float32
    pid_b = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    offs_t = tl.arange(0, CHUNK)
    group_b = (pid_d * BLOCK_D) // dpg_b
    group_c = (pid_d * BLOCK_D) // dpg_c

    mask_dn = mask_d[:, None] & mask_n[None, :]
    A = tl.load(A_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn, other=0.0).to(acc)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(acc)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=mask_d, other=0.0).to(acc)

    row = pid_b * s_ub + offs_d[:, None].to(tl.int64) * s_ud
    b_base = B_ptr + pid_b * s_bb + group_b * s_bg + offs_n[:, None] * s_bn
    c_base = C_ptr + pid_b * s_cb + group_c * s_cg + offs_n[:, None] * s_cn
    ck_base = hck_ptr + ((pid_b * dim + offs_d[:, None].to(tl.int64)) * n_chunks) * NP + offs_n[None, :]
    if ATOMIC:  # added into (batch, G, N, L) buffers of B's and C's groups
        db_off = ((pid_b * (dim // dpg_b) + group_b) * N + offs_n[:, None]) * L  # (NP, 1)
        dc_off = ((pid_b * (dim // dpg_c) + group_c) * N + offs_n[:, None]) * L
    else:  # this block's own slice of (batch, blocks, N, L) partials, summed by the caller
        db_off = ((pid_b * n_blocks + pid_d) * N + offs_n[:, None]) * L
        dc_off = db_off

    g = tl.zeros((BLOCK_D, NP), dtype=acc)  # dLoss/dh at the first step of the chunk after this one
    dA_acc = tl.zeros((BLOCK_D, NP), dtype=acc)
    dD_acc = tl.zeros((BLOCK_D,), dtype=acc)
    dbias_acc = tl.zeros((BLOCK_D,), dtype=acc)
    for ci in range(0, n_chunks):
        c = n_chunks - 1 - ci
        t = c * CHUNK + offs_t
        mask_t = t < L
        m2 = mask_d[:, None] & mask_t[None, :]
        mask_nt = mask_n[:, None] & mask_t[None, :]
        u = tl.load(u_ptr + row + t[None, :], mask=m2, other=0.0).to(acc)
        x = tl.load(delta_ptr + row + t[None, :], mask=m2, other=0.0).to(acc)
        if HAS_BIAS:
            x = x + bias[:, None]
        if SOFTPLUS:
            dt = _softplus(x)
        else:
            dt = x
        # exp(delta A) one step ahead: the factor that carries g_{t+1} back to g_t
        t1 = t + 1
        m2n = mask_d[:, None] & (t1 < L)[None, :]
        xn = tl.load(delta_ptr + row + t1[None, :], mask=m2n, other=0.0).to(acc)
        if HAS_BIAS:
            xn = xn + bias[:, None]
        if SOFTPLUS:
            xn = _softplus(xn)
        a_next = tl.where((t1 < L)[None, None, :], tl.exp(xn[:, None, :] * A[:, :, None]), 0.0)

        Bv = tl.load(b_base + t[None, :] * s_bl, mask=mask_nt, other=0.0).to(acc)
        Cv = tl.load(c_base + t[None, :] * s_cl, mask=mask_nt, other=0.0).to(acc)
        dA = tl.where(mask_t[None, None, :], tl.exp(dt[:, None, :] * A[:, :, None]), 1.0)
        dtu = dt * u
        dBu = dtu[:, None, :] * Bv[None, :, :]
        h0 = tl.load(ck_base + c * NP, mask=mask_dn, other=0.0)
        a_cum, b_cum = tl.associative_scan((dA, dBu), 2, _affine_combine)
        hs = b_cum + a_cum * h0[:, :, None]  # states h_t of the chunk

        dout = tl.load(dout_ptr + row + t[None, :], mask=m2, other=0.0).to(acc)
        if HAS_Z:
            z = tl.load(z_ptr + row + t[None, :], mask=m2, other=0.0).to(acc)
            sz = tl.sigmoid(z)
            y = tl.sum(hs * Cv[None, :, :], axis=1)
            if HAS_D:
                y += u * Dv[:, None]
            dz = dout * y * sz * (1.0 + z * (1.0 - sz))
            tl.store(dz_ptr + row + t[None, :], dz.to(dz_ptr.dtype.element_ty), mask=m2)
            dy = dout * z * sz
        else:
            dy = dout
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=1)

        p_cum, s_cum = tl.associative_scan((a_next, Cv[None, :, :] * dy[:, None, :]), 2, _affine_combine,
                                           reverse=True)
        gs = s_cum + p_cum * g[:, :, None]  # dLoss/dh_t over the chunk
        g = tl.sum(tl.where(offs_t[None, None, :] == 0, gs, 0.0), axis=2)

        prev = hs - dBu  # exp(delta_t A) h_{t-1}
        ddt = tl.sum(gs * (A[:, :, None] * prev + Bv[None, :, :] * u[:, None, :]), axis=1)
        dA_acc += tl.sum(gs * prev * dt[:, None, :], axis=2)
        du = tl.sum(gs * Bv[None, :, :], axis=1) * dt
        if HAS_D:
            du += dy * Dv[:, None]
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(x)
        ddt = tl.where(m2, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + row + t[None, :], du.to(du_ptr.dtype.element_ty), mask=m2)
        tl.store(ddelta_ptr + row + t[None, :], ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
        dBp = tl.sum(gs * dtu[:, None, :], axis=0)  # (NP, CHUNK), summed over the block's channels
        dCp = tl.sum(hs * dy[:, None, :], axis=0)
        if ATOMIC:
            tl.atomic_add(dB_ptr + db_off + t[None, :], dBp, mask=mask_nt)
            tl.atomic_add(dC_ptr + dc_off + t[None, :], dCp, mask=mask_nt)
        else:
            tl.store(dB_ptr + db_off + t[None, :], dBp, mask=mask_nt)
            tl.store(dC_ptr + dc_off + t[None, :], dCp, mask=mask_nt)

    out = (pid_b * dim + offs_d[:, None].to(tl.int64)) * N + offs_n[None, :]
    tl.store(dA_ptr + out, dA_acc, mask=mask_dn)
    if HAS_D:
        tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)


# --------------------------------------------------------------------------- launch parameters


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _multiprocessors(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter


def launch_config(batch: int, dim: int, groups: int, n_state: int, sms: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, CHUNK, NP, num_warps) for a scan of ``batch`` x ``dim`` channels whose blocks must stay
    inside groups of ``dim // groups`` channels, with ``n_state`` states, on a GPU of ``sms`` multiprocessors.

    BLOCK_D is a power of two that divides the channels per group (a block never straddles two groups),
    as large as possible up to 16 while the grid still has two programs per multiprocessor. A
    (BLOCK_D, N, CHUNK) tile holds about 4096 elements with 4 warps, or 8192 with 8 warps when there are
    fewer programs than that (batch 1: fewer, longer chunks): the best of a sweep on an H200
    (docs/benchmarks.md). ``SSMIR_TRITON_BLOCK_D``, ``SSMIR_TRITON_CHUNK`` and ``SSMIR_TRITON_WARPS``
    override them (for tuning).
    """
    np_ = triton.next_power_of_2(max(1, n_state))
    dpg = dim // groups
    target = _env_int("SSMIR_TRITON_BLOCK_D", 0)
    block_d = 1
    while dpg % (block_d * 2) == 0 and (
        block_d * 2 <= target if target else
        (block_d * 2 <= 16 and block_d * 2 * np_ <= 256 and batch * dim // (block_d * 2) >= 2 * sms)
    ):
        block_d *= 2
    few = batch * dim // block_d < 2 * sms
    tile = 8192 if few else 4096
    chunk = _env_int("SSMIR_TRITON_CHUNK", max(16, min(512, tile // (block_d * np_))))
    chunk = triton.next_power_of_2(chunk)
    warps = _env_int("SSMIR_TRITON_WARPS", 8 if few else 4)
    return block_d, chunk, np_, warps


def _launch_params(u, A, B, C):
    """Launch config and the scalar/stride arguments shared by both kernels."""
    nb, nd = u.shape[:2]
    gb, gc = B.shape[1], C.shape[1]
    finest = max(gb, gc) if max(gb, gc) % min(gb, gc) == 0 else nd  # blocks inside the groups of both
    cfg = launch_config(nb, nd, finest, A.shape[1], _multiprocessors(u.device))
    strides = (u.stride(0), u.stride(1), A.stride(0), A.stride(1),
               B.stride(0), B.stride(1), B.stride(2), B.stride(3),
               C.stride(0), C.stride(1), C.stride(2), C.stride(3))
    return cfg, nd // gb, nd // gc, strides


def scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus: bool, store_ckpt: bool):
    """Run the forward kernel. u, delta, z: contiguous (batch, D, L); B, C: (batch, G, N, L) with any strides.

    Returns y (dtype of u), the last state (batch, D, N; float32, float64 for float64 u) and the
    chunk-start states (batch, D, chunks, NP) when ``store_ckpt`` (else None).
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    (block_d, chunk, np_, warps), dpg_b, dpg_c, strides = _launch_params(u, A, B, C)
    n_chunks = triton.cdiv(L, chunk)
    acc = torch.float64 if u.dtype == torch.float64 else torch.float32
    y = torch.empty_like(u)
    h_last = torch.empty(nb, nd, N, device=u.device, dtype=acc)
    hck = torch.empty(nb, nd, max(1, n_chunks), np_, device=u.device, dtype=acc) if store_ckpt else h_last
    _scan_fwd_kernel[(nb, triton.cdiv(nd, block_d))](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u, y, hck, h_last,
        L, nd, N, n_chunks, dpg_b, dpg_c, *strides,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        STORE_CKPT=store_ckpt, F64=acc == torch.float64, NP=np_, BLOCK_D=block_d, CHUNK=chunk, num_warps=warps,
    )
    return y, h_last, (hck if store_ckpt else None)


def scan_backward(dout, u, delta, A, B, C, D, z, delta_bias, softplus: bool, hck):
    """Run the backward kernel; returns du, ddelta, dz, dA (batch, D, N), dD, dbias (batch, D) and dB, dC
    (batch, G, N, L) in the compute dtype."""
    nb, nd, L = u.shape
    N = A.shape[1]
    (block_d, chunk, np_, warps), dpg_b, dpg_c, strides = _launch_params(u, A, B, C)
    n_chunks = triton.cdiv(L, chunk)
    n_blocks = triton.cdiv(nd, block_d)
    acc = hck.dtype
    dev = u.device
    du = torch.empty_like(u)
    ddelta = torch.empty_like(delta)
    dz = torch.empty_like(z) if z is not None else None
    dA = torch.empty(nb, nd, N, device=dev, dtype=acc)
    dD = torch.empty(nb, nd, device=dev, dtype=acc) if D is not None else None
    dbias = torch.empty(nb, nd, device=dev, dtype=acc) if delta_bias is not None else None
    gb, gc = B.shape[1], C.shape[1]
    atomic = use_atomics(nb * n_blocks * N * L * 2 * (8 if acc == torch.float64 else 4)) and n_blocks > min(gb, gc)
    if atomic:
        dB = torch.zeros(nb, gb, N, L, device=dev, dtype=acc)
        dC = torch.zeros(nb, gc, N, L, device=dev, dtype=acc)
    else:
        dB = torch.empty(nb, n_blocks, N, L, device=dev, dtype=acc)
        dC = torch.empty(nb, n_blocks, N, L, device=dev, dtype=acc)
    _scan_bwd_kernel[(nb, n_blocks)](
        u, delta, A, B, C, D if D is not None else u, z if z is not None else u,
        delta_bias if delta_bias is not None else u, dout, hck,
        du, ddelta, dz if dz is not None else du, dA, dD if dD is not None else dA,
        dbias if dbias is not None else dA, dB, dC,
        L, nd, N, n_chunks, dpg_b, dpg_c, n_blocks, *strides,
        HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None, SOFTPLUS=softplus,
        F64=acc == torch.float64, NP=np_, BLOCK_D=block_d, CHUNK=chunk, ATOMIC=atomic, num_warps=warps,
    )
    if not atomic:
        dB, dC = _reduce_blocks(dB, gb), _reduce_blocks(dC, gc)
    return du, ddelta, dz, dA, dD, dbias, dB, dC


PARTIALS_LIMIT = 1 << 30  # bytes of per-block dB/dC partials above which the backward adds atomically


def use_atomics(partial_bytes: int) -> bool:
    """Whether the backward adds dB/dC atomically instead of writing per-block partials.

    Partials (the default) are deterministic and measured faster, at (blocks per group) x the memory of
    B and C; atomic adds are used when the partials would pass ``PARTIALS_LIMIT`` or when
    ``SSMIR_TRITON_ATOMIC=1``, never under ``torch.use_deterministic_algorithms(True)``.
    """
    if torch.are_deterministic_algorithms_enabled():
        return False
    return os.environ.get("SSMIR_TRITON_ATOMIC", "0") == "1" or partial_bytes > PARTIALS_LIMIT


def _reduce_blocks(partial, groups):
    """(batch, blocks, N, L) per-block partial gradients -> (batch, groups, N, L)."""
    nb, n_blocks, N, L = partial.shape
    return partial.view(nb, groups, n_blocks // groups, N, L).sum(2)


class TritonScan(torch.autograd.Function):
    """Autograd wrapper: u, delta, z contiguous (batch, D, L); B, C (batch, G, N, L), any strides."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus):
        need_grad = any(ctx.needs_input_grad)
        y, h_last, hck = scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, store_ckpt=need_grad)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, hck)
        ctx.softplus = softplus
        ctx.mark_non_differentiable(h_last)
        return y, h_last

    @staticmethod
    def backward(ctx, dy, _dh_last):
        u, delta, A, B, C, D, z, delta_bias, hck = ctx.saved_tensors
        du, ddelta, dz, dA, dD, dbias, dB, dC = scan_backward(
            dy.contiguous(), u, delta, A, B, C, D, z, delta_bias, ctx.softplus, hck)
        return (du, ddelta, dA.sum(0).to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
                None if dD is None else dD.sum(0).to(D.dtype), dz,
                None if dbias is None else dbias.sum(0).to(delta_bias.dtype), None)
