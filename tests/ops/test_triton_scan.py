"""The Triton selective scan against the sequential reference, on CPU through Triton's interpreter.

TRITON_INTERPRET=1 must be set before triton is imported, so this module sets it (unless a GPU is present,
where the compiled kernels run on CUDA tensors instead). Skipped when triton is not installed, or when
triton was imported earlier in this process without the interpreter.
"""

import importlib.util
import os
import sys

import pytest
import torch

ON_GPU = torch.cuda.is_available()
if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)
if not ON_GPU:
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("triton was imported without TRITON_INTERPRET=1", allow_module_level=True)
    os.environ["TRITON_INTERPRET"] = "1"

from ssmir.ops import selective_scan_reference  # noqa: E402
from ssmir.ops.selective_scan import resolve_backend, selective_scan, selective_scan_triton  # noqa: E402
from tests.ops.test_selective_scan import _grads, make_inputs  # noqa: E402

DEVICE = "cuda" if ON_GPU else "cpu"


def _on_device(inputs):
    return [None if t is None else t.to(DEVICE) for t in inputs]


@pytest.mark.parametrize(
    "batch,dim,n,length,groups,with_z,grouped,softplus,chunk",
    [
        (2, 8, 4, 37, 2, True, True, True, 16),  # grouped B/C, odd length, three chunks (the last partial)
        (1, 6, 3, 1, 1, True, True, True, 16),  # L = 1; 6 channels per group: blocks of 2
        (2, 4, 5, 19, 1, False, False, False, 16),  # ungrouped, no z, no softplus, N not a power of two
        (1, 3, 2, 33, 3, True, True, True, 32),  # one channel per group, odd channel count
        (1, 4, 2, 64, 1, True, True, True, 16),  # length a multiple of the chunk
    ],
)
def test_triton_matches_reference_values_and_gradients(monkeypatch, batch, dim, n, length, groups, with_z,
                                                       grouped, softplus, chunk):
    monkeypatch.setenv("SSMIR_TRITON_CHUNK", str(chunk))
    torch.manual_seed(0)
    inputs = make_inputs(batch, dim, n, length, groups, with_z=with_z, grouped=grouped)
    weight = torch.randn(batch, dim, length)
    y_ref, g_ref = _grads(selective_scan_reference, inputs, softplus, weight)
    y, g = _grads(selective_scan_triton, _on_device(inputs), softplus, weight.to(DEVICE))
    torch.testing.assert_close(y.cpu(), y_ref, rtol=1e-4, atol=1e-5)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-4)


def test_triton_gradcheck_float64(monkeypatch):
    monkeypatch.setenv("SSMIR_TRITON_CHUNK", "4")  # 9 steps: three chunks
    torch.manual_seed(0)
    u, delta, A, B, C, D, z, bias = _on_device(make_inputs(1, 4, 3, 9, 2, dtype=torch.float64))
    tensors = [t.requires_grad_(True) for t in (u, delta, A, B, C, D, z, bias)]

    def f(u, delta, A, B, C, D, z, bias):
        return selective_scan_triton(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)

    assert torch.autograd.gradcheck(f, tensors, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_inputs_float32_state(monkeypatch, dtype):
    monkeypatch.setenv("SSMIR_TRITON_CHUNK", "16")
    torch.manual_seed(0)
    half = [t.to(dtype) for t in make_inputs(1, 4, 3, 21, 1)]
    y, h = selective_scan_triton(*_on_device(half[:5]), D=half[5].to(DEVICE), z=half[6].to(DEVICE),
                                 delta_bias=half[7].to(DEVICE), delta_softplus=True, return_last_state=True)
    want, h_want = selective_scan_reference(*[t.float() for t in half[:5]], D=half[5].float(), z=half[6].float(),
                                            delta_bias=half[7].float(), delta_softplus=True,
                                            return_last_state=True)
    assert y.dtype == dtype and h.dtype == torch.float32
    torch.testing.assert_close(y.cpu(), want.to(dtype))  # within one unit of the last place
    torch.testing.assert_close(h.cpu(), h_want, rtol=1e-4, atol=1e-5)


def test_triton_constant_and_mixed_b_c(monkeypatch):
    # B constant (D, N) as mamba-ssm allows, C per token: blocks of one channel, gradients summed back
    monkeypatch.setenv("SSMIR_TRITON_CHUNK", "16")
    torch.manual_seed(0)
    u, delta, A, _, C, D, z, bias = make_inputs(2, 4, 3, 20, 1)
    B = torch.randn(4, 3)
    weight = torch.randn(2, 4, 20)
    inputs = [u, delta, A, B, C, D, z, bias]
    y_ref, g_ref = _grads(selective_scan_reference, inputs, True, weight)
    y, g = _grads(selective_scan_triton, _on_device(inputs), True, weight.to(DEVICE))
    torch.testing.assert_close(y.cpu(), y_ref, rtol=1e-4, atol=1e-5)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-4)


def test_triton_backend_by_name_and_device_checks(monkeypatch):
    u, delta, A, B, C, D, z, bias = make_inputs(1, 4, 2, 8, 1)
    y = selective_scan(*_on_device([u, delta, A, B, C, D]), backend="triton")
    torch.testing.assert_close(y.cpu(), selective_scan_reference(u, delta, A, B, C, D), rtol=1e-4, atol=1e-5)
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="GPU tensors"):
            selective_scan_triton(u, delta, A, B, C)
    assert resolve_backend("cpu", "triton") == "triton"


@pytest.mark.parametrize("deterministic", [False, True])
def test_triton_b_c_gradients_atomic_and_deterministic(monkeypatch, deterministic):
    # 8 channels in 2 groups, blocks of 2 channels: two blocks add into each group's dB/dC (atomic adds),
    # or write partials that are summed (torch.use_deterministic_algorithms overrides SSMIR_TRITON_ATOMIC)
    monkeypatch.setenv("SSMIR_TRITON_CHUNK", "16")
    monkeypatch.setenv("SSMIR_TRITON_BLOCK_D", "2")
    monkeypatch.setenv("SSMIR_TRITON_ATOMIC", "1")
    torch.manual_seed(0)
    inputs = make_inputs(1, 8, 2, 20, 2)
    weight = torch.randn(1, 8, 20)
    _, g_ref = _grads(selective_scan_reference, inputs, True, weight)
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        _, g = _grads(selective_scan_triton, _on_device(inputs), True, weight.to(DEVICE))
    finally:
        torch.use_deterministic_algorithms(before)
    for got, want in zip(g, g_ref, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-3, atol=1e-4)
