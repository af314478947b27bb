"""Layout-level replacements of PyTorch ops (oneDNN 1x1 conv for token linears, channels-last pixel shuffle)
against the ops they replace."""

import pytest
import torch
import torch.nn.functional as F

from ssmir.layers.resample import PixelShuffle, pixel_shuffle
from ssmir.ops import linear as token_linear_module
from ssmir.ops.linear import TokenLinear, token_linear


@pytest.mark.parametrize("layout", ["contiguous", "half_of_rows", "batched"])
def test_token_linear_equals_f_linear_with_gradients(layout):
    torch.manual_seed(0)
    rows = token_linear_module.MIN_ROWS + 37
    if layout == "contiguous":
        x = torch.randn(1, rows, 24)
    elif layout == "half_of_rows":  # the second half of a projection's output, as the mixers pass it
        x = torch.randn(1, rows, 48)[..., 24:]
    else:
        x = torch.randn(3, rows // 3 + 1, 24)
    x.requires_grad_(True)
    w = torch.randn(40, 24, requires_grad=True)
    b = torch.randn(40, requires_grad=True)
    got, want = token_linear(x, w, b), F.linear(x, w, b)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    for a, e in zip(torch.autograd.grad(got, (x, w, b), g), torch.autograd.grad(want, (x, w, b), g), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-3)


def test_token_linear_module_is_an_nn_linear():
    torch.manual_seed(0)
    layer = TokenLinear(16, 8)
    assert isinstance(layer, torch.nn.Linear) and set(layer.state_dict()) == {"weight", "bias"}
    x = torch.randn(2, token_linear_module.MIN_ROWS, 16)
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    small = torch.randn(5, 16, dtype=torch.float64)  # below MIN_ROWS and float64: F.linear itself
    d = TokenLinear(16, 8).double()
    assert torch.equal(d(small), F.linear(small, d.weight, d.bias))


@pytest.mark.parametrize("r", [2, 3])
@pytest.mark.parametrize("channels_last", [True, False])
def test_pixel_shuffle_equals_aten(r, channels_last):
    x = torch.randn(2, 5 * r * r, 6, 7)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    got = pixel_shuffle(x, r)
    assert torch.equal(got, F.pixel_shuffle(x, r))
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert torch.equal(PixelShuffle(r)(x), got)
