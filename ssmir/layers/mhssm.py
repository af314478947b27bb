"""EAMamba's Multi-Head Selective Scan Module (MHSSM), the token mixer of its blocks.

The inner channels are either split into ``scan_count`` heads ("concate" merge) or copied to
every head ("add" merge). Each head scans its channels along its own all-around order
(``ssmir.ops.scan_orders.all_around_orders``) with its own projections and state matrices;
the heads' outputs are put back in row-major order and concatenated or summed.

Parameter names (``in_proj``, ``conv``, ``x_proj_weight``, ``dt_projs_weight``, ``dt_projs_bias``,
``A_logs``, ``Ds``, ``out_norm``, ``out_proj``) are the official ones so that released
checkpoints load unchanged.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ssmir.layers.ssm_heads import add_scan_parameters, init_scan_parameters, scan_tokens
from ssmir.ops.linear import TokenLinear, token_linear_halves
from ssmir.ops.scan_orders import SCAN_COUNTS, SCAN_TYPES, all_around_orders

MERGE_METHODS = ("add", "concate")


@dataclass
class MHSSMConfig:
    """EAMamba's ``mamba_cfg`` (YAML keys), validated."""

    scan_type: str | None = None
    scan_count: int = 1
    scan_merge_method: str = "concate"
    use_checkpoint: bool = False
    conv_2d: bool = False
    disable_z_branch: bool = False
    d_state: int = 16
    d_conv: int = 4
    expand: float = 2
    dt_rank: int | str = "auto"
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init: str = "random"
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    conv_bias: bool = True
    bias: bool = False

    # keys of the official constructor that do not change the network
    _IGNORED = ("layer_idx", "device", "dtype")

    @classmethod
    def from_dict(cls, cfg: dict | None) -> MHSSMConfig:
        cfg = dict(cfg or {})
        known = {f.name for f in fields(cls)}
        for key in cls._IGNORED:
            cfg.pop(key, None)
        unknown = sorted(set(cfg) - known)
        if unknown:  # the official ExtendedMamba takes **kwargs and ignores them
            warnings.warn(f"mamba_cfg: ignoring unknown key(s) {unknown}; known keys: {sorted(known)}", stacklevel=4)
        out = cls(**{k: v for k, v in cfg.items() if k in known})
        if isinstance(out.scan_type, str):
            out.scan_type = None if out.scan_type.lower() == "none" else out.scan_type.lower()
        if out.scan_type not in SCAN_TYPES:
            raise ValueError(f"mamba_cfg.scan_type {out.scan_type!r} is not one of {SCAN_TYPES}")
        if out.scan_count not in SCAN_COUNTS:
            raise ValueError(f"mamba_cfg.scan_count {out.scan_count!r} is not one of {SCAN_COUNTS}")
        if out.scan_count > 1 and out.scan_merge_method not in MERGE_METHODS:
            raise ValueError(f"mamba_cfg.scan_merge_method {out.scan_merge_method!r} is not one of {MERGE_METHODS}")
        if out.dt_init not in ("random", "constant"):
            raise ValueError(f"mamba_cfg.dt_init {out.dt_init!r} is not 'random' or 'constant'")
        return out


class MultiHeadSelectiveScan(nn.Module):
    """MHSSM: (B, L, C) tokens of an H x W map -> (B, L, C)."""

    def __init__(self, d_model: int, cfg: MHSSMConfig):
        super().__init__()
        self.cfg = cfg
        self.d_model = d_model
        self.d_state = cfg.d_state
        self.d_inner = int(cfg.expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if cfg.dt_rank == "auto" else int(cfg.dt_rank)
        self.heads = cfg.scan_count
        self.concat_heads = cfg.scan_merge_method == "concate" or self.heads == 1
        if self.concat_heads and self.d_inner % self.heads:
            warnings.warn(f"MHSSM: inner width {self.d_inner} is not divisible by scan_count {self.heads}; built with "
                          f"{self.d_inner // self.heads} channels per head as the official code does, which cannot "
                          "run", stacklevel=2)
        self.d_head = self.d_inner // self.heads if self.concat_heads else self.d_inner

        self.in_proj = TokenLinear(d_model, self.d_inner * (1 if cfg.disable_z_branch else 2), bias=cfg.bias)
        if cfg.conv_2d:
            self.conv = nn.Conv2d(self.d_inner, self.d_inner, cfg.d_conv, padding=(cfg.d_conv - 1) // 2,
                                  groups=self.d_inner, bias=cfg.conv_bias)
        else:
            self.conv = nn.Conv1d(self.d_inner, self.d_inner, cfg.d_conv, padding=cfg.d_conv - 1,
                                  groups=self.d_inner, bias=cfg.conv_bias)
        self.out_norm = nn.LayerNorm(self.d_inner)
        self.out_proj = TokenLinear(self.d_inner, d_model, bias=cfg.bias)

        add_scan_parameters(self, self.heads, self.d_head, self.d_state, self.dt_rank)
        self.reset_ssm_parameters()

    def reset_ssm_parameters(self):
        """The official initialisation (``ssmir.layers.ssm_heads.init_scan_parameters``)."""
        c = self.cfg
        init_scan_parameters(self, c.dt_min, c.dt_max, c.dt_init, c.dt_scale, c.dt_init_floor)

    def _maybe_checkpoint(self, fn, x):
        if self.cfg.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(fn, x, use_reentrant=False)
        return fn(x)

    def forward(self, tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Token layout throughout: (B, L, C) in, projections per token, the heads scanned in their orders by
        ``scan_tokens`` (no gather or transposition of the features), (B, L, C) out."""
        b, length, _ = tokens.shape
        h, w = size
        k, d = self.heads, self.d_head
        if self.concat_heads and k * d != self.d_inner:
            raise ValueError(f"MHSSM: inner width {self.d_inner} does not split into scan_count={k} heads")

        def project_in(t):  # the x and z halves as separate (B, L, d_inner) tensors
            return (self.in_proj(t), None) if self.cfg.disable_z_branch else token_linear_halves(t, self.in_proj)

        if self.cfg.use_checkpoint and torch.is_grad_enabled():
            x, z = checkpoint(project_in, tokens, use_reentrant=False)
        else:
            x, z = project_in(tokens)

        if self.cfg.conv_2d:  # a channels-last view of the tokens: the depth-wise conv reads them in place
            x = self._maybe_checkpoint(self.conv, x.view(b, h, w, self.d_inner).permute(0, 3, 1, 2))
            x = x.permute(0, 2, 3, 1).reshape(b, length, self.d_inner)
        else:
            x = self._maybe_checkpoint(self.conv, x.transpose(1, 2))[..., :length].transpose(1, 2)
        # (B, L, d_inner) before the silu, which the scan applies as it reads them
        heads = x.view(b, length, k, d) if self.concat_heads else x.unsqueeze(2).expand(b, length, k, d)
        y = scan_tokens(self, heads, all_around_orders(self.cfg.scan_type, k, h, w), activation="silu")
        y = y.reshape(b, length, k * d) if self.concat_heads else y.sum(dim=2)

        y = self.out_norm(y.to(tokens.dtype))
        if z is not None:
            y = y * F.silu(z)
        return self._maybe_checkpoint(self.out_proj, y)
