"""Every backend of the selective scan against the sequential reference, values and gradients."""

import pytest
import torch

from ssmir.ops import selective_scan, selective_scan_numba, selective_scan_reference, selective_scan_torch
from ssmir.ops.selective_scan import resolve_backend

FAST = {"numba": selective_scan_numba, "torch": selective_scan_torch}


def make_inputs(batch, dim, n, length, groups, dtype=torch.float32, with_z=True, grouped=True):
    u = torch.randn(batch, dim, length, dtype=dtype)
    delta = torch.randn(batch, dim, length, dtype=dtype) * 0.5
    A = -(torch.rand(dim, n, dtype=dtype) + 0.5)
    shape = (batch, groups, n, length) if grouped else (batch, n, length)
    B = torch.randn(*shape, dtype=dtype)
    C = torch.randn(*shape, dtype=dtype)
    D = torch.randn(dim, dtype=dtype)
    z = torch.randn(batch, dim, length, dtype=dtype) if with_z else None
    bias = torch.randn(dim, dtype=dtype) * 0.1
    return u, delta, A, B, C, D, z, bias


def _grads(fn, inputs, softplus, weight):
    inputs = [None if t is None else t.detach().clone().requires_grad_(True) for t in inputs]
    u, delta, A, B, C, D, z, bias = inputs
    y = fn(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=softplus)
    grads = torch.autograd.grad(y, [t for t in inputs if t is not None], weight)
    return y, grads


@pytest.mark.parametrize("backend", sorted(FAST))
@pytest.mark.parametrize(
    "batch,dim,n,length,groups,with_z,grouped,softplus",
    [
        (2, 8, 4, 37, 2, True, True, True),  # grouped B/C, odd length
        (1, 6, 3, 1, 1, True, True, True),  # L = 1
        (2, 4, 5, 19, 1, False, False, False),  # ungrouped (B, N, L), no z, no softplus
        (3, 12, 2, 130, 3, True, True, True),  # crosses the kernels' chunk boundaries
    ],
)
def test_fast_backend_matches_reference_values_and_gradients(backend, batch, dim, n, length, groups, with_z,
                                                               grouped, softplus):
    inputs = make_inputs(batch, dim, n, length, groups, with_z=with_z, grouped=grouped)
    weight = torch.randn(batch, dim, length)
    y_ref, g_ref = _grads(selective_scan_reference, inputs, softplus, weight)
    y, g = _grads(FAST[backend], inputs, softplus, weight)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-5)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("backend", sorted(FAST))
def test_gradients_across_time_blocks_and_softplus_cutoff(backend):
    # 2100 steps: the compiled backward walks three time blocks (1024 steps each, the last one partial);
    # some deltas lie above softplus's linear cut-off (20)
    inputs = make_inputs(1, 4, 2, 2100, 2)
    inputs[1][0, 1, 100:1500:7] = 25.0
    weight = torch.randn(1, 4, 2100)
    y_ref, g_ref = _grads(selective_scan_reference, inputs, True, weight)
    y, g = _grads(FAST[backend], inputs, True, weight)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("fn", [selective_scan_reference, selective_scan_numba, selective_scan_torch])
def test_gradcheck_float64(fn):
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 3, 9, 2, dtype=torch.float64)
    tensors = [t.requires_grad_(True) for t in (u, delta, A, B, C, D, z, bias)]

    def f(u, delta, A, B, C, D, z, bias):
        return fn(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", sorted(FAST))
def test_last_state_matches_reference(backend):
    u, delta, A, B, C, D, z, bias = make_inputs(2, 4, 3, 21, 2)
    _, h_ref = selective_scan_reference(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    _, h = FAST[backend](u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    torch.testing.assert_close(h, h_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_compute_in_float32_and_return_input_dtype(dtype):
    inputs = make_inputs(1, 4, 3, 16, 1)
    half = [t.to(dtype) for t in inputs]
    y = selective_scan_numba(*half[:5], D=half[5], z=half[6], delta_bias=half[7], delta_softplus=True)
    want = selective_scan_reference(*[t.float() for t in half[:5]], D=half[5].float(), z=half[6].float(),
                                    delta_bias=half[7].float(), delta_softplus=True)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), want.to(dtype).float())


@pytest.mark.parametrize("backend", sorted(FAST))
def test_long_sequence_is_finite_and_matches_reference(backend):
    length = 512 * 512
    u, delta, A, B, C, D, z, bias = make_inputs(1, 2, 4, length, 1)
    with torch.no_grad():
        y = FAST[backend](u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)
    assert torch.isfinite(y).all()
    # the state forgets quickly (A <= -0.5): the tail is reproduced by a reference run over the tail alone
    tail = 2000
    sl = slice(length - 3 * tail, length)
    with torch.no_grad():
        y_tail = selective_scan_reference(u[..., sl], delta[..., sl], A, B[..., sl], C[..., sl], D=D, z=z[..., sl],
                                          delta_bias=bias, delta_softplus=True)
    torch.testing.assert_close(y[..., -tail:], y_tail[..., -tail:], rtol=1e-4, atol=1e-4)


def test_bad_shapes_raise_clear_errors():
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 3, 8, 1)
    with pytest.raises(ValueError, match="delta shape"):
        selective_scan(u, delta[..., :4], A, B, C)
    with pytest.raises(ValueError, match="groups"):
        selective_scan(u, delta, A, torch.randn(1, 3, 3, 8), torch.randn(1, 3, 3, 8))
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(u, delta, A[:2], B, C)


def test_backend_selection(monkeypatch):
    assert resolve_backend("cpu", "reference") == "reference"
    assert resolve_backend("cpu") in ("numba", "torch")
    monkeypatch.setenv("SSMIR_SCAN_BACKEND", "torch")
    assert resolve_backend("cpu") == "torch"
    monkeypatch.setenv("SSMIR_SCAN_BACKEND", "bogus")
    with pytest.raises(ValueError, match="SSMIR_SCAN_BACKEND"):
        resolve_backend("cpu")
    with pytest.raises(ValueError, match="unknown backend argument"):
        resolve_backend("cpu", "nope")


def test_numba_float32_exp_is_within_four_ulp_of_libm():
    numba = pytest.importorskip("numba")
    import numpy as np

    from ssmir.ops._numba_scan import fast_exp

    @numba.njit(fastmath=True)
    def apply(x):
        out = np.empty_like(x)
        for i in range(x.size):
            out[i] = fast_exp(x[i])
        return out

    x = np.linspace(-87.0, 88.0, 400_001).astype(np.float32)
    got = apply(x).astype(np.float64)
    want = np.exp(x.astype(np.float64))
    assert np.max(np.abs(got - want) / want) < 5e-7  # four float32 ulp
    assert apply(np.array([-200.0], dtype=np.float32))[0] < 1e-37  # far below: the state has decayed
