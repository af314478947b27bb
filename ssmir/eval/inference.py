"""Run a restoration model on an image of any size.

Models have size constraints (EAMamba's UNet needs H and W divisible by 8, EmambaIR multiples of 4
and at least 60 pixels); ``run_model`` pads by reflection to the model's multiple and minimum, runs
it, and crops the output back (scaled by the model's upscale factor). The model's own ``forward`` is left untouched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def size_multiple(model: nn.Module) -> int:
    """The multiple that H and W must have for ``model`` (8 for the EAMamba UNet, else 1)."""
    return int(getattr(model, "size_multiple", 1))


def min_size(model: nn.Module) -> int:
    """The smallest H and W ``model`` accepts (EmambaIR's coarsest level needs 15 pixels)."""
    return int(getattr(model, "min_size", 1))


def eval_pad_multiple(model: nn.Module) -> int:
    """The multiple to which the model's official test pipeline pads inputs before anything else (the
    self-ensemble included): 8 for the EAMamba networks (``calc_padding(h, w, base=8)`` in every official
    test dataset), else 1 (the model's own forward pads as its official evaluation does)."""
    return int(getattr(model, "eval_pad_multiple", 1))


def upscale_factor(model: nn.Module) -> int:
    return int(getattr(model, "upscale", 1) or 1)


def pad_to_multiple(x: torch.Tensor, multiple: int, minimum: int = 1) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad (B, C, H, W) at the bottom/right to multiples of ``multiple`` of at least ``minimum``.

    Returns the padded tensor and the original (H, W). Reflection padding where the image is large
    enough for it, replication otherwise.
    """
    h, w = x.shape[-2:]
    ph = max(h, minimum) + (-max(h, minimum)) % multiple - h
    pw = max(w, minimum) + (-max(w, minimum)) % multiple - w
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


@torch.no_grad()
def run_model(model: nn.Module, x: torch.Tensor, *extra: torch.Tensor) -> torch.Tensor:
    """Forward (B, C, H, W) of any H, W through ``model``; extra inputs (e.g. events) are padded alike.

    Inputs are reflect-padded at the bottom/right to the model's multiple, or to the multiple its official
    test pads to where that is larger (EAMambaSR: 8), so that an image gives the official pipeline's result.
    """
    if x.dim() != 4:
        raise ValueError(f"run_model: expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    m, lo = max(size_multiple(model), eval_pad_multiple(model)), min_size(model)
    xp, (h, w) = pad_to_multiple(x, m, lo)
    extra = tuple(pad_to_multiple(e, m, lo)[0] for e in extra)
    out = model(xp, *extra)
    s = upscale_factor(model)
    return out[..., : h * s, : w * s]
