"""The Mamba mixers' gated output norm, ``layer_norm(y) * silu(z)``, in one pass on CPU.

PyTorch runs it as three operations, each writing a new (tokens, channels) tensor; in float32 inference on CPU
``layer_norm`` with a gate runs ``ssmir.ops._numba_scan.layer_norm_rows``, which reads y and z once and writes
the result once: (65536, 128) 8.1 against 15.6 ms, (16384, 48) 1.9 against 4.2 ms (2-core AMD EPYC,
docs/benchmarks.md). Without a gate PyTorch's own norm is as fast and is used. Training, other devices and
dtypes, ONNX export and ``torch.compile`` take the PyTorch operations.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ssmir.ops.export_scan import compiling, exporting

MIN_ROWS = 1024  # below this PyTorch's lower call overhead wins


def _rows(t: torch.Tensor) -> torch.Tensor | None:
    """t (..., C) as a (rows, C) view with unit channel stride, or None where that needs a copy."""
    if t.stride(-1) != 1:
        return None
    try:
        return t.view(-1, t.shape[-1])
    except RuntimeError:
        return None


def _compiled(x: torch.Tensor, *others: torch.Tensor | None) -> bool:
    if (x.device.type != "cpu" or x.dtype != torch.float32 or exporting() or compiling()
            or x.numel() < MIN_ROWS * x.shape[-1]):
        return False
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *others)):
        return False
    from ssmir.ops.selective_scan import numba_available

    return numba_available() and all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu")
                                     for t in others)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, eps: float = 1e-5,
               gate: torch.Tensor | None = None) -> torch.Tensor:
    """``F.layer_norm`` over the last dimension of x (..., C), times ``F.silu(gate)`` when a gate (..., C) is
    given."""
    rows = _rows(x) if gate is not None and gate.shape == x.shape and _compiled(x, weight, bias, gate) else None
    grows = None if rows is None else _rows(gate)
    if grows is None:
        y = F.layer_norm(x, x.shape[-1:], weight, bias, eps)
        return y if gate is None else y * F.silu(gate)
    from ssmir.ops.selective_scan import _numba_kernels, _set_numba_threads

    _set_numba_threads()
    y = torch.empty(x.shape, dtype=x.dtype)
    w = weight.detach().contiguous()
    b = w if bias is None else bias.detach().contiguous()
    _numba_kernels().layer_norm_rows(rows.detach().numpy(), w.numpy(), b.numpy(), bias is not None,
                                     np.float32(eps), grows.detach().numpy(), y.view(-1, x.shape[-1]).numpy())
    return y


class GatedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension (same parameters and state_dict keys) whose ``forward(x, gate)``
    also multiplies by ``silu(gate)``, through ``layer_norm``."""

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps, gate)
