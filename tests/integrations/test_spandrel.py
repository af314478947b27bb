"""ssmir's architectures in spandrel: files recognised by content, ssmir's output, no false claims.

spandrel needs torchvision, which has no build for the CPU torch this project's CI pins: these tests run in a
separate environment (``make test-spandrel``) and are skipped where spandrel cannot be imported.
"""

import pytest
import torch

try:
    import spandrel
except Exception as e:  # ImportError, or torchvision failing to load its operators
    pytest.skip(f"spandrel is not importable here ({type(e).__name__}); see `make test-spandrel`",
                allow_module_level=True)

import ssmir.models as M
from ssmir.eval.inference import run_model
from ssmir.integrations.spandrel import install, resolve
from ssmir.models.loading import save_model

CFG = {"scan_type": "diagonal", "scan_count": 4, "scan_merge_method": "concate", "d_state": 4, "d_conv": 3,
       "expand": 1, "conv_2d": True}
V1 = dict(embed_dim=30, d_state=4, depths=[1, 1], mlp_ratio=1.2)
V2 = dict(embed_dim=12, d_state=4, depths=[1], num_heads=[2], window_size=4, inner_rank=4, num_tokens=4, mlp_ratio=1.0)


@pytest.fixture
def loader():
    registry = spandrel.MAIN_REGISTRY.copy()  # the global registry stays as it is
    added = install(registry)
    assert [a.architecture.id for a in added] == ["EAMamba", "EAMambaSR", "MambaIR", "MambaIRv2", "MambaIRv2Light"]
    return spandrel.ModelLoader(registry=registry)


def _perturbed(model):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.eval()


def _official_eamamba_file(path, name, args):
    """An official EAMamba checkpoint: EMA weights in sd_e, the training weights in sd, optimizer state."""
    ema, raw = _perturbed(M.create(name, **args)), M.create(name, **args)
    torch.save({"model": {"name": name, "args": args, "sd": raw.state_dict(), "sd_e": ema.state_dict()},
                "optimizer": {"name": "AdamW", "args": {"lr": 3e-4}, "sd": {}}, "current_iter": 10, "state": {}}, path)
    return ema


def _basicsr_file(path, name, args):
    model = _perturbed(M.create(name, **args))
    torch.save({"params_ema": model.state_dict(), "params": M.create(name, **args).state_dict()}, path)
    return model


def _check(descriptor, model, arch_id, purpose, scale, size=(13, 19), channels=3):
    assert descriptor.architecture.id == arch_id and descriptor.purpose == purpose and descriptor.scale == scale
    assert descriptor.input_channels == channels and descriptor.output_channels == 3
    assert descriptor.tiling == spandrel.ModelTiling.DISCOURAGED
    x = torch.rand(1, channels, *size)
    with torch.no_grad():
        want = run_model(model, x).clamp(0, 1)
    torch.testing.assert_close(descriptor(x), want, rtol=1e-5, atol=1e-6)  # spandrel pads and crops as ssmir


def test_official_eamamba_checkpoints(loader, tmp_path):
    unet_args = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, mamba_cfg=CFG)
    model = _official_eamamba_file(tmp_path / "denoise.pth", "eamamba", unet_args)
    d = loader.load_from_file(tmp_path / "denoise.pth")
    _check(d, model, "EAMamba", "Restoration", 1)
    assert d.size_requirements.multiple_of == 8
    sr_args = dict(dim=8, num_blocks=[1], upscale=2, ffn_expansion_factor=1, mamba_cfg=CFG)
    model = _official_eamamba_file(tmp_path / "sr.pth", "eamambasr", sr_args)
    d = loader.load_from_file(tmp_path / "sr.pth")
    _check(d, model, "EAMambaSR", "SR", 2)
    assert d.size_requirements.multiple_of == 8  # the official test pads inputs to 8


@pytest.mark.parametrize("name,args,arch_id,purpose,scale", [
    ("mambairv2light", dict(V2, upscale=2, upsampler="pixelshuffledirect"), "MambaIRv2Light", "SR", 2),
    ("mambairv2", dict(V2, upscale=3, upsampler="pixelshuffle"), "MambaIRv2", "SR", 3),
    ("mambairv2", dict(V2, upscale=1, upsampler=""), "MambaIRv2", "Restoration", 1),
    ("mambair", dict(V1, upscale=2, upsampler="pixelshuffledirect"), "MambaIR", "SR", 2),
    ("mambair", dict(V1, upscale=4, upsampler="pixelshuffle"), "MambaIR", "SR", 4),
    ("mambair", dict(V1, upscale=1, resi_connection="3conv"), "MambaIR", "Restoration", 1),
])
def test_basicsr_mambair_checkpoints(loader, tmp_path, name, args, arch_id, purpose, scale):
    model = _basicsr_file(tmp_path / "net_g.pth", name, args)
    _check(loader.load_from_file(tmp_path / "net_g.pth"), model, arch_id, purpose, scale)


def test_ssmir_safetensors_and_the_bundled_model(loader, tmp_path):
    model = _perturbed(M.create("eamamba", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                                mamba_cfg=dict(CFG, scan_type="hilbert")))
    save_model(model, tmp_path / "m.safetensors")
    _check(loader.load_from_file(tmp_path / "m.safetensors"), model, "EAMamba", "Restoration", 1)
    from ssmir.models.loading import load_model
    from ssmir.models.zoo import bundled_weights

    path = bundled_weights("eamamba-small-denoise-blind")
    _check(loader.load_from_file(path), load_model(path), "EAMamba", "Restoration", 1)


def test_other_architectures_are_not_claimed(loader):
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.HAT import HAT
    from spandrel.architectures.NAFNet import NAFNet
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR

    others = {
        "SwinIR": SwinIR(embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                         upsampler="pixelshuffledirect"),
        "HAT": HAT(embed_dim=60, depths=[1], num_heads=[2], window_size=4, upscale=2),
        "ESRGAN": ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1),
        "Compact": Compact(num_feat=8, num_conv=2),
        "NAFNet": NAFNet(width=8, enc_blk_nums=[1], dec_blk_nums=[1], middle_blk_num=1),
        "SPAN": SPAN(num_in_ch=3, num_out_ch=3, feature_channels=12),
    }
    for arch_id, module in others.items():
        sd = module.state_dict()
        assert resolve(sd) is None, arch_id
        assert loader.load_from_state_dict(sd).architecture.id == arch_id


def test_emambair_is_not_registered(tmp_path):
    model = M.create("emambair", wf=8, depth=2, num_heads=[1, 2])
    sd = {k: v for k, v in model.state_dict().items()}
    registry = spandrel.MAIN_REGISTRY.copy()
    install(registry)
    with pytest.raises(spandrel.UnsupportedModelError):
        spandrel.ModelLoader(registry=registry).load_from_state_dict(sd)
