"""Compiled CPU kernels (numba) for the selective scan, forward and backward.

One pass over the sequence per call: ``exp(dt * A)``, the recurrence, ``C . h`` and the ``D * u`` skip are
computed together, with the state of each channel in a small local array and ``exp(dt * A)`` computed a block
of steps at a time into a small buffer; the loops over the N states become SIMD code. float32 uses an inline
``exp`` that vectorises (Cody-Waite range reduction, a degree-6 polynomial, the exponent written into the
float's bits: within 5e-7 relative of libm); float64 uses libm's ``exp`` (for gradcheck).
The step ``dt`` (after bias and softplus) and the z gate are computed by PyTorch around these kernels, as
vectorised (B, D, L) operations.

The forward pass (``scan_forward``) stores the state at the start of every ``chunk`` steps; the backward pass
(``scan_backward``) walks the chunks from the last to the first, recomputes each chunk's states and
``exp(dt * A)`` from its stored state into small buffers and runs the adjoint recurrence through it, so the
memory kept between the two passes is ``(B, D, L / chunk, N)``.

``window_attention`` (MambaIRv2's window attention in inference) is here too, for the same vectorising ``exp``.

Where LLVM does not vectorise a loop by itself, the float32 paths use small LLVM-IR intrinsics: the recurrence
with the state in 8-lane registers (``_vector_recurrence``, N = 8 or 16) and the backward's adjoint recurrence
likewise (``_vector_adjoint``), the maximum of a row (``_max_f32``),
and ``_prefetch`` for the token rows the next block of a scan order will read.

Array layouts (C-contiguous, one float dtype, float32 or float64):
    u, dt, y, dy: (B, D, L)      A: (D, N)      D: (D,)      B, C: (B, G, N, L)
B and C are copied a block of steps at a time into small (steps, N) buffers, time before state, so that the
loops over the states read contiguous memory; every channel of the group uses the block from the L1 cache.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)  # ln 2 = hi + lo, hi exact in 9 bits
_P2, _P3, _P4, _P5, _P6 = (np.float32(1.0 / math.factorial(k)) for k in range(2, 7))


@intrinsic
def _int32_bits_as_float32(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (free: a register move)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@numba.njit(inline="always", fastmath=True, cache=True)
def _exp_f32(x):
    # exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 in [-ln2/2, ln2/2] (Cody-Waite, ln 2 in two
    # parts so that k * hi is exact); exp(r) by its degree-6 Taylor polynomial; 2^k written into the exponent
    x = min(max(x, np.float32(-87.3)), np.float32(88.0))  # below exp(-87.3) the state has long decayed
    k = np.floor(x * _LOG2E + np.float32(0.5))
    r = x - k * _LN2_HI
    r = r - k * _LN2_LO
    p = np.float32(1.0) + r * (np.float32(1.0) + r * (_P2 + r * (_P3 + r * (_P4 + r * (_P5 + r * _P6)))))
    return p * _int32_bits_as_float32((np.int32(k) + np.int32(127)) << np.int32(23))


def fast_exp(x):
    """exp(x): the vectorisable float32 version for float32, libm for float64."""
    return math.exp(x)


@overload(fast_exp, inline="always")
def _fast_exp_overload(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    return lambda x: math.exp(x)


@numba.njit(parallel=True, cache=True, fastmath=True)
def scan_forward(u, dt, A, B, C, Dv, chunk, store_ckpt, parts, y, h_last, h_ckpt):
    """y = C . h + D * u over the whole sequence; ``h_last`` (B, D, N) gets the last state and, if
    ``store_ckpt``, ``h_ckpt`` (B, D, ceil(L / chunk), N) the state before every ``chunk``-th step.

    Work is split into ``(B, G, parts)`` tasks, each a slice of the channels of one group. Time is walked in
    blocks of ``chunk`` steps and every channel of the task runs through a block before the next block, so a
    block of B and C (shared by the group) is read from memory once and then from the L1 cache. Per channel
    and block, ``exp(dt * A)`` is computed first (independent lanes), then the recurrence.
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    G = B.shape[1]
    dpg = nd // G
    for task in numba.prange(nb * G * parts):
        bi = task // (G * parts)
        rest = task % (G * parts)
        gi = rest // parts
        p = rest % parts
        d_start = gi * dpg + (p * dpg) // parts
        d_stop = gi * dpg + ((p + 1) * dpg) // parts
        hs = np.zeros((d_stop - d_start, N), dtype=u.dtype)
        e = np.empty((chunk, N), dtype=u.dtype)  # e[j, n] = exp(dt[t0 + j] * A[n])
        bb = np.empty((chunk, N), dtype=u.dtype)  # the block of B and C, time before state
        cb = np.empty((chunk, N), dtype=u.dtype)
        for t0 in range(0, L, chunk):
            t1 = min(L, t0 + chunk)
            for n in range(N):
                for j in range(t1 - t0):
                    bb[j, n] = B[bi, gi, n, t0 + j]
                    cb[j, n] = C[bi, gi, n, t0 + j]
            for di in range(d_start, d_stop):
                h = hs[di - d_start]
                if store_ckpt:
                    for n in range(N):
                        h_ckpt[bi, di, t0 // chunk, n] = h[n]
                for j in range(t1 - t0):
                    dtj = dt[bi, di, t0 + j]
                    for n in range(N):
                        e[j, n] = fast_exp(dtj * A[di, n])
                d_skip = Dv[di]
                for t in range(t0, t1):
                    j = t - t0
                    ut = u[bi, di, t]
                    dtu = dt[bi, di, t] * ut
                    acc = dtu * 0
                    for n in range(N):
                        hn = e[j, n] * h[n] + dtu * bb[j, n]
                        h[n] = hn
                        acc += cb[j, n] * hn
                    y[bi, di, t] = acc + d_skip * ut
        for di in range(d_start, d_stop):
            for n in range(N):
                h_last[bi, di, n] = hs[di - d_start, n]


@numba.njit(parallel=True, cache=True, fastmath=True)
def scan_backward(u, dt, A, B, C, Dv, chunk, h_ckpt, dy, parts, du, ddt, dA_acc, dD, dB_parts, dC_parts):
    """Gradients of ``scan_forward`` with respect to u, dt, A, B, C and D, walking the sequence backwards.

    Tasks as in ``scan_forward``; each writes its share of dB/dC to ``dB_parts``/``dC_parts`` (B, G, parts, N, L),
    which the caller sums. ``dA_acc`` (B, D, N) and ``dD`` (B, D) are float64 sums over
    time, one row per channel. Chunks are walked from the last to the first; in each, every channel of the
    task recomputes its states and ``exp(dt * A)`` from the stored state, then runs the adjoint recurrence.
    """
    nb, nd, L = u.shape
    N = A.shape[1]
    G = B.shape[1]
    dpg = nd // G
    n_chunks = h_ckpt.shape[2]
    for task in numba.prange(nb * G * parts):
        bi = task // (G * parts)
        rest = task % (G * parts)
        gi = rest // parts
        p = rest % parts
        d_start = gi * dpg + (p * dpg) // parts
        d_stop = gi * dpg + ((p + 1) * dpg) // parts
        h_buf = np.empty((chunk + 1, N), dtype=u.dtype)  # h_buf[j] = state before step t0 + j
        e_buf = np.empty((chunk, N), dtype=u.dtype)  # e_buf[j, n] = exp(dt[t0 + j] * A[n])
        gs = np.zeros((d_stop - d_start, N), dtype=u.dtype)  # dLoss / dh_t per channel, carried backwards
        dA_rows = np.zeros((d_stop - d_start, N), dtype=np.float64)
        dD_rows = np.zeros(d_stop - d_start, dtype=np.float64)
        dA_chunk = np.empty(N, dtype=u.dtype)
        bb = np.empty((chunk, N), dtype=u.dtype)  # the chunk of B and C, time before state
        cb = np.empty((chunk, N), dtype=u.dtype)
        dbb = np.empty((chunk, N), dtype=u.dtype)  # the task's dB and dC over the chunk
        dcb = np.empty((chunk, N), dtype=u.dtype)
        for c in range(n_chunks - 1, -1, -1):
            t0 = c * chunk
            t1 = min(L, t0 + chunk)
            for n in range(N):
                for j in range(t1 - t0):
                    bb[j, n] = B[bi, gi, n, t0 + j]
                    cb[j, n] = C[bi, gi, n, t0 + j]
                    dbb[j, n] = 0.0
                    dcb[j, n] = 0.0
            for di in range(d_start, d_stop):
                g = gs[di - d_start]
                dA_row = dA_rows[di - d_start]
                d_skip = Dv[di]
                dD_acc = Dv[di] * 0  # chunk sums in the compute dtype (SIMD), added to float64 rows per chunk
                for n in range(N):
                    dA_chunk[n] = 0.0
                for n in range(N):
                    h_buf[0, n] = h_ckpt[bi, di, c, n]
                for j in range(t1 - t0):
                    dtj = dt[bi, di, t0 + j]
                    for n in range(N):
                        e_buf[j, n] = fast_exp(dtj * A[di, n])
                for t in range(t0, t1):
                    j = t - t0
                    dtu = dt[bi, di, t] * u[bi, di, t]
                    for n in range(N):
                        h_buf[j + 1, n] = e_buf[j, n] * h_buf[j, n] + dtu * bb[j, n]
                sl = slice(t0, t1)
                _adjoint(t1 - t0, e_buf, h_buf, bb, cb, dt[bi, di, sl], u[bi, di, sl], dy[bi, di, sl], A[di], d_skip,
                         g, dA_chunk, dcb, dbb, du[bi, di, sl], ddt[bi, di, sl])
                for t in range(t0, t1):
                    dD_acc += dy[bi, di, t] * u[bi, di, t]
                dD_rows[di - d_start] += dD_acc
                for n in range(N):
                    dA_row[n] += dA_chunk[n]
            for n in range(N):
                for j in range(t1 - t0):
                    dB_parts[bi, gi, p, n, t0 + j] = dbb[j, n]
                    dC_parts[bi, gi, p, n, t0 + j] = dcb[j, n]
        for di in range(d_start, d_stop):
            for n in range(N):
                dA_acc[bi, di, n] = dA_rows[di - d_start, n]
            dD[bi, di] = dD_rows[di - d_start]


# --------------------------------------------------------------------------- token-major heads with scan orders


@numba.njit(inline="always", cache=True)
def _task_slice(task, K, parts, dh):
    """The (batch, head, channel slice) of a token-layout task: batch index, head, first channel, channels."""
    bi = task // (K * parts)
    rest = task % (K * parts)
    ki = rest // parts
    p = rest % parts
    c0 = (p * dh) // parts
    return bi, ki, c0, ((p + 1) * dh) // parts - c0


@numba.njit(inline="always", cache=True)
def _token_buffers(nc, N, chunk, like):
    """A token-layout task's buffers, in ``like``'s dtype: the states (nc, N) at zero; blocks of exp(dt A), B and
    C (chunk, N), time before state; blocks of u, dt and y (nc, chunk)."""
    return (np.zeros((nc, N), dtype=like.dtype), np.empty((chunk, N), dtype=like.dtype),
            np.empty((chunk, N), dtype=like.dtype), np.empty((chunk, N), dtype=like.dtype),
            np.empty((nc, chunk), dtype=like.dtype), np.empty((nc, chunk), dtype=like.dtype),
            np.empty((nc, chunk), dtype=like.dtype))


_I32, _I64, _F32 = ir.IntType(32), ir.IntType(64), ir.FloatType()
_V8 = ir.VectorType(_F32, 8)
_FAST = ("fast",)


def _f32_c_array(a, ndim: int) -> bool:
    return isinstance(a, types.Array) and a.dtype == types.float32 and a.ndim == ndim and a.layout == "C"


def _f32_recurrence_args(e, bb, cb, dts, us, h, ys) -> bool:
    """The recurrence's arrays are float32 and C-contiguous (2-D blocks e, B, C; 1-D the rest): its SIMD form."""
    return all(_f32_c_array(a, 2) for a in (e, bb, cb)) and all(_f32_c_array(a, 1) for a in (dts, us, h, ys))


def _lanes_reduce(builder, v, combine):
    """The 8 lanes of a <8 x float> combined into one float, halves at a time (4, 2, 1 lanes)."""
    for width in (4, 2, 1):
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, width), list(range(width))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, width), list(range(width, 2 * width))))
        v = combine(lo, hi)
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _lanes_sum(builder, v):
    return _lanes_reduce(builder, v, lambda a, b: builder.fadd(a, b, flags=_FAST))


def _splat(builder, x):
    """A float in all 8 lanes of a <8 x float>."""
    undef = ir.Constant(_V8, ir.Undefined)
    return builder.shuffle_vector(builder.insert_element(undef, x, ir.Constant(_I32, 0)), undef,
                                  ir.Constant(ir.VectorType(_I32, 8), [0] * 8))


def _larger(builder, a, b):
    return builder.select(builder.fcmp_ordered(">", a, b, flags=_FAST), a, b)


def _vector_recurrence(groups: int):
    """An intrinsic running the recurrence of ``_recurrence`` with the state in ``groups`` SIMD registers of 8
    float32 lanes (N = 8 * groups), written as LLVM vector code: LLVM does not vectorise the loop over the states
    itself (the state lives in memory from step to step, and the C . h sum is a horizontal reduction)."""

    @intrinsic
    def recurrence(typingctx, T, e, bb, cb, dts, us, d_skip, h, ys):
        if not (_f32_recurrence_args(e, bb, cb, dts, us, h, ys) and d_skip == types.float32
                and isinstance(T, types.Integer)):
            return None
        sig = types.void(T, e, bb, cb, dts, us, d_skip, h, ys)

        def codegen(context, builder, signature, args):
            arrays = [context.make_array(signature.args[i])(context, builder, args[i]) for i in (1, 2, 3, 4, 5, 7, 8)]
            e_a, b_a, c_a, dt_a, u_a, h_a, y_a = arrays
            rows = [builder.udiv(cgutils.unpack_tuple(builder, a.strides, 2)[0], ir.Constant(_I64, 4))
                    for a in (e_a, b_a, c_a)]  # row strides in elements

            def vec_at(arr, offset):
                return builder.bitcast(builder.gep(arr.data, [offset]), _V8.as_pointer())

            state = []
            for g in range(groups):
                slot = cgutils.alloca_once(builder, _V8)  # promoted to a register by LLVM
                builder.store(builder.load(vec_at(h_a, ir.Constant(_I64, 8 * g)), align=4), slot)
                state.append(slot)
            steps = context.cast(builder, args[0], signature.args[0], types.int64)
            d_skip = args[6]
            with cgutils.for_range(builder, steps) as loop:
                j = loop.index
                ut = builder.load(builder.gep(u_a.data, [j]))
                dtu = builder.fmul(builder.load(builder.gep(dt_a.data, [j])), ut, flags=_FAST)
                dtu = _splat(builder, dtu)
                acc = None
                for g in range(groups):
                    ev, bv, cv = (builder.load(vec_at(a, builder.add(builder.mul(j, row), ir.Constant(_I64, 8 * g))),
                                               align=4) for a, row in zip((e_a, b_a, c_a), rows, strict=True))
                    hn = builder.fadd(builder.fmul(ev, builder.load(state[g]), flags=_FAST),
                                      builder.fmul(dtu, bv, flags=_FAST), flags=_FAST)
                    builder.store(hn, state[g])
                    prod = builder.fmul(cv, hn, flags=_FAST)
                    acc = prod if acc is None else builder.fadd(acc, prod, flags=_FAST)
                yj = builder.fadd(_lanes_sum(builder, acc), builder.fmul(d_skip, ut, flags=_FAST), flags=_FAST)
                builder.store(yj, builder.gep(y_a.data, [j]))
            for g in range(groups):
                builder.store(builder.load(state[g]), vec_at(h_a, ir.Constant(_I64, 8 * g)), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return recurrence


@intrinsic
def _prefetch(typingctx, a, i0, i1, i2, i3):
    """Ask the CPU to bring the cache line of a[i0, i1, i2, i3] (a 4-D array) close: the token-layout kernels
    read the tokens of their next block of steps in scan order, which the hardware prefetchers cannot guess
    (MambaIRv2's semantic order jumps across the image)."""
    if not (isinstance(a, types.Array) and a.ndim == 4 and all(isinstance(i, types.Integer) for i in (i0, i1, i2, i3))):
        return None
    sig = types.void(a, i0, i1, i2, i3)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        index = [context.cast(builder, v, t, types.intp) for v, t in zip(args[1:], signature.args[1:], strict=True)]
        ptr = cgutils.get_item_pointer(context, builder, signature.args[0], arr, index)
        i8p = ir.IntType(8).as_pointer()
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32]),
                                            "llvm.prefetch.p0")
        # read, keep in all cache levels, data cache
        builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return sig, codegen


_recurrence_8 = _vector_recurrence(1)
_recurrence_16 = _vector_recurrence(2)


def _recurrence(T, e, bb, cb, dts, us, d_skip, h, ys):
    """T steps h = e[j] h + dts[j] us[j] bb[j], ys[j] = cb[j] . h + d_skip us[j], h (N,) updated in place."""
    zero = d_skip - d_skip
    for j in range(T):
        ut = us[j]
        dtu = dts[j] * ut
        acc = zero
        for n in range(h.shape[0]):
            hn = e[j, n] * h[n] + dtu * bb[j, n]
            h[n] = hn
            acc += cb[j, n] * hn
        ys[j] = acc + d_skip * ut


@overload(_recurrence, inline="always", fastmath=True)
def _recurrence_overload(T, e, bb, cb, dts, us, d_skip, h, ys):
    if _f32_recurrence_args(e, bb, cb, dts, us, h, ys):
        def vectorised(T, e, bb, cb, dts, us, d_skip, h, ys):  # float32: 8 or 16 states in SIMD registers
            if h.shape[0] == 8:
                _recurrence_8(T, e, bb, cb, dts, us, d_skip, h, ys)
            elif h.shape[0] == 16:
                _recurrence_16(T, e, bb, cb, dts, us, d_skip, h, ys)
            else:
                _recurrence_loop(T, e, bb, cb, dts, us, d_skip, h, ys)
        return vectorised
    return lambda T, e, bb, cb, dts, us, d_skip, h, ys: _recurrence_loop(T, e, bb, cb, dts, us, d_skip, h, ys)


_recurrence_loop = numba.njit(inline="always", fastmath=True, cache=True)(_recurrence)


def _f32_adjoint_args(e, hb, bb, cb, dcb, dbb, dts, us, gys, a_row, g, dA, dus, ddts) -> bool:
    return (all(_f32_c_array(a, 2) for a in (e, hb, bb, cb, dcb, dbb))
            and all(_f32_c_array(a, 1) for a in (dts, us, gys, a_row, g, dA, dus, ddts)))


def _vector_adjoint(groups: int):
    """An intrinsic running ``_adjoint`` with the adjoint state and the dA sums in ``groups`` SIMD registers of
    8 float32 lanes (N = 8 * groups), as ``_vector_recurrence`` does for the forward recurrence."""

    @intrinsic
    def adjoint(typingctx, T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts):
        if not (_f32_adjoint_args(e, hb, bb, cb, dcb, dbb, dts, us, gys, a_row, g, dA, dus, ddts)
                and d_skip == types.float32 and isinstance(T, types.Integer)):
            return None
        sig = types.void(T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts)

        def codegen(context, builder, signature, args):
            arr = {name: context.make_array(signature.args[i])(context, builder, args[i]) for i, name in
                   ((1, "e"), (2, "hb"), (3, "bb"), (4, "cb"), (5, "dts"), (6, "us"), (7, "gys"), (8, "a"),
                    (10, "g"), (11, "dA"), (12, "dcb"), (13, "dbb"), (14, "dus"), (15, "ddts"))}
            rows = {name: builder.udiv(cgutils.unpack_tuple(builder, arr[name].strides, 2)[0], ir.Constant(_I64, 4))
                    for name in ("e", "hb", "bb", "cb", "dcb", "dbb")}  # row strides in elements

            def vec_ptr(name, j, grp):  # the grp-th 8 lanes of row j (j None: a 1-D array)
                offset = ir.Constant(_I64, 8 * grp)
                if j is not None:
                    offset = builder.add(builder.mul(j, rows[name]), offset)
                return builder.bitcast(builder.gep(arr[name].data, [offset]), _V8.as_pointer())

            def scalar(name, j):
                return builder.load(builder.gep(arr[name].data, [j]))

            def fmul(a, b):
                return builder.fmul(a, b, flags=_FAST)

            def fadd(a, b):
                return builder.fadd(a, b, flags=_FAST)

            state, sums, a_vec = [], [], []
            for grp in range(groups):
                for slots, name in ((state, "g"), (sums, "dA")):
                    slot = cgutils.alloca_once(builder, _V8)  # promoted to a register by LLVM
                    builder.store(builder.load(vec_ptr(name, None, grp), align=4), slot)
                    slots.append(slot)
                a_vec.append(builder.load(vec_ptr("a", None, grp), align=4))
            steps = context.cast(builder, args[0], signature.args[0], types.int64)
            one = ir.Constant(_I64, 1)
            with cgutils.for_range(builder, steps) as loop:
                j = builder.sub(builder.sub(steps, one), loop.index)  # backwards in time
                dtt, ut, dyt = scalar("dts", j), scalar("us", j), scalar("gys", j)
                dyt_v, dtt_v, dtu_v = (_splat(builder, x) for x in (dyt, dtt, fmul(dtt, ut)))
                s1 = s2 = None
                for grp in range(groups):
                    e_v = builder.load(vec_ptr("e", j, grp), align=4)
                    h_prev = builder.load(vec_ptr("hb", j, grp), align=4)
                    h_next = builder.load(vec_ptr("hb", builder.add(j, one), grp), align=4)
                    b_v = builder.load(vec_ptr("bb", j, grp), align=4)
                    c_v = builder.load(vec_ptr("cb", j, grp), align=4)
                    dc_ptr, db_ptr = vec_ptr("dcb", j, grp), vec_ptr("dbb", j, grp)
                    builder.store(fadd(builder.load(dc_ptr, align=4), fmul(dyt_v, h_next)), dc_ptr, align=4)
                    gn = fadd(builder.load(state[grp]), fmul(dyt_v, c_v))
                    gd = fmul(fmul(gn, h_prev), e_v)
                    gb, ga = fmul(gn, b_v), fmul(gd, a_vec[grp])
                    s1 = gb if s1 is None else fadd(s1, gb)
                    s2 = ga if s2 is None else fadd(s2, ga)
                    builder.store(fadd(builder.load(sums[grp]), fmul(gd, dtt_v)), sums[grp])
                    builder.store(fadd(builder.load(db_ptr, align=4), fmul(gn, dtu_v)), db_ptr, align=4)
                    builder.store(fmul(gn, e_v), state[grp])
                s1, s2 = _lanes_sum(builder, s1), _lanes_sum(builder, s2)
                builder.store(fadd(fmul(dyt, args[9]), fmul(dtt, s1)), builder.gep(arr["dus"].data, [j]))
                builder.store(fadd(s2, fmul(ut, s1)), builder.gep(arr["ddts"].data, [j]))
            for grp in range(groups):
                builder.store(builder.load(state[grp]), vec_ptr("g", None, grp), align=4)
                builder.store(builder.load(sums[grp]), vec_ptr("dA", None, grp), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return adjoint


_adjoint_8 = _vector_adjoint(1)
_adjoint_16 = _vector_adjoint(2)


def _adjoint(T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts):
    """The adjoint recurrence of one channel over a block of T steps, from the last to the first: with hb
    (T + 1, N) the states before each step and ``e`` exp(dt A), the adjoint state g (N,) (in place) takes
    each step's output gradient gys[j] through C; dA (N,) accumulates, dcb and dbb (T, N) get the B and C
    gradients added, dus and ddts (T,) get the u and dt gradients."""
    zero = d_skip - d_skip
    for i in range(T):
        j = T - 1 - i
        dtt, ut, dyt = dts[j], us[j], gys[j]
        dtu = dtt * ut
        s1 = zero
        s2 = zero
        for n in range(g.shape[0]):
            dcb[j, n] += dyt * hb[j + 1, n]
            gn = g[n] + dyt * cb[j, n]
            gd = gn * hb[j, n] * e[j, n]
            s1 += gn * bb[j, n]
            s2 += gd * a_row[n]
            dA[n] += gd * dtt
            dbb[j, n] += gn * dtu
            g[n] = gn * e[j, n]
        dus[j] = dyt * d_skip + dtt * s1
        ddts[j] = s2 + ut * s1


@overload(_adjoint, inline="always", fastmath=True)
def _adjoint_overload(T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts):
    if _f32_adjoint_args(e, hb, bb, cb, dcb, dbb, dts, us, gys, a_row, g, dA, dus, ddts):
        def vectorised(T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts):
            if g.shape[0] == 8:
                _adjoint_8(T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts)
            elif g.shape[0] == 16:
                _adjoint_16(T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts)
            else:
                _adjoint_loop(T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts)
        return vectorised
    return lambda T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts: _adjoint_loop(
        T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts)


_adjoint_loop = numba.njit(inline="always", fastmath=True, cache=True)(_adjoint)


@numba.njit(inline="always", fastmath=True, cache=True)
def _channel_block(T, dts, us, a_row, d_skip, bb, cb, e, h, ys):
    """T steps of one channel from its state ``h`` (N,), updated in place: ``e`` (>= T, N) gets exp(dt A), then
    h = e h + dt u B and ys = C . h + D u, with the block's B and C in ``bb``/``cb`` (time before state); in
    float32 with N = 8 or 16 the recurrence runs with the state in SIMD registers (``_vector_recurrence``)."""
    N = h.shape[0]
    for j in range(T):
        dtj = dts[j]
        for n in range(N):
            e[j, n] = fast_exp(dtj * a_row[n])
    _recurrence(T, e, bb, cb, dts, us, d_skip, h, ys)


@numba.njit(parallel=True, cache=True, fastmath=True)
def scan_tokens_forward(u, dt, A, B, C, C_off, has_off, Dv, order, chunk, store_ckpt, parts, y, h_last, h_ckpt):
    """Heads of a multi-head scan read and written in token-major layout, each along its own scan order.

    u, dt, y: (Bt, L, K, d) (any strides); B, C: (Bt, L, K, N) by token; ``C_off`` (Bt, L, K, N) by scan
    position, added to C when ``has_off``; A (K*d, N), Dv (K*d,); ``order`` (1 or Bt, K, L) int64: head k
    scans the tokens order[., k, 0], order[., k, 1], ... Step t of head k reads token order[k, t] and its
    output goes back to that token. Tasks (batch, head, channel slice); per block of ``chunk`` steps the
    block's tokens are gathered once into small buffers shared by the task's channels.
    ``h_ckpt`` (Bt, K*d, ceil(L / chunk), N), ``h_last`` (Bt, K*d, N) as in ``scan_forward``.
    """
    nb, L, K, dh = u.shape
    N = A.shape[1]
    shared_order = order.shape[0] == 1
    for task in numba.prange(nb * K * parts):
        bi, ki, c0, nc = _task_slice(task, K, parts, dh)
        ob = 0 if shared_order else bi
        hs, e, bb, cb, ub, db, yb = _token_buffers(nc, N, chunk, u)
        for t0 in range(0, L, chunk):
            T = min(L, t0 + chunk) - t0
            for j in range(T):
                tok = order[ob, ki, t0 + j]
                for n in range(N):
                    bb[j, n] = B[bi, tok, ki, n]
                    cb[j, n] = C[bi, tok, ki, n]
                if has_off:
                    for n in range(N):
                        cb[j, n] += C_off[bi, t0 + j, ki, n]
                for c in range(nc):
                    ub[c, j] = u[bi, tok, ki, c0 + c]
                    db[c, j] = dt[bi, tok, ki, c0 + c]
            for c in range(nc):
                di = ki * dh + c0 + c
                if store_ckpt:
                    for n in range(N):
                        h_ckpt[bi, di, t0 // chunk, n] = hs[c, n]
                _channel_block(T, db[c], ub[c], A[di], Dv[di], bb, cb, e, hs[c], yb[c])
            for j in range(T):
                tok = order[ob, ki, t0 + j]
                for c in range(nc):
                    y[bi, tok, ki, c0 + c] = yb[c, j]
        for c in range(nc):
            for n in range(N):
                h_last[bi, ki * dh + c0 + c, n] = hs[c, n]


@numba.njit(parallel=True, cache=True, fastmath=True)
def scan_tokens_backward(u, dt, A, B, C, C_off, has_off, Dv, order, chunk, h_ckpt, dy, parts, du, ddt, dA_acc,
                         dD, dB_parts, dC_parts):
    """Gradients of ``scan_tokens_forward``: du, ddt (Bt, L, K, d) by token; dA_acc (Bt, K*d, N) and dD
    (Bt, K*d) float64 sums; dB_parts (Bt, parts, L, K, N) by token and dC_parts (Bt, parts, L, K, N) by
    token (the gradient of C_off is dC by scan position, which the caller gathers), summed over parts by
    the caller. Every (batch, head) writes its own rows of the parts, so nothing needs zeroing."""
    nb, L, K, dh = u.shape
    N = A.shape[1]
    n_chunks = h_ckpt.shape[2]
    shared_order = order.shape[0] == 1
    for task in numba.prange(nb * K * parts):
        bi = task // (K * parts)
        rest = task % (K * parts)
        ki = rest // parts
        p = rest % parts
        c0 = (p * dh) // parts
        nc = ((p + 1) * dh) // parts - c0
        ob = 0 if shared_order else bi
        h_buf = np.empty((chunk + 1, N), dtype=u.dtype)
        e_buf = np.empty((chunk, N), dtype=u.dtype)
        bb = np.empty((chunk, N), dtype=u.dtype)
        cb = np.empty((chunk, N), dtype=u.dtype)
        dbb = np.empty((chunk, N), dtype=u.dtype)
        dcb = np.empty((chunk, N), dtype=u.dtype)
        ub = np.empty((nc, chunk), dtype=u.dtype)
        db = np.empty((nc, chunk), dtype=u.dtype)
        gy = np.empty((nc, chunk), dtype=u.dtype)
        dub = np.empty((nc, chunk), dtype=u.dtype)
        ddb = np.empty((nc, chunk), dtype=u.dtype)
        gs = np.zeros((nc, N), dtype=u.dtype)
        dA_rows = np.zeros((nc, N), dtype=np.float64)
        dD_rows = np.zeros(nc, dtype=np.float64)
        dA_chunk = np.empty(N, dtype=u.dtype)
        for c_idx in range(n_chunks - 1, -1, -1):
            t0 = c_idx * chunk
            T = min(L, t0 + chunk) - t0
            for j in range(T):
                tok = order[ob, ki, t0 + j]
                for n in range(N):
                    bb[j, n] = B[bi, tok, ki, n]
                    cb[j, n] = C[bi, tok, ki, n]
                    dbb[j, n] = 0.0
                    dcb[j, n] = 0.0
                if has_off:
                    for n in range(N):
                        cb[j, n] += C_off[bi, t0 + j, ki, n]
                for c in range(nc):
                    ub[c, j] = u[bi, tok, ki, c0 + c]
                    db[c, j] = dt[bi, tok, ki, c0 + c]
                    gy[c, j] = dy[bi, tok, ki, c0 + c]
            for c in range(nc):
                di = ki * dh + c0 + c
                g = gs[c]
                dA_row = dA_rows[c]
                d_skip = Dv[di]
                dD_acc = Dv[di] * 0  # chunk sums in the compute dtype (SIMD), added to float64 rows per chunk
                for n in range(N):
                    dA_chunk[n] = 0.0
                for n in range(N):
                    h_buf[0, n] = h_ckpt[bi, di, c_idx, n]
                for j in range(T):
                    dtj = db[c, j]
                    for n in range(N):
                        e_buf[j, n] = fast_exp(dtj * A[di, n])
                for j in range(T):
                    dtu = db[c, j] * ub[c, j]
                    for n in range(N):
                        h_buf[j + 1, n] = e_buf[j, n] * h_buf[j, n] + dtu * bb[j, n]
                _adjoint(T, e_buf, h_buf, bb, cb, db[c], ub[c], gy[c], A[di], d_skip, g, dA_chunk, dcb, dbb,
                         dub[c], ddb[c])
                for j in range(T):
                    dD_acc += gy[c, j] * ub[c, j]
                dD_rows[c] += dD_acc
                for n in range(N):
                    dA_row[n] += dA_chunk[n]
            for j in range(T):
                tok = order[ob, ki, t0 + j]
                for c in range(nc):
                    du[bi, tok, ki, c0 + c] = dub[c, j]
                    ddt[bi, tok, ki, c0 + c] = ddb[c, j]
                for n in range(N):
                    dB_parts[bi, p, tok, ki, n] = dbb[j, n]
                    dC_parts[bi, p, tok, ki, n] = dcb[j, n]
        for c in range(nc):
            di = ki * dh + c0 + c
            for n in range(N):
                dA_acc[bi, di, n] = dA_rows[c, n]
            dD[bi, di] = dD_rows[c]


# --------------------------------------------------------------------------- inference: projections inside


@numba.njit(inline="always", fastmath=True, cache=True)
def _softplus_f32(x):
    # softplus(x) = max(x, 0) + log(1 + e), e = exp(-|x|) in (0, 1]; log(1 + e) = 2 atanh(s), s = e / (2 + e) in
    # (0, 1/3], by its odd series to s^17 (truncation below 3e-10 relative): no log call, so the loop vectorises
    e = _exp_f32(-abs(x))
    s = e / (np.float32(2.0) + e)
    s2 = s * s
    p = np.float32(1.0 / 15.0) + s2 * np.float32(1.0 / 17.0)
    p = np.float32(1.0 / 13.0) + s2 * p
    p = np.float32(1.0 / 11.0) + s2 * p
    p = np.float32(1.0 / 9.0) + s2 * p
    p = np.float32(1.0 / 7.0) + s2 * p
    p = np.float32(1.0 / 5.0) + s2 * p
    p = np.float32(1.0 / 3.0) + s2 * p
    p = np.float32(1.0) + s2 * p
    return max(x, np.float32(0.0)) + np.float32(2.0) * s * p


def fast_softplus(x):
    """log(1 + exp(x)): the vectorisable float32 version for float32, libm for float64."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@overload(fast_softplus, inline="always")
def _fast_softplus_overload(x):
    if x == types.float32:
        return lambda x: _softplus_f32(x)
    return lambda x: max(x, 0.0) + math.log1p(math.exp(-abs(x)))


@numba.njit(parallel=True, cache=True, fastmath=True)
def scan_tokens_infer(u, silu_in, xd, has_xd, WxT, Wdt, dt_bias, A, C_off, has_off, Dv, order, chunk, parts, y):
    """``scan_tokens_forward`` for inference, with the head's projections computed in the kernel.

    u (Bt, L, K, d), any strides, passed through silu first when ``silu_in``; the per-token projections
    (dt_r, B, C) = x_proj(u) of each head are read from ``xd`` (Bt, L, K, R + 2N) when ``has_xd``, else computed
    here from ``WxT`` (K, d, R + 2N) (the x projection transposed; needs ``parts == 1``, since every channel of
    the head enters B and C); dt = softplus(Wdt[k] @ dt_r + dt_bias) with ``Wdt`` (K, d, R), ``dt_bias`` (K*d,).
    A (K*d, N), C_off/has_off, Dv, order as in ``scan_tokens_forward``; y (Bt, L, K, d). No states are kept.

    (A version with the SIMD lanes over channels instead of states, B and C copied to every channel of a head,
    was tried: its recurrence alone is up to 1.6x faster for 32+ channels, but the copies cost more than that
    saves, 1.1-2.2x slower in all.)
    """
    nb, L, K, dh = u.shape
    N = A.shape[1]
    R = Wdt.shape[2]
    P = R + 2 * N
    # the states run in a multiple of 8 lanes (N = 10 -> 16): A = B = C = 0 in the added lanes keeps their
    # states at zero, and the exp(dt A) loop has no remainder (1.4x faster per step for EAMambaSR's N = 10)
    Np = (N + 7) // 8 * 8
    shared_order = order.shape[0] == 1
    for task in numba.prange(nb * K * parts):
        bi, ki, c0, nc = _task_slice(task, K, parts, dh)
        ob = 0 if shared_order else bi
        hs, e, bb, cb, ub, db, yb = _token_buffers(nc, Np, chunk, y)
        bb[:] = 0
        cb[:] = 0
        ap = np.zeros((nc, Np), dtype=y.dtype)
        for c in range(nc):
            for n in range(N):
                ap[c, n] = A[ki * dh + c0 + c, n]
        ua = np.empty(dh, dtype=y.dtype)
        xr = np.empty(P, dtype=y.dtype)
        one = np.ones(1, dtype=y.dtype)[0]
        for t0 in range(0, L, chunk):
            T = min(L, t0 + chunk) - t0
            for j in range(T):
                tok = order[ob, ki, t0 + j]
                _prefetch(y, bi, tok, ki, c0)  # written after the block; the next block's inputs are read next
                if t0 + chunk + j < L:
                    nxt = order[ob, ki, t0 + chunk + j]
                    _prefetch(u, bi, nxt, ki, c0 if has_xd else 0)
                    _prefetch(u, bi, nxt, ki, c0 + nc - 1 if has_xd else dh - 1)
                    if has_xd:
                        _prefetch(xd, bi, nxt, ki, 0)
                        _prefetch(xd, bi, nxt, ki, P - 1)
                if has_xd:
                    for q in range(P):
                        xr[q] = xd[bi, tok, ki, q]
                    for c in range(nc):
                        v = u[bi, tok, ki, c0 + c]
                        if silu_in:
                            v = v / (one + fast_exp(-v))
                        ub[c, j] = v
                else:
                    for i in range(dh):
                        v = u[bi, tok, ki, i]
                        if silu_in:
                            v = v / (one + fast_exp(-v))
                        ua[i] = v
                    for q in range(P):
                        xr[q] = 0
                    for i in range(dh):
                        vi = ua[i]
                        for q in range(P):
                            xr[q] += WxT[ki, i, q] * vi
                    for c in range(nc):
                        ub[c, j] = ua[c0 + c]
                for n in range(N):
                    bb[j, n] = xr[R + n]
                    cb[j, n] = xr[R + N + n]
                if has_off:
                    for n in range(N):
                        cb[j, n] += C_off[bi, t0 + j, ki, n]
                for c in range(nc):
                    s = dt_bias[ki * dh + c0 + c]
                    for r in range(R):
                        s += Wdt[ki, c0 + c, r] * xr[r]
                    db[c, j] = s
            for c in range(nc):
                di = ki * dh + c0 + c
                for j in range(T):
                    db[c, j] = fast_softplus(db[c, j])
                _channel_block(T, db[c], ub[c], ap[c], Dv[di], bb, cb, e, hs[c], yb[c])
            for j in range(T):
                tok = order[ob, ki, t0 + j]
                for c in range(nc):
                    y[bi, tok, ki, c0 + c] = yb[c, j]


@intrinsic
def _max_f32(typingctx, x):
    """The largest element of a float32 C-contiguous vector whose length is a multiple of 8, in SIMD lanes (LLVM
    does not vectorise a max reduction written as a loop)."""
    if not _f32_c_array(x, 1):
        return None
    sig = types.float32(x)

    def codegen(context, builder, signature, args):
        arr = context.make_array(signature.args[0])(context, builder, args[0])
        n = cgutils.unpack_tuple(builder, arr.shape, 1)[0]
        best = cgutils.alloca_once(builder, _V8)

        def chunk(i):
            return builder.load(builder.bitcast(builder.gep(arr.data, [builder.mul(i, ir.Constant(_I64, 8))]),
                                                _V8.as_pointer()), align=4)

        builder.store(chunk(ir.Constant(_I64, 0)), best)
        with cgutils.for_range(builder, builder.udiv(n, ir.Constant(_I64, 8))) as loop:
            builder.store(_larger(builder, chunk(loop.index), builder.load(best)), best)
        return _lanes_reduce(builder, builder.load(best), lambda a, b: _larger(builder, a, b))

    return sig, codegen


def _row_max(x):
    """max(x) for a non-empty 1-D array."""
    m = x[0]
    for j in range(x.shape[0]):
        m = max(m, x[j])
    return m


@overload(_row_max, inline="always")
def _row_max_overload(x):
    if _f32_c_array(x, 1):
        def vectorised(x):  # float32, contiguous: whole 8-lane chunks in SIMD lanes
            return _max_f32(x) if x.shape[0] % 8 == 0 else _row_max_loop(x)
        return vectorised
    return lambda x: _row_max_loop(x)


_row_max_loop = numba.njit(inline="always", fastmath=True, cache=True)(_row_max)


@numba.njit(parallel=True, cache=True, fastmath=True)
def window_attention(q, k, v, bias, scale, out):
    """softmax(q kᵀ scale + bias) v per (window, head): q, k, v, out (W, heads, n, d), any strides; bias
    (1, heads, n, n). Needs n % 4 == 0 and d % 4 == 0. A task holds one window and head, with kᵀ and vᵀ copied
    to (d, n) buffers. Four query rows are computed together, their scores in a (4, n) buffer: q·kᵀ four
    channels per pass over the keys (the bias in the first pass), the row maximum in SIMD lanes (``_row_max``),
    exp and sum, then all four rows against four value channels per pass (16 sums), normalised at the end."""
    nw, nh, n, d = q.shape
    for task in numba.prange(nw * nh):
        wi = task // nh
        hi = task % nh
        kT = np.empty((d, n), dtype=out.dtype)
        vT = np.empty((d, n), dtype=out.dtype)
        for j in range(n):
            for c in range(d):
                kT[c, j] = k[wi, hi, j, c]
                vT[c, j] = v[wi, hi, j, c]
        s = np.empty((4, n), dtype=out.dtype)
        qs = np.empty((4, d), dtype=out.dtype)
        inv = np.empty(4, dtype=out.dtype)
        zero = scale - scale
        for i0 in range(0, n, 4):
            for r in range(4):
                for c in range(d):
                    qs[r, c] = q[wi, hi, i0 + r, c] * scale
            for c in range(0, d, 4):
                a0, a1, a2, a3 = qs[0, c], qs[0, c + 1], qs[0, c + 2], qs[0, c + 3]
                b0, b1, b2, b3 = qs[1, c], qs[1, c + 1], qs[1, c + 2], qs[1, c + 3]
                e0, e1, e2, e3 = qs[2, c], qs[2, c + 1], qs[2, c + 2], qs[2, c + 3]
                f0, f1, f2, f3 = qs[3, c], qs[3, c + 1], qs[3, c + 2], qs[3, c + 3]
                if c == 0:
                    for j in range(n):
                        k0, k1, k2, k3 = kT[0, j], kT[1, j], kT[2, j], kT[3, j]
                        s[0, j] = bias[0, hi, i0, j] + a0 * k0 + a1 * k1 + a2 * k2 + a3 * k3
                        s[1, j] = bias[0, hi, i0 + 1, j] + b0 * k0 + b1 * k1 + b2 * k2 + b3 * k3
                        s[2, j] = bias[0, hi, i0 + 2, j] + e0 * k0 + e1 * k1 + e2 * k2 + e3 * k3
                        s[3, j] = bias[0, hi, i0 + 3, j] + f0 * k0 + f1 * k1 + f2 * k2 + f3 * k3
                else:
                    for j in range(n):
                        k0, k1, k2, k3 = kT[c, j], kT[c + 1, j], kT[c + 2, j], kT[c + 3, j]
                        s[0, j] += a0 * k0 + a1 * k1 + a2 * k2 + a3 * k3
                        s[1, j] += b0 * k0 + b1 * k1 + b2 * k2 + b3 * k3
                        s[2, j] += e0 * k0 + e1 * k1 + e2 * k2 + e3 * k3
                        s[3, j] += f0 * k0 + f1 * k1 + f2 * k2 + f3 * k3
            for r in range(4):
                m = _row_max(s[r])
                total = zero
                for j in range(n):
                    p = fast_exp(s[r, j] - m)
                    s[r, j] = p
                    total += p
                inv[r] = (scale / scale) / total
            for c in range(0, d, 4):
                a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = e0 = e1 = e2 = e3 = f0 = f1 = f2 = f3 = zero
                for j in range(n):
                    v0, v1, v2, v3 = vT[c, j], vT[c + 1, j], vT[c + 2, j], vT[c + 3, j]
                    p0, p1, p2, p3 = s[0, j], s[1, j], s[2, j], s[3, j]
                    a0 += p0 * v0
                    a1 += p0 * v1
                    a2 += p0 * v2
                    a3 += p0 * v3
                    b0 += p1 * v0
                    b1 += p1 * v1
                    b2 += p1 * v2
                    b3 += p1 * v3
                    e0 += p2 * v0
                    e1 += p2 * v1
                    e2 += p2 * v2
                    e3 += p2 * v3
                    f0 += p3 * v0
                    f1 += p3 * v1
                    f2 += p3 * v2
                    f3 += p3 * v3
                for r, (o0, o1, o2, o3) in enumerate(((a0, a1, a2, a3), (b0, b1, b2, b3), (e0, e1, e2, e3),
                                                      (f0, f1, f2, f3))):
                    out[wi, hi, i0 + r, c] = o0 * inv[r]
                    out[wi, hi, i0 + r, c + 1] = o1 * inv[r]
                    out[wi, hi, i0 + r, c + 2] = o2 * inv[r]
                    out[wi, hi, i0 + r, c + 3] = o3 * inv[r]

