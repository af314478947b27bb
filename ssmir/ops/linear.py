"""Linear layers over tokens, run on CPU as oneDNN 1x1 convolutions.

The networks hold their features as tokens, (batch, L, C), and project them with linear layers. On CPU,
``F.linear`` is an MKL GEMM, which for the shapes of image models (tens of thousands of rows, 16-512
columns) reaches about half of what oneDNN's 1x1 convolution does on the same numbers (measured on a 2-core
AMD EPYC: 65,536 x 128 -> 128 in 14 ms against 29-39 ms; 4,096 x 256 -> 256 in 3.1 against 4.8 ms). The
tokens are passed to the convolution as a channels-last (1, C, 1, rows) view, so nothing is copied, and the
result comes back as a view in token layout. Small inputs, other devices, ONNX export and ``torch.compile``
use ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ssmir.ops.export_scan import compiling, exporting

MIN_ROWS = 4096  # below this the GEMM's lower overhead wins


def token_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x (..., C_in); on CPU in float32 through a 1x1 convolution."""
    c_in = x.shape[-1]
    rows = x.numel() // max(c_in, 1)
    if (x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or rows < MIN_ROWS
            or x.stride(-1) != 1 or exporting() or compiling()):
        return F.linear(x, weight, bias)
    flat = x.reshape(rows, c_in)  # a view for the layouts the models pass (contiguous rows, or halves of rows)
    maps = flat.unsqueeze(0).unsqueeze(0).permute(0, 3, 1, 2)  # (1, C_in, 1, rows), channels-last strides
    y = F.conv2d(maps, weight[:, :, None, None], bias)  # channels-last out: (1, C_out, 1, rows)
    return y.permute(0, 2, 3, 1).reshape(*x.shape[:-1], weight.shape[0])


def token_linear_halves(x: torch.Tensor, layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """The two halves of ``layer(x)``'s output features as two products, each a contiguous tensor (where
    ``layer(x).chunk(2, -1)`` gives strided views that norms and gates would copy)."""
    half = layer.out_features // 2
    weight, bias = layer.weight, layer.bias
    return (token_linear(x, weight[:half], None if bias is None else bias[:half]),
            token_linear(x, weight[half:], None if bias is None else bias[half:]))


class TokenLinear(nn.Linear):
    """``nn.Linear`` (same parameters, same state_dict keys) whose forward is ``token_linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return token_linear(x, self.weight, self.bias)
