"""The selective scan (Mamba's S6 recurrence) with interchangeable backends.

Semantics are those of mamba-ssm's ``selective_scan_fn``::

    delta <- softplus(delta + delta_bias)        (bias and softplus when asked)
    h_t    = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t    = sum_n C_{t,n} h_{t,n} + D * u_t
    y      = y * silu(z)                           (when z is given)

Shapes: u, delta, z (batch, D, L); A (D, N); B, C (batch, N, L) or grouped (batch, G, N, L),
where group g serves channels g*D/G ... (g+1)*D/G - 1, or constant over batch and time (D, N);
D, delta_bias (D,). Math runs in float32 (float64 for float64 inputs); the result has the dtype of
``u`` and the last state the compute dtype (float32 for float16/bfloat16 inputs, as in mamba-ssm).

Backends (``backend=`` argument, else the ``SSMIR_SCAN_BACKEND`` environment variable, else "auto"):

``reference``  a plain sequential loop in PyTorch; slow, kept as the oracle for tests.
``torch``      a parallel (Hillis-Steele) scan in PyTorch, chunked; runs on any device.
``numba``      compiled CPU kernels (forward and backward); the CPU default when numba is installed.
``triton``     Triton kernels (forward and backward) for NVIDIA and AMD GPUs; the CUDA/ROCm default when
               ``triton`` is importable and ``mamba_ssm`` is not. Under ``TRITON_INTERPRET=1`` it also runs
               on CPU tensors (Triton's interpreter, for tests).
``cuda``       mamba-ssm's CUDA kernel; the CUDA default when ``mamba_ssm`` is importable.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import time

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ssmir.ops.export_scan import exporting, selective_scan_export

BACKENDS = ("auto", "reference", "torch", "numba", "triton", "cuda")
ENV_VAR = "SSMIR_SCAN_BACKEND"


# --------------------------------------------------------------------------- validation


def _check_inputs(u, delta, A, B, C, D, z, delta_bias):
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must be (batch, D, L), got shape {tuple(u.shape)}")
    nb, nd, L = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"selective_scan: delta shape {tuple(delta.shape)} != u shape {tuple(u.shape)}")
    if A.dim() != 2 or A.shape[0] != nd:
        raise ValueError(f"selective_scan: A must be (D={nd}, N), got {tuple(A.shape)}")
    if A.is_complex():
        raise NotImplementedError("selective_scan: complex A is not implemented")
    N = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.is_complex():
            raise NotImplementedError(f"selective_scan: complex {name} is not implemented")
        if t.dim() == 2:  # constant over batch and time, one row per channel
            if t.shape != (nd, N):
                raise ValueError(f"selective_scan: a constant {name} must be (D={nd}, N={N}), got {tuple(t.shape)}")
            continue
        if t.dim() == 3:
            t = t.unsqueeze(1)
        if t.dim() != 4 or t.shape[0] != nb or t.shape[2] != N or t.shape[3] != L:
            raise ValueError(
                f"selective_scan: {name} must be (batch={nb}, N={N}, L={L}), (batch, G, N, L) or (D, N), "
                f"got {tuple(t.shape)}"
            )
        if nd % t.shape[1] != 0:
            raise ValueError(f"selective_scan: {name} has {t.shape[1]} groups, which do not divide D={nd}")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and t.shape != (nd,):
            raise ValueError(f"selective_scan: {name} must be ({nd},), got {tuple(t.shape)}")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"selective_scan: z shape {tuple(z.shape)} != u shape {tuple(u.shape)}")


def _compute_dtype(u: torch.Tensor) -> torch.dtype:
    return torch.float64 if u.dtype == torch.float64 else torch.float32


def _grouped(t: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """B or C as (batch, G, N, L): (batch, N, L) gets G = 1; a constant (D, N) becomes D groups of one
    channel, broadcast over batch and time (a view; its gradient sums over them)."""
    if t.dim() == 2:
        return t[None, :, :, None].expand(u.shape[0], -1, -1, u.shape[2])
    return t.unsqueeze(1) if t.dim() == 3 else t


def _grouped_pair(B, C, u):
    """B and C as (batch, G, N, L) with the same G (the finer grouping when theirs differ)."""
    B, C = _grouped(B, u), _grouped(C, u)
    gb, gc = B.shape[1], C.shape[1]
    if gb != gc:
        g = max(gb, gc) if max(gb, gc) % min(gb, gc) == 0 else u.shape[1]
        B, C = B.repeat_interleave(g // gb, dim=1), C.repeat_interleave(g // gc, dim=1)
    return B, C


def _prepare_delta(delta, delta_bias, delta_softplus):
    if delta_bias is not None:
        delta = delta + delta_bias[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return delta


def _finish(y, h, u, D, z, dtype_in, return_last_state):
    """Add the D skip, gate by silu(z), cast y back (the state stays in the compute dtype, as in mamba-ssm):
    the common end of the PyTorch backends."""
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y


# --------------------------------------------------------------------------- reference


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                             return_last_state=False):
    """Sequential loop over time; the oracle the other backends are tested against."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    u, delta, A = u.to(ct), delta.to(ct), A.to(ct)
    B, C = (t.to(ct) for t in _grouped_pair(B, C, u))
    nb, nd, L = u.shape
    reps = nd // B.shape[1]
    B = B.repeat_interleave(reps, dim=1)  # (batch, D, N, L)
    C = C.repeat_interleave(reps, dim=1)
    delta = _prepare_delta(delta, None if delta_bias is None else delta_bias.to(ct), delta_softplus)
    h = u.new_zeros(nb, nd, A.shape[1])
    ys = []
    # unbind once: indexing step t inside the loop would make the backward pass quadratic in L
    for u_t, dt, B_t, C_t in zip(u.unbind(-1), delta.unbind(-1), B.unbind(-1), C.unbind(-1), strict=True):
        dt = dt[..., None]  # (batch, D, 1)
        h = torch.exp(dt * A) * h + dt * B_t * u_t[..., None]
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1) if ys else u.new_zeros(nb, nd, 0)
    return _finish(y, h, u, D, z, dtype_in, return_last_state)


# --------------------------------------------------------------------------- pure PyTorch, any device

_TORCH_CHUNK = 256


def _scan_chunk(a, x, h0):
    """Inclusive scan of h_t = a_t * h_{t-1} + x_t along dim 2 of (batch, D, T, N), from state h0."""
    T = a.shape[2]
    offset = 1
    while offset < T:
        x = torch.cat([x[:, :, :offset], a[:, :, offset:] * x[:, :, :-offset] + x[:, :, offset:]], dim=2)
        a = torch.cat([a[:, :, :offset], a[:, :, offset:] * a[:, :, :-offset]], dim=2)
        offset *= 2
    return x + a * h0[:, :, None, :]


def _torch_chunk_outputs(u, delta, A, B, C, h0):
    """Outputs (batch, D, T) and last state of one time chunk. B, C: (batch, G, N, T)."""
    nb, nd, T = u.shape
    G = B.shape[1]
    a = torch.exp(delta[..., None] * A[:, None, :])  # (batch, D, T, N)
    du = (delta * u).view(nb, G, nd // G, T)
    x = torch.einsum("bgdt,bgnt->bgdtn", du, B).reshape(nb, nd, T, -1)
    h = _scan_chunk(a, x, h0)  # (batch, D, T, N)
    y = torch.einsum("bgdtn,bgnt->bgdt", h.view(nb, G, nd // G, T, -1), C).reshape(nb, nd, T)
    return y, h[:, :, -1]


def selective_scan_torch(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, chunk: int = _TORCH_CHUNK):
    """Parallel scan in PyTorch, chunked along time; runs on CPU, CUDA and MPS tensors.

    Within a chunk of ``chunk`` steps the recurrence is solved by a log-depth (Hillis-Steele) scan;
    chunks are chained through their last state. With autograd on, each chunk is recomputed in
    the backward pass (activation checkpointing), so memory stays O(batch * D * chunk * N).
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    u, delta, A = u.to(ct), delta.to(ct), A.to(ct)
    B, C = (t.to(ct) for t in _grouped_pair(B, C, u))
    delta = _prepare_delta(delta, None if delta_bias is None else delta_bias.to(ct), delta_softplus)
    nb, nd, L = u.shape
    h = u.new_zeros(nb, nd, A.shape[1])
    ys = []
    use_ckpt = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    for t0 in range(0, L, chunk):
        sl = slice(t0, min(L, t0 + chunk))
        args = (u[:, :, sl], delta[:, :, sl], A, B[..., sl], C[..., sl], h)
        if use_ckpt:
            y_c, h = checkpoint(_torch_chunk_outputs, *args, use_reentrant=False)
        else:
            y_c, h = _torch_chunk_outputs(*args)
        ys.append(y_c)
    y = torch.cat(ys, dim=-1) if ys else u.new_zeros(nb, nd, 0)
    return _finish(y, h, u, D, z, dtype_in, return_last_state)


# --------------------------------------------------------------------------- numba (compiled CPU)

_NUMBA_CHUNK = 64  # steps between stored states (backward recomputes from them)


@functools.lru_cache(maxsize=1)
def _numba_kernels():
    try:
        from ssmir.ops import _numba_scan
    except ImportError as e:  # numba missing or broken: callers fall back
        raise RuntimeError(f"the numba scan backend is unavailable ({e}); pip install numba") from e
    return _numba_scan


def numba_available() -> bool:
    try:
        _numba_kernels()
    except RuntimeError:
        return False
    return True


def _set_numba_threads():
    import numba

    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def _numba_parts(nb: int, groups: int, nd: int) -> int:
    """Channel slices per group, so that the kernels have at least two tasks per thread."""
    return max(1, min(nd // groups, math.ceil(2 * torch.get_num_threads() / (nb * groups))))


class _NumbaScan(torch.autograd.Function):
    """y = C . h + D * u with h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, for a step ``dt`` already through bias
    and softplus. u, dt (B, D, L); A (D, N); B, C (B, G, N, L); D (D,); all contiguous, one dtype."""

    @staticmethod
    def forward(ctx, u, dt, A, B, C, D):
        k = _numba_kernels()
        _set_numba_threads()
        nb, nd, L = u.shape
        N = A.shape[1]
        need_grad = any(ctx.needs_input_grad)
        parts = _numba_parts(nb, B.shape[1], nd)
        y = torch.empty_like(u)
        h_last = u.new_empty(nb, nd, N)
        h_ckpt = u.new_empty(nb, nd, max(1, math.ceil(L / _NUMBA_CHUNK)) if need_grad else 1, N)
        k.scan_forward(u.numpy(), dt.numpy(), A.numpy(), B.numpy(), C.numpy(), D.numpy(), _NUMBA_CHUNK,
                       need_grad, parts, y.numpy(), h_last.numpy(), h_ckpt.numpy())
        ctx.save_for_backward(u, dt, A, B, C, D, h_ckpt)
        ctx.mark_non_differentiable(h_last)
        return y, h_last

    @staticmethod
    def backward(ctx, dy, _dh_last):
        k = _numba_kernels()
        _set_numba_threads()
        u, dt, A, B, C, D, h_ckpt = ctx.saved_tensors
        nb, nd, L = u.shape
        G, N = B.shape[1], A.shape[1]
        parts = _numba_parts(nb, G, nd)
        du, ddt = torch.empty_like(u), torch.empty_like(u)
        dA = torch.empty(nb, nd, N, dtype=torch.float64)
        dD = torch.empty(nb, nd, dtype=torch.float64)
        dB_parts = u.new_empty(nb, G, parts, N, L)
        dC_parts = u.new_empty(nb, G, parts, N, L)
        k.scan_backward(u.numpy(), dt.numpy(), A.numpy(), B.numpy(), C.numpy(), D.numpy(), _NUMBA_CHUNK,
                        h_ckpt.numpy(), dy.contiguous().numpy(), parts, du.numpy(), ddt.numpy(), dA.numpy(),
                        dD.numpy(), dB_parts.numpy(), dC_parts.numpy())
        return du, ddt, dA.sum(0).to(u.dtype), _sum_parts(dB_parts, 2), _sum_parts(dC_parts, 2), dD.sum(0).to(u.dtype)


def _sum_parts(t, dim: int):
    """The compiled backward kernels' per-task partial sums added up; one part is a view (a sum would zero-fill
    and copy the whole tensor)."""
    return t.select(dim, 0) if t.shape[dim] == 1 else t.sum(dim)


def selective_scan_numba(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """Compiled CPU scan (numba); differentiable in every tensor argument except the last state.

    The step (bias, softplus) and the z gate are vectorised PyTorch operations around the compiled scan,
    so autograd differentiates them; the kernel computes ``exp(dt * A)`` itself (``ssmir.ops._numba_scan``).
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type != "cpu":
        raise ValueError(f"selective_scan: the numba backend runs on CPU tensors, got {u.device}")
    dtype_in = u.dtype
    ct = _compute_dtype(u)
    nd = u.shape[1]
    dt = _prepare_delta(delta.to(ct), None if delta_bias is None else delta_bias.to(ct), delta_softplus)
    Bg, Cg = (t.to(ct).contiguous() for t in _grouped_pair(B, C, u))  # (B, G, N, L)
    y, h_last = _NumbaScan.apply(u.to(ct).contiguous(), dt.contiguous(), A.to(ct).contiguous(), Bg, Cg,
                                 (D if D is not None else u.new_zeros(nd)).to(ct).contiguous())
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(dtype_in)
    return (y, h_last) if return_last_state else y


# --------------------------------------------------------------------------- Triton (NVIDIA / AMD GPUs)


@functools.lru_cache(maxsize=1)
def _triton_kernels():
    try:
        from ssmir.ops import _triton_scan
    except ImportError as e:  # triton missing or broken
        raise RuntimeError(f"the triton scan backend is unavailable ({e}); pip install triton") from e
    return _triton_scan


def triton_available() -> bool:
    try:
        _triton_kernels()
    except RuntimeError:
        return False
    return True


def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
    """Triton kernels (forward and backward); GPU tensors, or CPU tensors under ``TRITON_INTERPRET=1``.

    float32, float16, bfloat16 (float32 math) and float64 (float64 math) inputs; differentiable in every
    tensor argument except the last state.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    if u.device.type != "cuda" and not (u.device.type == "cpu" and _triton_interpreting()):
        raise ValueError(f"selective_scan: backend 'triton' runs on GPU tensors (or CPU tensors with "
                         f"TRITON_INTERPRET=1), got {u.device}")
    k = _triton_kernels()
    y, h_last = k.TritonScan.apply(
        u.contiguous(), delta.contiguous(), A, _grouped(B, u), _grouped(C, u),
        None if D is None else D.contiguous(), None if z is None else z.contiguous(),
        None if delta_bias is None else delta_bias.contiguous(), bool(delta_softplus))
    return (y, h_last) if return_last_state else y


# --------------------------------------------------------------------------- mamba-ssm CUDA


@functools.lru_cache(maxsize=1)
def _mamba_ssm_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # not installed, or installed without a working CUDA build
        return None
    return selective_scan_fn


def selective_scan_cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        return_last_state=False):
    """mamba-ssm's CUDA kernel; requires the optional ``mamba_ssm`` package and CUDA tensors."""
    fn = _mamba_ssm_fn()
    if fn is None:
        raise RuntimeError("selective_scan: backend 'cuda' needs the mamba_ssm package (pip install mamba-ssm)")
    if u.device.type != "cuda":
        raise ValueError(f"selective_scan: backend 'cuda' needs CUDA tensors, got {u.device}")
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    B, C = B.contiguous(), C.contiguous()
    return fn(u.contiguous(), delta.contiguous(), A.contiguous(), B, C,
              None if D is None else D.float(), None if z is None else z.contiguous(),
              None if delta_bias is None else delta_bias.float(), delta_softplus, return_last_state)


# --------------------------------------------------------------------------- FLOP recording (ssmir.profiling)

# A callback ``record(flops)`` set by ssmir.profiling.flops while it counts; None otherwise.
FLOP_RECORDER: contextvars.ContextVar = contextvars.ContextVar("ssmir_scan_flop_recorder", default=None)


class ScanClock:
    """Wall-clock seconds and calls spent in ``selective_scan`` while ``timing_scans()`` is active."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.seconds, self.calls = 0.0, 0


_SCAN_CLOCK: contextvars.ContextVar = contextvars.ContextVar("ssmir_scan_clock", default=None)


@contextlib.contextmanager
def timing_scans():
    """Time every ``selective_scan`` call in the block (benchmarks): ``with timing_scans() as clock: ...``."""
    clock = ScanClock()
    token = _SCAN_CLOCK.set(clock)
    try:
        yield clock
    finally:
        _SCAN_CLOCK.reset(token)


def scan_flops(batch: int, dim: int, length: int, state: int) -> int:
    """The official profiler's count for one scan: 9*B*L*D*N + B*D*L (the D skip; z and softplus ignored)."""
    return 9 * batch * length * dim * state + batch * dim * length


def _selective_scan_meta(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False):
    """Shapes only, for tensors on the meta device (FLOP counting without computing)."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    y = torch.empty_like(u)
    h = u.new_empty(u.shape[0], u.shape[1], A.shape[1], dtype=_compute_dtype(u))
    return (y, h) if return_last_state else y


# --------------------------------------------------------------------------- dispatch

_IMPLS = {
    "reference": selective_scan_reference,
    "torch": selective_scan_torch,
    "numba": selective_scan_numba,
    "triton": selective_scan_triton,
    "cuda": selective_scan_cuda,
}


def resolve_backend(device: torch.device | str, backend: str | None = None) -> str:
    """The backend a call on ``device`` uses: the argument, else $SSMIR_SCAN_BACKEND, else the fastest available."""
    name = backend or os.environ.get(ENV_VAR) or "auto"
    if name not in BACKENDS:
        source = "backend argument" if backend else f"${ENV_VAR}"
        raise ValueError(f"selective_scan: unknown {source} {name!r}; expected one of {', '.join(BACKENDS)}")
    if name != "auto":
        return name
    dev = torch.device(device).type
    if dev == "cpu":
        return "numba" if numba_available() else "torch"
    if dev == "cuda" and _mamba_ssm_fn() is not None:
        return "cuda"
    if dev == "cuda" and triton_available():  # NVIDIA, and AMD (ROCm builds call their devices "cuda")
        return "triton"
    return "torch"


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend: str | None = None):
    """Selective scan with mamba-ssm's ``selective_scan_fn`` semantics (see the module docstring).

    Returns ``y`` (batch, D, L) in the dtype of ``u``, or ``(y, last_state)`` with last_state
    (batch, D, N) when ``return_last_state``.
    """
    if exporting():  # torch.export / ONNX: plain operations that the exported graph can hold
        return selective_scan_export(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
                                     delta_softplus=delta_softplus, return_last_state=return_last_state)
    recorder = FLOP_RECORDER.get()
    if recorder is not None:
        recorder(scan_flops(u.shape[0], u.shape[1], u.shape[2], A.shape[1]))
    impl = _selective_scan_meta if u.device.type == "meta" else _IMPLS[resolve_backend(u.device, backend)]
    clock = _SCAN_CLOCK.get()
    if clock is not None:
        if u.device.type == "cuda":
            torch.cuda.synchronize(u.device)
        start = time.perf_counter()
    out = impl(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
               return_last_state=return_last_state)
    if clock is not None:
        if u.device.type == "cuda":
            torch.cuda.synchronize(u.device)
        clock.seconds += time.perf_counter() - start
        clock.calls += 1
    return out
