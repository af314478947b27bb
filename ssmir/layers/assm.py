"""MambaIRv2's Attentive State Space Module (ASSM).

Each token is routed to one of ``num_tokens`` learned prompts; tokens are sorted by their route so
that semantically similar ones become neighbours (semantic-guided neighbouring), scanned once by a
selective scan whose C matrix is offset by the token's prompt (the attentive state-space equation),
and put back in place.

Routing: training samples the route with a straight-through Gumbel softmax, as the official code
does. In eval the official code samples too, so its outputs change from run to run; ssmir routes
by the argmax of the route logits (``routing="argmax"``, the default) and keeps the sampled route
available (``routing="gumbel"``). Tokens are sorted with a stable sort in both cases.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ssmir.layers.ssm_heads import add_scan_parameters, init_scan_parameters, scan_tokens
from ssmir.ops.export_scan import exporting
from ssmir.ops.linear import TokenLinear

ROUTINGS = ("argmax", "gumbel")


class PromptedSelectiveScan(nn.Module):
    """One-direction selective scan with per-token prompts added to C: (B, L, D), (B, L, N) -> (B, L, D).

    Parameter names are the official ones (a single head: leading dimension 1).
    """

    def __init__(self, d_model: int, d_state: int = 16):
        super().__init__()
        add_scan_parameters(self, 1, d_model, d_state, math.ceil(d_model / 16))
        init_scan_parameters(self)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Tokens (B, L, D) scanned in ``order`` (B, L), the prompts (B, L, N) added to C by scan position (the
        attentive state-space equation; position t takes token t's prompt, as the official code does) ->
        (B, L, D), each output at its token."""
        y = scan_tokens(self, x.unsqueeze(2), order.unsqueeze(1), c_offset=prompt.unsqueeze(2))
        return y.squeeze(2)


class AttentiveStateSpace(nn.Module):
    """ASSM: (B, L, C) tokens of an H x W map, plus the layer's prompt basis -> (B, L, C)."""

    def __init__(self, dim: int, d_state: int, num_tokens: int = 64, inner_rank: int = 128, mlp_ratio: float = 2.0,
                 routing: str = "argmax"):
        super().__init__()
        if routing not in ROUTINGS:
            raise ValueError(f"routing {routing!r} is not one of {ROUTINGS}")
        self.routing = routing
        self.dim, self.d_state, self.num_tokens = dim, d_state, num_tokens
        hidden = int(dim * mlp_ratio)
        self.selectiveScan = PromptedSelectiveScan(hidden, d_state)
        self.out_norm = nn.LayerNorm(hidden)
        self.out_proj = TokenLinear(hidden, dim)
        self.in_proj = nn.Sequential(nn.Conv2d(dim, hidden, 1))
        self.CPE = nn.Sequential(nn.Conv2d(hidden, hidden, 3, 1, 1, groups=hidden))  # conditional position enc.
        self.embeddingB = nn.Embedding(num_tokens, inner_rank)
        nn.init.uniform_(self.embeddingB.weight, -1 / num_tokens, 1 / num_tokens)
        self.route = nn.Sequential(TokenLinear(dim, dim // 3), nn.GELU(), TokenLinear(dim // 3, num_tokens),
                                   nn.LogSoftmax(dim=-1))

    def _prompts(self, x: torch.Tensor, basis: nn.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token prompts (B, L, d_state) and route index (B, L)."""
        prompts = self.embeddingB.weight @ basis.weight  # (num_tokens, d_state)
        if self.training or self.routing == "gumbel":
            logits = self.route(x)  # (B, L, num_tokens), log-probabilities
            policy = F.gumbel_softmax(logits, hard=True, dim=-1)  # one-hot forward, soft gradient
            return policy @ prompts, policy.detach().argmax(dim=-1)
        index = self.route[:-1](x).argmax(dim=-1)  # the log-softmax shifts each row: same argmax, skipped
        return prompts[index], index

    def forward(self, x: torch.Tensor, size: tuple[int, int], basis: nn.Embedding) -> torch.Tensor:
        b, length, c = x.shape
        h, w = size
        prompt, route = self._prompts(x, basis)
        # (B, L): semantic neighbours side by side, in token order within a route: the stable sort of the routes,
        # as the argsort of keys that are all distinct (an ordinary sort, so that it exports to ONNX's TopK)
        if exporting():
            order = torch.argsort(route * length + torch.arange(length, device=route.device), dim=-1)
        else:
            order = torch.argsort(route, dim=-1, stable=True)  # the same order, without the keys

        feats = self.in_proj(rearrange(x, "b (h w) c -> b c h w", h=h, w=w))
        feats = feats * torch.sigmoid(self.CPE(feats))
        feats = rearrange(feats, "b c h w -> b (h w) c")
        # the scan reads the tokens in route order and writes each output back to its token, so the per-token
        # norm and projection that follow need no reordering
        y = self.selectiveScan(feats, prompt, order)
        return self.out_proj(self.out_norm(y.to(x.dtype)))
