"""The token-layout multi-head scan against its definition (gather / selective_scan / scatter)."""

import pytest
import torch

from ssmir.ops.head_scan import _reference, scan_heads_in_orders


def make(nb, L, K, d, N, expand=False, per_batch=False, offset=False, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    u = randn(nb, L, 1 if expand else K, d)
    if expand:  # every head scans the same channels (the "add" merge)
        u = u.expand(nb, L, K, d)
    delta = randn(nb, L, K, d) * 0.5
    A = -(torch.rand(K * d, N, generator=g, dtype=dtype) + 0.5)
    x_dbl = randn(nb, L, K, 3 + 2 * N)  # B and C as strided views, as the models pass them
    B, C = x_dbl[..., 3:3 + N], x_dbl[..., 3 + N:]
    D, bias = randn(K * d), randn(K * d) * 0.1
    perms = [torch.randperm(L, generator=g) for _ in range(K * (nb if per_batch else 1))]
    orders = torch.stack(perms).view(nb, K, L) if per_batch else torch.stack(perms)
    c_offset = randn(nb, L, K, N) if offset else None
    return [u, delta, A, B, C, D, bias], orders, c_offset


def _run(fn, tensors, orders, c_offset):
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors]
    off = None if c_offset is None else c_offset.detach().clone().requires_grad_(True)
    u, delta, A, B, C, D, bias = leaves
    y = fn(u, delta, A, B, C, D, bias, orders, off)
    weight = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    grads = torch.autograd.grad(y, leaves + ([off] if off is not None else []), weight)
    return y, grads


def numba_path(u, delta, A, B, C, D, bias, orders, off):
    return scan_heads_in_orders(u, delta, A, B, C, D, bias, True, orders, off, backend="numba")


def definition(u, delta, A, B, C, D, bias, orders, off):
    return _reference(u, delta, A, B, C, D, bias, True, orders if orders.dim() == 3 else orders[None], off,
                      "reference")


@pytest.mark.parametrize("case", [
    dict(nb=2, L=150, K=3, d=4, N=5),  # several 64-step chunks, the last partial
    dict(nb=1, L=70, K=4, d=3, N=2, expand=True),  # heads share their input (expand: stride 0)
    dict(nb=2, L=90, K=1, d=6, N=4, per_batch=True, offset=True),  # MambaIRv2: per-image order and prompts
    dict(nb=1, L=37, K=2, d=5, N=16, dtype=torch.float32),
])
def test_compiled_kernel_matches_the_definition(case):
    tensors, orders, c_offset = make(**case)
    y, g = _run(numba_path, tensors, orders, c_offset)
    y_ref, g_ref = _run(definition, tensors, orders, c_offset)
    tol = dict(rtol=1e-4, atol=1e-5) if case.get("dtype") == torch.float32 else dict(rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(y, y_ref, **tol)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, **tol)


def test_gradcheck_float64():
    tensors, orders, c_offset = make(nb=1, L=9, K=2, d=2, N=3, per_batch=True, offset=True)
    leaves = [t.detach().clone().requires_grad_(True) for t in tensors] + [c_offset.requires_grad_(True)]

    def f(u, delta, A, B, C, D, bias, off):
        return numba_path(u, delta, A, B, C, D, bias, orders, off)

    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-6)


def test_identity_orders_equal_a_plain_scan():
    from ssmir.ops import selective_scan

    tensors, _, _ = make(nb=1, L=20, K=2, d=3, N=4)
    u, delta, A, B, C, D, bias = tensors
    y = scan_heads_in_orders(u, delta, A, B, C, D, bias, True, backend="numba")  # orders=None: token order
    want = selective_scan(u.permute(0, 2, 3, 1).reshape(1, 6, 20), delta.permute(0, 2, 3, 1).reshape(1, 6, 20), A,
                          B.permute(0, 2, 3, 1), C.permute(0, 2, 3, 1), D, delta_bias=bias, delta_softplus=True,
                          backend="reference")
    torch.testing.assert_close(y, want.view(1, 2, 3, 20).permute(0, 3, 1, 2))


def test_bad_shapes_raise_clear_errors():
    tensors, orders, _ = make(nb=1, L=8, K=2, d=2, N=3)
    u, delta, A, B, C, D, bias = tensors
    with pytest.raises(ValueError, match="orders must be"):
        scan_heads_in_orders(u, delta, A, B, C, D, bias, True, orders[:, :4])
    with pytest.raises(ValueError, match="B must be"):
        scan_heads_in_orders(u, delta, A, B[:, :4], C, D, bias, True, orders)
    with pytest.raises(ValueError, match="u must be"):
        scan_heads_in_orders(u[0], delta, A, B, C, D, bias, True, orders)


@pytest.mark.parametrize("case", [
    dict(nb=1, L=150, K=8, d=4, N=5, R=2, act="silu"),  # EAMamba: heads split the channels, projections in the kernel
    dict(nb=2, L=90, K=1, d=6, N=4, R=1, per_batch=True, offset=True),  # MambaIRv2: per-image order and prompts
    dict(nb=1, L=70, K=4, d=3, N=2, R=1, expand=True, act="silu"),  # VMamba's four-way scan: shared input
    dict(nb=1, L=80, K=2, d=3, N=10, R=2, act="silu"),  # EAMambaSR's N = 10: states padded to 16 lanes
    dict(nb=1, L=130, K=1, d=6, N=8, R=1, offset=True),  # MambaIRv2-Light's N = 8: one SIMD register of states
])
@pytest.mark.parametrize("parts", [1, 3])  # whole heads per task (projections in the kernel), or channel slices
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_fused_inference_kernel_matches_its_composition(case, parts, dtype, monkeypatch):
    # activation, x projection, dt projection + bias + softplus and the scan in one kernel, against the same
    # steps as PyTorch operations followed by the reference scan
    from ssmir.ops import head_scan

    case = dict(case)
    R, act = case.pop("R"), case.pop("act", None)
    (u, _, A, _, _, D, bias), orders, c_offset = make(**case, dtype=dtype)
    nb, L, K, d = u.shape
    N = A.shape[1]
    g = torch.Generator().manual_seed(1)
    x_proj = torch.randn(K, R + 2 * N, d, generator=g, dtype=dtype) * 0.5
    dt_proj = torch.randn(K, d, R, generator=g, dtype=dtype)
    dt_bias = bias.view(K, d) - 1.0
    monkeypatch.setattr(head_scan, "_parts", lambda nb, K, d: min(parts, d))
    args = (u, x_proj, dt_proj, dt_bias, A, D, orders, c_offset, act)
    with torch.no_grad():
        assert head_scan._fusable(u, (x_proj, dt_proj, dt_bias, A, D, c_offset), None)
        got = head_scan.scan_heads_projected(*args)
        want = head_scan._projected_reference(*args, "reference")
    assert got.dtype == want.dtype == dtype
    tol = dict(rtol=2e-5, atol=2e-6) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got, want, **tol)


def test_fused_kernel_is_inference_only():
    # with a gradient to take, the composition runs (autograd through it), and the result is the same
    from ssmir.ops import head_scan

    (u, _, A, _, _, D, bias), orders, _ = make(1, 40, 2, 3, 4)
    x_proj = torch.randn(2, 1 + 8, 3, dtype=torch.float64, requires_grad=True)
    dt_proj = torch.randn(2, 3, 1, dtype=torch.float64)
    args = (u, x_proj, dt_proj, bias.view(2, 3), A, D, orders, None, "silu")
    assert not head_scan._fusable(u, (x_proj, dt_proj, bias, A, D, None), None)
    y = head_scan.scan_heads_projected(*args)
    assert y.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(head_scan.scan_heads_projected(*args), y.detach(), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="activation"):
        head_scan.scan_heads_projected(*args[:-1], "gelu")


@pytest.mark.parametrize("N", [8, 16, 5])
def test_simd_recurrence_and_row_max_equal_their_loops(N):
    """The LLVM vector code of the float32 kernels (state in 8 or 16 SIMD lanes; the row maximum of the attention
    kernel) against the plain loops they replace (N = 5 takes the loop itself)."""
    import numba
    import numpy as np

    from ssmir.ops import _numba_scan as k

    @numba.njit
    def run(T, e, bb, cb, dts, us, d_skip, h, ys, x):
        k._recurrence(T, e, bb, cb, dts, us, d_skip, h, ys)
        return k._row_max(x)

    rng = np.random.default_rng(N)
    T = 37
    e = rng.uniform(0.5, 1.0, (64, N)).astype(np.float32)
    bb, cb = (rng.standard_normal((64, N)).astype(np.float32) for _ in range(2))
    dts, us = rng.uniform(0, 0.2, 64).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    h0 = rng.standard_normal(N).astype(np.float32)
    for x in (rng.standard_normal(48).astype(np.float32) - 50, rng.standard_normal(44).astype(np.float32)):
        h, ys = h0.copy(), np.zeros(64, np.float32)
        got_max = run(T, e, bb, cb, dts, us, np.float32(0.7), h, ys, x)
        assert got_max == x.max()
        h_ref, ys_ref = h0.astype(np.float64), np.zeros(64)
        for j in range(T):
            h_ref = e[j] * h_ref + dts[j] * us[j] * bb[j]
            ys_ref[j] = cb[j] @ h_ref + 0.7 * us[j]
        np.testing.assert_allclose(h, h_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-5)
        assert ys[T:].tolist() == [0.0] * (64 - T)


@pytest.mark.parametrize("method", ["blockdiag", "mixed"])
@pytest.mark.parametrize("expand", [False, True])  # heads with their own channels, or sharing them (VMamba)
def test_head_linear_forms_equal_einsum_with_gradients(method, expand, monkeypatch):
    # the block-diagonal GEMM (training on CUDA) and the mixed form (training on CPU: einsum forward, large-GEMM
    # backward, split parts) compute the einsum's values and gradients
    from ssmir.ops import head_scan

    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 7, 3, 4, generator=g, dtype=torch.float64)[:, :, :, :3].requires_grad_(True)  # a view
    w = torch.randn(3, 5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    want = torch.einsum("blkd,kcd->blkc", x, w)
    got = head_scan.head_linear(x, w, method)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    dy = torch.randn_like(want)
    gx, gw = torch.autograd.grad(want, (x, w), dy)
    hx, hw = torch.autograd.grad(got, (x, w), dy)
    torch.testing.assert_close(hx, gx, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hw, gw, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: head_scan.head_linear(a, b, method), (x, w))
    parts = head_scan.head_linear(x, w, method, split=[1, 2, 2])  # as the mixers split (dt, B, C)
    for part, ref in zip(parts, want.split([1, 2, 2], dim=3), strict=True):
        torch.testing.assert_close(part, ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a, b: head_scan.head_linear(a, b, method, split=[1, 2, 2])[1:], (x, w))
    # a whole projected scan with the setting forced gives the einsum's result and gradients
    (u, _, A, _, _, D, bias), orders, _ = make(1, 30, 2, 3, 4, expand=expand)
    u = u.detach().requires_grad_(True)
    x_proj = torch.randn(2, 1 + 8, 3, dtype=torch.float64, requires_grad=True)
    dt_proj = torch.randn(2, 3, 1, dtype=torch.float64, requires_grad=True)
    args = (u, x_proj, dt_proj, bias.view(2, 3), A, D, orders, None, "silu")
    results = {}
    for form in ("einsum", method):
        monkeypatch.setattr(head_scan, "HEAD_PROJECTION", form)
        y = head_scan.scan_heads_projected(*args)
        results[form] = (y, *torch.autograd.grad(y.square().sum(), (u, x_proj, dt_proj)))
    for a, b in zip(results["einsum"], results[method], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="method"):
        head_scan.head_linear(x, w, "loop")


def loops(u, delta, A, B, C, D, bias, orders, off):
    """The definition with indexing by hand: every image and head gathered into its order with Python
    indexing, one ``selective_scan_reference`` each, each output written back to its tokens."""
    from ssmir.ops import selective_scan_reference

    nb, L, K, d = u.shape
    orders = orders if orders.dim() == 3 else orders[None].expand(nb, K, L)
    rows = []
    for b in range(nb):
        heads = []
        for k in range(K):
            o, ch = orders[b, k], slice(k * d, (k + 1) * d)
            c = C[b, o, k] + (off[b, :, k] if off is not None else 0)  # the offset by scan position
            y = selective_scan_reference(u[b, o, k].t()[None], delta[b, o, k].t()[None], A[ch], B[b, o, k].t()[None],
                                         c.t()[None], D[ch], delta_bias=bias[ch], delta_softplus=True)[0].t()
            heads.append(torch.zeros_like(y).index_put((o,), y))  # token o[t] gets step t's output
        rows.append(torch.stack(heads, dim=1))
    return torch.stack(rows)


@pytest.mark.parametrize("gather", ["flat", "per-head"])
@pytest.mark.parametrize("case", [
    dict(nb=2, L=40, K=3, d=2, N=3),
    dict(nb=1, L=30, K=4, d=3, N=2, expand=True),  # heads sharing their input (stride 0)
    dict(nb=2, L=25, K=2, d=2, N=3, per_batch=True, offset=True),
])
def test_gathers_of_the_composition_equal_the_loop_definition(case, gather, monkeypatch):
    # the one-index_select gather of all heads (default) and the per-head one: values and gradients
    from ssmir.ops import head_scan

    monkeypatch.setattr(head_scan, "HEAD_GATHER", gather)
    tensors, orders, c_offset = make(**case)
    y, g = _run(definition, tensors, orders, c_offset)
    y_ref, g_ref = _run(loops, tensors, orders, c_offset)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert y.is_contiguous() == (gather == "flat" and not case.get("per_batch", False))


@pytest.mark.parametrize("N", [8, 16, 5])
def test_simd_adjoint_equals_autograd_of_the_recurrence(N):
    """The backward kernels' adjoint recurrence over a block (LLVM vector code for float32 with N = 8 or 16, the
    plain loop for N = 5) against PyTorch's autograd of the forward recurrence in float64."""
    import numba
    import numpy as np

    from ssmir.ops import _numba_scan as k

    @numba.njit
    def run(T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts):
        k._adjoint(T, e, hb, bb, cb, dts, us, gys, a_row, d_skip, g, dA, dcb, dbb, dus, ddts)

    gen = torch.Generator().manual_seed(N)
    T, rows, d_skip = 37, 64, 0.7
    h0, g_in, a = torch.randn(N, generator=gen), torch.randn(N, generator=gen), -torch.rand(N, generator=gen) - 0.5
    dt, u, gys = torch.rand(T, generator=gen) * 0.2, torch.randn(T, generator=gen), torch.randn(T, generator=gen)
    b, c = torch.randn(T, N, generator=gen), torch.randn(T, N, generator=gen)
    leaves = [t.double().requires_grad_(True) for t in (h0, dt, u, b, c, a)]
    h, (dt_, u_, b_, c_, a_) = leaves[0], leaves[1:]
    states, ys = [h], []
    for j in range(T):
        h = torch.exp(dt_[j] * a_) * h + dt_[j] * u_[j] * b_[j]
        states.append(h)
        ys.append(c_[j] @ h + d_skip * u_[j])
    loss = (torch.stack(ys) * gys.double()).sum() + (h * g_in.double()).sum()
    want = [w.numpy() for w in torch.autograd.grad(loss, leaves)]

    def block(x):  # (T, ...) into a (rows, ...) float32 buffer, as the kernels' block buffers
        out = np.zeros((rows,) + tuple(x.shape[1:]), np.float32)
        out[:len(x)] = x.detach().numpy()
        return out

    e = block(torch.exp(dt.double()[:, None] * a.double()))
    hb = np.zeros((rows + 1, N), np.float32)
    hb[:T + 1] = torch.stack(states).detach().numpy()
    g, dA = g_in.numpy().copy(), np.zeros(N, np.float32)
    dcb, dbb, dus, ddts = block(b * 0), block(b * 0), block(u * 0), block(u * 0)
    run(T, e, hb, block(b), block(c), block(dt), block(u), block(gys), a.numpy().copy(), np.float32(d_skip), g, dA,
        dcb, dbb, dus, ddts)
    for got, ref in ((g, want[0]), (ddts[:T], want[1]), (dus[:T], want[2]), (dbb[:T], want[3]), (dcb[:T], want[4]),
                     (dA, want[5])):
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
    assert dcb[T:].tolist() == [[0.0] * N] * (rows - T)
