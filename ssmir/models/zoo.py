"""Model zoo: named task entries (task + architecture + official config).

Official weights are not downloaded by ssmir. Get them from the projects' release pages
(EAMamba: the links in the `daidaijr/EAMamba` README; MambaIR and MambaIRv2: the `csguoh/MambaIR` README; EmambaIR
has released no weights) and
pass the file with ``--weights FILE`` / ``ssmir.load_model(FILE, name=ENTRY)``; the entry supplies the
architecture args for files that do not carry them. ``ssmir models`` lists the entries.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch

from ssmir.models.registry import create


@dataclass(frozen=True)
class ZooEntry:
    name: str
    task: str
    arch: str
    args: dict = field(repr=False)
    official_config: str = ""
    bundled_weights: str | None = None  # package-relative path of bundled weights, if any

    def parameters(self) -> int:
        """Parameter count, computed by building the model on the meta device (no memory, no init cost)."""
        with torch.device("meta"):
            model = create(self.arch, **copy.deepcopy(self.args))
        return sum(p.numel() for p in model.parameters())


_EAMAMBA_CFG = {"scan_type": "diagonal", "scan_count": 8, "scan_merge_method": "concate", "disable_z_branch": False,
                "d_state": 16, "d_conv": 3, "expand": 1, "conv_2d": True}
_EAMAMBA = {"inp_channels": 3, "out_channels": 3, "dim": 64, "num_blocks": [4, 6, 6, 7], "num_refinement_blocks": 2,
            "ffn_expansion_factor": 2, "bias": False, "LayerNorm_type": "WithBias", "dual_pixel_task": False,
            "checkpoint_percentage": 0.0, "channel_mixer_type": "Simple", "mamba_cfg": _EAMAMBA_CFG}
_EAMAMBA_SR = dict(_EAMAMBA, num_blocks=[4, 4, 4, 4], ffn_expansion_factor=1,
                   mamba_cfg=dict(_EAMAMBA_CFG, d_state=10))
del _EAMAMBA_SR["num_refinement_blocks"], _EAMAMBA_SR["dual_pixel_task"]

# The bundled default (docs/model-card-default-denoiser.md): a small EAMamba trained by ssmir itself.
_EAMAMBA_SMALL = dict(_EAMAMBA, dim=16, num_blocks=[1, 2, 2, 3])
DEFAULT_MODEL = "eamamba-small-denoise-blind"

_V2 = {"in_chans": 3, "img_range": 1.0, "embed_dim": 174, "d_state": 16, "depths": [6] * 6, "num_heads": [6] * 6,
       "window_size": 16, "inner_rank": 64, "num_tokens": 128, "convffn_kernel_size": 5, "mlp_ratio": 2.0,
       "resi_connection": "1conv"}
_V2_SMALL = dict(_V2, embed_dim=132, depths=[4] * 6, num_heads=[4] * 6)
_V2_LARGE = dict(_V2, depths=[6] * 9, num_heads=[6] * 9)
_V2_LIGHT = dict(_V2, embed_dim=48, d_state=8, depths=[5] * 4, num_heads=[4] * 4, inner_rank=32, num_tokens=64,
                 mlp_ratio=1.0, upsampler="pixelshuffledirect")

_V1 = {"in_chans": 3, "img_range": 1.0, "embed_dim": 180, "d_state": 16, "depths": [6] * 6, "mlp_ratio": 2.0,
       "upsampler": "pixelshuffle", "resi_connection": "1conv"}
_V1_LIGHT = dict(_V1, embed_dim=60, d_state=10, depths=[6] * 4, mlp_ratio=1.2, upsampler="pixelshuffledirect")


def _entries() -> list[ZooEntry]:
    e = [
        ZooEntry(DEFAULT_MODEL, "blind Gaussian colour denoising (sigma 0-55); the default model", "eamamba",
                 _EAMAMBA_SMALL, "configs/ssmir/denoise-color-small.yaml",
                 bundled_weights="weights/eamamba-small-denoise-blind.safetensors"),
        ZooEntry("eamamba-denoise-color", "Gaussian colour denoising (sigma 15/25/50)", "eamamba", _EAMAMBA,
                 "denoise-eamamba"),
        ZooEntry("eamamba-sidd", "real denoising (SIDD)", "eamamba", _EAMAMBA, "sidd-eamamba"),
        ZooEntry("eamamba-gopro", "motion deblurring (GoPro, HIDE)", "eamamba", _EAMAMBA, "gopro-eamamba"),
        ZooEntry("eamamba-dpdd", "defocus deblurring (DPDD, single image)", "eamamba", _EAMAMBA, "dpdd-eamamba"),
        ZooEntry("eamamba-dehaze-its", "dehazing (SOTS indoor)", "eamamba", _EAMAMBA, "dehazeITS-eamamba"),
        ZooEntry("eamamba-dehaze-ots", "dehazing (SOTS outdoor)", "eamamba", _EAMAMBA, "dehazeOTS-eamamba"),
        ZooEntry("eamamba-derain", "deraining (Rain100L/H, Test100/1200/2800)", "eamamba", _EAMAMBA,
                 "derain-eamamba"),
    ]
    e += [ZooEntry(f"eamamba-realsr-x{s}", f"real-world SR x{s} (RealSR, pre-upsampled input)", "eamamba", _EAMAMBA,
                   f"realsrx{s}-eamamba") for s in (2, 3, 4)]
    e += [ZooEntry(f"eamambasr-light-x{s}", f"lightweight classic SR x{s}", "eamambasr", dict(_EAMAMBA_SR, upscale=s),
                   f"srx{s}-eamambasr-light") for s in (2, 3, 4)]
    for tag, base, label in (("", _V2, "SR"), ("small-", _V2_SMALL, "SRSmall"), ("large-", _V2_LARGE, "SRLarge")):
        e += [ZooEntry(f"mambairv2-sr-{tag}x{s}", f"classic SR x{s}", "mambairv2",
                       dict(base, upscale=s, upsampler="pixelshuffle"), f"train_MambaIRv2_{label}_x{s}")
              for s in (2, 3, 4)]
    e += [ZooEntry(f"mambairv2light-sr-x{s}", f"lightweight classic SR x{s}", "mambairv2light",
                   dict(_V2_LIGHT, upscale=s), f"train_MambaIRv2_lightSR_x{s}") for s in (2, 3, 4)]
    e += [ZooEntry(f"mambairv2-denoise-color-s{s}", f"Gaussian colour denoising sigma {s}", "mambairv2",
                   dict(_V2, upscale=1), f"train_MambaIRv2_ColorDN_level{s}") for s in (15, 25, 50)]
    e += [ZooEntry(f"mambairv2-jpeg-q{q}", f"JPEG artefact removal, grayscale, quality {q}", "mambairv2",
                   dict(_V2, in_chans=1, upscale=1), f"train_MambaIRv2_CAR_q{q}") for q in (10, 30, 40)]
    e += [ZooEntry(f"mambair-sr-x{s}", f"classic SR x{s} (MambaIR v1)", "mambair", dict(_V1, upscale=s),
                   f"train_MambaIR_SR_x{s}") for s in (2, 3, 4)]
    e += [ZooEntry(f"mambair-light-sr-x{s}", f"lightweight classic SR x{s} (MambaIR v1)", "mambair",
                   dict(_V1_LIGHT, upscale=s), f"train_MambaIR_lightSR_x{s}") for s in (2, 3, 4)]
    e += [ZooEntry(f"mambair-denoise-color-s{s}", f"Gaussian colour denoising sigma {s} (MambaIR v1)", "mambair",
                   dict(_V1, upscale=1, upsampler="", mlp_ratio=1.2), f"train_MambaIR_ColorDN_level{s}")
          for s in (15, 25, 50)]
    e += [ZooEntry(f"mambair-jpeg-q{q}", f"JPEG artefact removal, grayscale, quality {q} (MambaIR v1)", "mambair",
                   dict(_V1, in_chans=1, upscale=1, upsampler="", mlp_ratio=1.2), f"train_MambaIR_CAR_q{q}")
          for q in (10, 30, 40)]
    e += [ZooEntry("emambair-event-deblur", "event-guided deblurring (frame + 6-bin event voxel grid)", "emambair",
                   {"in_chn": 3, "ev_chn": 6, "wf": 48, "depth": 3, "num_heads": [1, 2, 4]}, "default")]
    return e


def entries() -> dict[str, ZooEntry]:
    """All zoo entries by name."""
    return {entry.name: entry for entry in _entries()}


def get_entry(name: str) -> ZooEntry:
    table = entries()
    if name not in table:
        raise ValueError(f"unknown model {name!r}; `ssmir models` lists the zoo entries: {', '.join(sorted(table))}")
    return table[name]


def bundled_weights(name: str) -> Path:
    """The file of an entry's weights shipped inside the package."""
    entry = get_entry(name)
    if entry.bundled_weights is None:
        raise ValueError(f"model {name!r} has no bundled weights: pass its official weights with --weights FILE "
                         "(see `ssmir models` and the README for where to get them)")
    path = Path(str(resources.files("ssmir").joinpath(entry.bundled_weights)))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the bundled weights of {name!r} are missing from this installation "
                                "(reinstall ssmir)")
    return path


def create_entry(name: str) -> torch.nn.Module:
    """Build a zoo entry's architecture with its official args (random weights)."""
    entry = get_entry(name)
    return create(entry.arch, **copy.deepcopy(entry.args))
