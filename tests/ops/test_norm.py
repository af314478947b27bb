import pytest
import torch
import torch.nn.functional as F

from ssmir.ops.norm import GatedLayerNorm, layer_norm
from ssmir.ops.selective_scan import numba_available


@pytest.mark.skipif(not numba_available(), reason="numba is not installed")
@pytest.mark.parametrize("rows, channels", [(2048, 48), (1500, 130)])
def test_gated_norm_kernel_equals_the_pytorch_operations(rows, channels):
    """The one-pass kernel (float32 inference on CPU) against layer_norm then * silu(z), with the gate a strided
    half of a wider tensor (as ``token_linear_halves``/``chunk`` give it) and without a bias."""
    torch.manual_seed(0)
    x = torch.randn(2, rows // 2, channels) * 3 + 1
    xz = torch.randn(2, rows // 2, 2 * channels)
    z = xz[..., channels:]  # row stride 2C
    w, b = torch.randn(channels), torch.randn(channels)
    with torch.no_grad():
        for bias in (b, None):
            want = F.layer_norm(x, (channels,), w, bias) * F.silu(z)
            got = layer_norm(x, w, bias, 1e-5, gate=z)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert torch.equal(layer_norm(x, w, b), F.layer_norm(x, (channels,), w, b))  # no gate: PyTorch's


def test_gated_layer_norm_module_keeps_layer_norm_keys_and_gradients():
    torch.manual_seed(0)
    norm = GatedLayerNorm(16)
    assert set(norm.state_dict()) == {"weight", "bias"}
    x = torch.randn(3, 2048, 16, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 2048, 16, dtype=torch.float64, requires_grad=True)
    norm = norm.double()
    out = norm(x, z)  # float64 with gradients: the PyTorch operations
    torch.testing.assert_close(out, F.layer_norm(x, (16,), norm.weight, norm.bias) * F.silu(z))
    out.sum().backward()
    assert x.grad is not None and z.grad is not None and norm.weight.grad is not None
