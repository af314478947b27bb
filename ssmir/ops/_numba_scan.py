"""Compiled CPU kernels (numba) for the selective scan, forward and backward.

The state of each channel lives in a small local array while the sequence is read once.
The forward pass (``scan_forward_chunk``, called once per time chunk with ``exp(dt * A)`` precomputed by
torch's vectorised exp) stores the state at the start of every ``chunk`` steps; the backward pass
recomputes each chunk from its stored state and walks it in reverse, so the memory kept
between the two passes is ``(B, D, L / chunk, N)``, a fraction of the inputs.

Array layouts (all C-contiguous, one float dtype, float32 or float64):
    u, delta, z, dy: (B, D, L)      A: (D, N)      D, delta_bias: (D,)
    Bt, Ct: (B, G, L, N)  -- B and C with time before state, so the inner loop is contiguous
"""

from __future__ import annotations

import math

import numba
import numpy as np

_SOFTPLUS_THRESHOLD = 20.0  # torch.nn.functional.softplus and mamba-ssm use the same cut-off


@numba.njit(cache=True, inline="always")
def _dt_at(delta, dbias, bi, di, t, softplus):
    x = delta[bi, di, t] + dbias[di]
    if softplus and x <= _SOFTPLUS_THRESHOLD:
        return math.log1p(math.exp(x))
    return x


@numba.njit(parallel=True, cache=True)
def scan_backward(u, delta, A, Bt, Ct, Dv, z, dbias, softplus, has_z, chunk, h_ckpt, dy, parts,
                  du, ddelta, dz, dA, dD, ddbias, dB_parts, dC_parts):
    """Gradients of the scan.

    Work is split into ``(B, G, parts)`` tasks; each owns a slice of the channels of one group and
    writes its share of dB/dC into ``dB_parts``/``dC_parts`` (B, G, parts, L, N), summed by the caller.
    dA (D, N), dD (D,), ddbias (D,) are float64 sums over batch and time, written per task
    into rows it alone owns, so they are accumulated as (B, D, ...) by the caller.
    """
    nb, nd, L = u.shape
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
        a_buf = np.empty((chunk, N), dtype=u.dtype)  # exp(dt * A) of each step
        dt_buf = np.empty(chunk, dtype=u.dtype)
        g = np.empty(N, dtype=u.dtype)  # dLoss / dh_t, carried backwards in time
        dA_acc = np.empty(N, dtype=np.float64)
        for di in range(d_start, d_stop):
            a = A[di]
            d_skip = Dv[di]
            g[:] = 0.0
            dA_acc[:] = 0.0
            dD_acc = 0.0
            dbias_acc = 0.0
            for c in range(n_chunks - 1, -1, -1):
                t0 = c * chunk
                t1 = min(L, t0 + chunk)
                h_buf[0, :] = h_ckpt[bi, di, c, :]
                for t in range(t0, t1):
                    j = t - t0
                    dt = _dt_at(delta, dbias, bi, di, t, softplus)
                    dt_buf[j] = dt
                    dtu = dt * u[bi, di, t]
                    for n in range(N):
                        e = math.exp(dt * a[n])
                        a_buf[j, n] = e
                        h_buf[j + 1, n] = e * h_buf[j, n] + dtu * Bt[bi, gi, t, n]
                for t in range(t1 - 1, t0 - 1, -1):
                    j = t - t0
                    dt = dt_buf[j]
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
                        e = a_buf[j, n]
                        gd = gn * h_buf[j, n] * e  # dLoss / d(dt * A[n])
                        ddt += gd * a[n] + gn * b_tn * ut
                        dA_acc[n] += gd * dt
                        dB_parts[bi, gi, p, t, n] += gn * dt * ut
                        du_t += gn * dt * b_tn
                        g[n] = gn * e
                    du[bi, di, t] = du_t
                    if softplus:
                        x = delta[bi, di, t] + dbias[di]
                        if x <= _SOFTPLUS_THRESHOLD:
                            ddt = ddt / (1.0 + math.exp(-x))
                    ddelta[bi, di, t] = ddt
                    dbias_acc += ddt
            dA[bi, di, :] = dA_acc
            dD[bi, di] = dD_acc
            ddbias[bi, di] = dbias_acc


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
