"""Layout-level replacements of PyTorch ops (oneDNN 1x1 conv for token linears, channels-last pixel shuffle)
against the ops they replace."""

import pytest
import torch
import torch.nn.functional as F

from ssmir.layers.resample import PixelShuffle, PixelShuffleUpscale, pixel_shuffle, subpixel_conv_weights
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


@pytest.mark.parametrize("r", [2, 3, 4])
@pytest.mark.parametrize("bias", [True, False])
def test_subpixel_conv_equals_conv_after_shuffle(r, bias):
    """The folded conv on the small grid is the conv on the shuffled map, borders included (float64), and its
    weights carry the gradient back to the conv's own."""
    torch.manual_seed(r)
    conv = torch.nn.Conv2d(3, 2, 3, padding=1, bias=bias).double()
    x = torch.randn(2, 3 * r * r, 5, 4, dtype=torch.float64)
    weight, b = subpixel_conv_weights(conv, r)
    got = F.pixel_shuffle(F.conv2d(x, weight, b, padding=1), r)
    want = conv(F.pixel_shuffle(x, r))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    got.square().sum().backward()
    g_fold = conv.weight.grad.clone()
    conv.zero_grad()
    want.square().sum().backward()
    torch.testing.assert_close(g_fold, conv.weight.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_upscale_then_conv(scale):
    """``then_conv`` in inference (folded, channels-last) gives ``conv(upscale(x))``; with gradients it is that."""
    torch.manual_seed(scale)
    up, conv = PixelShuffleUpscale(scale, 8), torch.nn.Conv2d(8, 3, 3, padding=1)
    x = torch.randn(1, 8, 9, 7).contiguous(memory_format=torch.channels_last)
    want = conv(up(x))
    with torch.no_grad():
        got = up.then_conv(x, conv)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert torch.equal(up.then_conv(x, conv), want)  # grad mode: the plain path
    other = torch.nn.Conv2d(8, 3, 5, padding=2)  # not a 3x3 conv: the plain path in inference too
    with torch.no_grad():
        assert torch.equal(up.then_conv(x, other), other(up(x)))
