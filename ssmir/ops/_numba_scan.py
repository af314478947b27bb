"""Compiled CPU kernels (numba) for the selective scan, forward and backward.

The state of each channel lives in a small local array while the sequence is read once.
Both passes are called once per time block with ``exp(dt * A)`` precomputed by torch's vectorised exp
(the compiled loops then only multiply and add). The forward pass (``scan_forward_chunk``) stores the
state at the start of every ``chunk`` steps; the backward pass (``scan_backward_block``, blocks last to
first) recomputes each chunk from its stored state and walks it in reverse, so the memory kept
between the two passes is ``(B, D, L / chunk, N)``, a fraction of the inputs.

Array layouts (time slices of C-contiguous arrays, one float dtype, float32 or float64):
    u, delta, z, dy: (B, D, L)      A: (D, N)      D, delta_bias: (D,)
    Bt, Ct: (B, G, L, N)  -- B and C with time before state, so the inner loop is contiguous
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(parallel=True, cache=True, fastmath=True)
def scan_backward_block(u, dt, dt_scale, dA, A, Bt, Ct, Dv, z, has_z, chunk, h_ckpt, dy, parts, g_carry,
                        du, ddelta, dz, dA_acc, dD, ddbias, dB_parts, dC_parts):
    """Gradients of the scan over one time block, walked backwards; blocks are called last to first.

    The block's slices (T steps, T a multiple of ``chunk`` except for the last block): ``u``, ``dt`` (the
    step after bias and softplus), ``dt_scale`` (d dt / d delta), ``z``, ``dy`` and the outputs ``du``,
    ``ddelta``, ``dz`` are (B, D, T); ``dA = exp(dt * A)`` is (B, D, T, N), precomputed by torch's vectorised
    exp; ``h_ckpt`` (B, D, T / chunk, N) holds the state at the start of each chunk of the block.
    ``g_carry`` (B, D, N) is dLoss/dh at the block's end, updated to its start. Work is split into
    ``(B, G, parts)`` tasks; each owns a slice of the channels of one group and adds its share of dB/dC to
    ``dB_parts``/``dC_parts`` (B, G, parts, T, N), summed by the caller. ``dA_acc`` (B, D, N), ``dD`` and
    ``ddbias`` (B, D) are float64 sums over time that each task adds to in rows it alone owns.
    """
    nb, nd, T = u.shape
    N = A.shape[1]
    G = Bt.shape[1]
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
        for di in range(d_start, d_stop):
            a = A[di]
            d_skip = Dv[di]
            g = g_carry[bi, di]  # dLoss / dh_t, carried backwards in time
            dA_row = dA_acc[bi, di]
            dD_acc = 0.0
            dbias_acc = 0.0
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * chunk
                t1 = min(T, t0 + chunk)
                for n in range(N):
                    h_buf[0, n] = h_ckpt[bi, di, c, n]
                for t in range(t0, t1):
                    j = t - t0
                    dtu = dt[bi, di, t] * u[bi, di, t]
                    for n in range(N):
                        h_buf[j + 1, n] = dA[bi, di, t, n] * h_buf[j, n] + dtu * Bt[bi, gi, t, n]
                for t in range(t1 - 1, t0 - 1, -1):
                    j = t - t0
                    dtt = dt[bi, di, t]
                    ut = u[bi, di, t]
                    dyt = dy[bi, di, t]
                    if has_z:
                        y0 = d_skip * ut
                        for n in range(N):
                            y0 += Ct[bi, gi, t, n] * h_buf[j + 1, n]
                        zt = z[bi, di, t]
                        sig = 1.0 / (1.0 + math.exp(-zt))
                        dz[bi, di, t] = dyt * y0 * sig * (1.0 + zt * (1.0 - sig))
                        dy0 = dyt * zt * sig
                    else:
                        dy0 = dyt
                    dD_acc += dy0 * ut
                    du_t = dy0 * d_skip
                    ddt = 0.0
                    for n in range(N):
                        b_tn = Bt[bi, gi, t, n]
                        dC_parts[bi, gi, p, t, n] += dy0 * h_buf[j + 1, n]
                        gn = g[n] + dy0 * Ct[bi, gi, t, n]
                        e = dA[bi, di, t, n]
                        gd = gn * h_buf[j, n] * e  # dLoss / d(dt * A[n])
                        ddt += gd * a[n] + gn * b_tn * ut
                        dA_row[n] += gd * dtt
                        dB_parts[bi, gi, p, t, n] += gn * dtt * ut
                        du_t += gn * dtt * b_tn
                        g[n] = gn * e
                    du[bi, di, t] = du_t
                    ddt = ddt * dt_scale[bi, di, t]
                    ddelta[bi, di, t] = ddt
                    dbias_acc += ddt
            dD[bi, di] += dD_acc
            ddbias[bi, di] += dbias_acc


@numba.njit(parallel=True, cache=True, fastmath=True)
def scan_forward_chunk(u, dt, dA, Bt, Ct, Dv, z, has_z, t0, ckpt_every, y, h, h_ckpt):
    """Forward over one time chunk with ``dt`` (B, D, T) and ``dA = exp(dt * A)`` (B, D, T, N) precomputed.

    ``u``, ``z``, ``y`` are the chunk's (B, D, T) slices; ``h`` (B, D, N) carries the state in and out;
    the state before every global step ``t0 + j`` divisible by ``ckpt_every`` goes to ``h_ckpt``.
    """
    nb, nd, T = u.shape
    N = dA.shape[3]
    G = Bt.shape[1]
    dpg = nd // G
    for task in numba.prange(nb * nd):
        bi = task // nd
        di = task % nd
        gi = di // dpg
        hs = h[bi, di]
        d_skip = Dv[di]
        for j in range(T):
            t = t0 + j
            if t % ckpt_every == 0:
                h_ckpt[bi, di, t // ckpt_every, :] = hs
            ut = u[bi, di, j]
            dtu = dt[bi, di, j] * ut
            acc = dtu * 0
            for n in range(N):
                hn = dA[bi, di, j, n] * hs[n] + dtu * Bt[bi, gi, j, n]
                hs[n] = hn
                acc += Ct[bi, gi, j, n] * hn
            yt = acc + d_skip * ut
            if has_z:
                zt = z[bi, di, j]
                yt = yt * zt / (1.0 + math.exp(-zt))
            y[bi, di, j] = yt
