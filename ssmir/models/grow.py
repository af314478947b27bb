"""Grow a trained EAMamba UNet deeper without changing what it computes (Net2DeeperNet, Chen et al., ICLR 2016).

Every ``MambaFormerBlock`` is residual twice over (``x + MHSSM(norm1(x))``, then ``x + mixer(norm2(x))``), so a
block whose two last projections (the MHSSM's ``out_proj`` and the channel mixer's ``project_out``) are zero is
the identity. ``deepen_eamamba`` builds the same UNet with more blocks per level, copies every trained block into
its place, and appends the new blocks at the end of their level with those two projections zeroed: the grown
network gives the trained network's output exactly, and training then has more capacity to use from the trained
network's quality instead of from scratch. The new blocks' other weights keep EAMamba's initialisation, and their
zeroed projections have non-zero gradients from the first step.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ssmir.models.eamamba import EAMamba, MambaFormerBlock
from ssmir.models.registry import create

# (level, its entry in num_blocks; None for num_refinement_blocks); the decoder levels repeat the encoder's counts
LEVELS = (("encoder_level1", 0), ("encoder_level2", 1), ("encoder_level3", 2), ("latent", 3),
          ("decoder_level3", 2), ("decoder_level2", 1), ("decoder_level1", 0), ("refinement", None))


def _zero_residual_branches(block: MambaFormerBlock) -> None:
    """Make ``block`` the identity: zero the last projection of both residual branches."""
    out = getattr(block.ffn, "project_out", None)
    if out is None:
        raise ValueError(f"deepen_eamamba: the channel mixer {type(block.ffn).__name__} has no project_out to zero")
    for layer in (block.mamba.out_proj, out):
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)


def deepen_eamamba(model: nn.Module, num_blocks: Sequence[int], num_refinement_blocks: int) -> EAMamba:
    """``model`` (an ``EAMamba`` built by ``ssmir.models.create``/``load_model``) with more blocks per level.

    ``num_blocks`` (4 counts: levels 1-3 and the latent; the decoder mirrors the encoder) and
    ``num_refinement_blocks`` must each be at least the model's own. Returns a new model (eval mode, on the
    model's device and dtype) whose output equals ``model``'s for every input; ``model`` is not changed.
    """
    if not isinstance(model, EAMamba) or getattr(model, "ssmir_config", None) is None:
        raise ValueError(f"deepen_eamamba: needs an EAMamba UNet built by ssmir (ssmir.load_model), "
                         f"got {type(model).__name__}")
    args = copy.deepcopy(model.ssmir_config["args"])
    old = [len(getattr(model, name)) for name, _ in LEVELS]
    new_counts = [int(n) for n in num_blocks]
    if len(new_counts) != 4:
        raise ValueError(f"deepen_eamamba: num_blocks needs 4 counts (levels 1-3, latent), got {list(num_blocks)}")
    new = [new_counts[i] if i is not None else int(num_refinement_blocks) for _, i in LEVELS]
    for (name, _), n_old, n_new in zip(LEVELS, old, new, strict=True):
        if n_new < n_old:
            raise ValueError(f"deepen_eamamba: {name} has {n_old} blocks; it can grow, not shrink to {n_new}")
    args["num_blocks"] = new_counts
    args["num_refinement_blocks"] = int(num_refinement_blocks)
    reference = next(model.parameters())
    grown = create(model.ssmir_config["name"], **args).to(device=reference.device, dtype=reference.dtype)

    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected:  # every trained tensor has its place in the grown network
        raise RuntimeError(f"deepen_eamamba: trained weights without a place: {unexpected[:3]}")
    fresh = {f"{name}.{i}." for (name, _), n_old, n_new in zip(LEVELS, old, new, strict=True)
             for i in range(n_old, n_new)}
    if any(not any(key.startswith(p) for p in fresh) for key in missing):
        raise RuntimeError("deepen_eamamba: weights outside the new blocks were not copied")
    with torch.no_grad():
        for (name, _), n_old, n_new in zip(LEVELS, old, new, strict=True):
            for i in range(n_old, n_new):
                _zero_residual_branches(getattr(grown, name)[i])
    return grown.eval()
