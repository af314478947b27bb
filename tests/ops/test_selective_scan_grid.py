"""A sample of mamba-ssm's own selective-scan test grid (``tests/ops/test_selective_scan.py`` upstream,
with the parameter lists it keeps commented out), run on CPU against every CPU backend.

Upstream compares ``selective_scan_fn`` with its ``selective_scan_ref``; here the oracle is ssmir's sequential
reference (itself checked by gradcheck). Shapes, dtypes and tolerances are upstream's: batch 2, 4 channels,
8 states; B/C per token (grouped or not) or constant (D, N) in the weight dtype; D and delta bias float32;
float16/bfloat16 inputs. The whole grid (6,240 cases per backend) was run from a temporary folder against
upstream's own test file; see docs/differences.md.
"""

import itertools

import pytest
import torch

from ssmir.ops import selective_scan, selective_scan_reference

SEQLENS = [8, 16, 32, 64, 128, 256, 372, 512, 784, 1024, 1134, 2048, 4096]
ITYPES = [torch.float32, torch.float16, torch.bfloat16]


def _grid():
    cases = []
    for var_b, var_c, groups, has_d, has_z, has_bias, softplus, last, seqlen, itype in itertools.product(
            [False, True], [False, True], [1, 2], [False, True], [False, True], [False, True], [False, True],
            [False, True], SEQLENS, ITYPES):
        if groups > 1 and (not var_b or not var_c):
            continue  # upstream skips these
        cases.append((var_b, var_c, groups, has_d, has_z, has_bias, softplus, last, seqlen, itype))
    return cases


# every 149th case of the 6,240 (a prime stride: every option and length appears), short lengths only
SAMPLE = [c for c in _grid()[::149] if c[8] <= 1134]


def _inputs(var_b, var_c, groups, has_d, has_z, has_bias, seqlen, itype):
    torch.manual_seed(0)
    batch, dim, dstate = 2, 4, 8
    A = -0.5 * torch.rand(dim, dstate)

    def bc(variable):  # per token in the input dtype, or constant (D, N) in the weight dtype
        if not variable:
            return torch.randn(dim, dstate)
        shape = (batch, dstate, seqlen) if groups == 1 else (batch, groups, dstate, seqlen)
        return torch.randn(*shape, dtype=itype)

    B, C = bc(var_b), bc(var_c)
    D = torch.randn(dim) if has_d else None
    z = torch.randn(batch, dim, seqlen, dtype=itype) if has_z else None
    bias = 0.5 * torch.rand(dim) if has_bias else None
    u = torch.randn(batch, dim, seqlen, dtype=itype)
    delta = (0.5 * torch.rand(batch, dim, seqlen)).to(itype)
    return [u, delta, A, B, C, D, z, bias]


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("case", SAMPLE, ids=lambda c: "-".join(str(v).replace("torch.", "") for v in c))
def test_upstream_grid_sample(backend, case):
    var_b, var_c, groups, has_d, has_z, has_bias, softplus, last, seqlen, itype = case
    rtol, atol = (6e-4, 2e-3) if itype == torch.float32 else (3e-3, 5e-3)
    if itype == torch.bfloat16:
        rtol, atol = 3e-2, 5e-2
    tensors = _inputs(var_b, var_c, groups, has_d, has_z, has_bias, seqlen, itype)
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in tensors]
    refs = [None if t is None else t.clone().requires_grad_(True) for t in tensors]
    u, delta, A, B, C, D, z, bias = leaves
    out = selective_scan(u, delta, A, B, C, D, z=z, delta_bias=bias, delta_softplus=softplus,
                         return_last_state=last, backend=backend)
    ru, rdelta, rA, rB, rC, rD, rz, rbias = refs
    want = selective_scan_reference(ru, rdelta, rA, rB, rC, rD, z=rz, delta_bias=rbias, delta_softplus=softplus,
                                    return_last_state=last)
    if last:
        (out, state), (want, state_ref) = out, want
        assert state.dtype == torch.float32  # as mamba-ssm: the state stays float32 for half inputs
        torch.testing.assert_close(state, state_ref, rtol=rtol, atol=atol)
    assert out.dtype == itype
    torch.testing.assert_close(out, want, rtol=rtol, atol=atol)
    g = torch.randn_like(out)
    grads = torch.autograd.grad(out, [t for t in leaves if t is not None], g)
    grads_ref = torch.autograd.grad(want, [t for t in refs if t is not None], g)
    for got, exp in zip(grads, grads_ref, strict=True):
        assert got.dtype == exp.dtype
        if itype == torch.float32:  # upstream's (commented) gradient tolerances, which half inputs miss on CUDA too
            torch.testing.assert_close(got, exp, rtol=max(rtol, 1e-3) * 5, atol=max(atol, 1e-3) * 10)


def test_sample_covers_every_option():
    options = list(zip(*SAMPLE, strict=True))
    for i in (0, 1, 3, 4, 5, 6, 7):  # variable B, variable C, D, z, delta bias, softplus, last state
        assert set(options[i]) == {False, True}
    assert set(options[2]) == {1, 2} and set(options[9]) == set(ITYPES) and len(set(options[8])) >= 5


def test_complex_weights_are_refused_clearly():
    u = torch.randn(1, 2, 4)
    with pytest.raises(NotImplementedError, match="complex"):
        selective_scan(u, u, torch.randn(2, 3, dtype=torch.complex64), torch.randn(1, 3, 4), torch.randn(1, 3, 4))
