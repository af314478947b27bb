"""Parameters and projections shared by every Mamba-style token mixer in ssmir.

A mixer with K heads of d channels each owns, per head, an x projection (d -> dt_rank + 2N), a dt
projection (dt_rank -> d) with bias, and the S4D state matrices ``A_logs`` and skip ``Ds``. The names
(``x_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``, ``A_logs``, ``Ds``) are those of the
official VMamba-style code, so their checkpoints load unchanged.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ssmir.ops.export_scan import exporting
from ssmir.ops.head_scan import scan_heads_projected
from ssmir.ops.scan_orders import four_way_orders, four_way_orders_traced


def add_scan_parameters(module: nn.Module, heads: int, d_head: int, d_state: int, dt_rank: int) -> None:
    """Register the per-head scan parameters on ``module`` (uninitialised; see ``init_scan_parameters``)."""
    module.x_proj_weight = nn.Parameter(torch.empty(heads, dt_rank + 2 * d_state, d_head))
    module.dt_projs_weight = nn.Parameter(torch.empty(heads, d_head, dt_rank))
    module.dt_projs_bias = nn.Parameter(torch.empty(heads, d_head))
    module.A_logs = nn.Parameter(torch.empty(heads * d_head, d_state))
    module.Ds = nn.Parameter(torch.empty(heads * d_head))
    module.A_logs._no_weight_decay = True
    module.Ds._no_weight_decay = True


@torch.no_grad()
def init_scan_parameters(module: nn.Module, dt_min=0.001, dt_max=0.1, dt_init="random", dt_scale=1.0,
                         dt_init_floor=1e-4) -> None:
    """Mamba's initialisation: Linear-default x projections, dt so that softplus(bias) is log-uniform in
    [dt_min, dt_max], S4D-real A (A_log = log 1..N), D = 1."""
    d_head, dt_rank = module.dt_projs_weight.shape[1:]
    bound = 1.0 / math.sqrt(d_head)
    module.x_proj_weight.uniform_(-bound, bound)
    std = dt_rank**-0.5 * dt_scale
    if dt_init == "constant":
        module.dt_projs_weight.fill_(std)
    elif dt_init == "random":
        module.dt_projs_weight.uniform_(-std, std)
    else:
        raise ValueError(f"dt_init {dt_init!r} is not 'random' or 'constant'")
    dt = torch.exp(torch.rand_like(module.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    module.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
    d_state = module.A_logs.shape[1]
    module.A_logs.copy_(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).expand_as(module.A_logs))
    module.Ds.fill_(1.0)


def scan_tokens(module: nn.Module, x: torch.Tensor, orders: torch.Tensor | None = None,
                c_offset: torch.Tensor | None = None, activation: str | None = None) -> torch.Tensor:
    """Project each head's tokens to (dt, B, C) and scan head k along ``orders[k]`` (or per batch element,
    (B, K, L)): x (B, L, K, d) -> (B, L, K, d) float32, each output at its token. ``activation`` ('silu' or
    None) is applied to x first; ``c_offset`` (B, L, K, N) is added to C by scan position (MambaIRv2's
    prompts). The projections are per token, so they are taken in token order; ``ssmir.ops.head_scan``
    reads the tokens in each head's order without copying them (``scan_heads_projected``: in inference on
    CPU, activation, projections and scan are one compiled kernel).
    """
    return scan_heads_projected(x, module.x_proj_weight, module.dt_projs_weight, module.dt_projs_bias,
                                -torch.exp(module.A_logs), module.Ds, orders, c_offset, activation)


def four_way_scan(module: nn.Module, x: torch.Tensor, h: int, w: int, activation: str | None = None) -> torch.Tensor:
    """VMamba's SS2D core: every channel scanned along rows, columns and both reversed (four heads of the
    module's scan parameters), the four outputs summed. x (B, H*W, d) tokens in row-major order ->
    (B, H*W, d) float32.
    """
    b, length, d = x.shape
    heads = x.unsqueeze(2).expand(b, length, 4, d)  # every head scans all channels
    orders = four_way_orders_traced(h, w, x.device) if exporting() else four_way_orders(h, w)
    return scan_tokens(module, heads, orders, activation=activation).sum(dim=2)
