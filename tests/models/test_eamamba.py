"""EAMamba and EAMambaSR: golden outputs of the official code, released key layouts, options."""

import json
import warnings

import pytest
import torch

import ssmir.models as M
from ssmir.eval.inference import run_model
from tests.conftest import check_golden, golden_cases, golden_dir, released_configs

SMALL_CFG = {"scan_type": "diagonal", "scan_count": 8, "scan_merge_method": "concate", "d_state": 4, "d_conv": 3,
             "expand": 1, "conv_2d": True}


def small_unet(**kw):
    args = dict(dim=16, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, mamba_cfg=dict(SMALL_CFG))
    args.update(kw)
    return M.create("eamamba", **args)


@pytest.mark.parametrize("path", golden_cases("eamamba"), ids=lambda p: p.stem)
def test_golden_case_matches_official_output(path):
    check_golden(path)


@pytest.mark.parametrize("config", sorted(released_configs("eamamba")))
def test_released_config_has_official_key_layout_and_parameter_count(config):
    d = golden_dir("eamamba")
    spec = released_configs("eamamba")[config]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the official args must need no guessing
        model = M.create(spec["name"], **spec["args"])
    keys = json.loads((d / f"keys_{config}.json").read_text())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == keys
    assert sum(p.numel() for p in model.parameters()) == spec["params"]


def test_registry_lists_and_rejects_unknown_names():
    assert {"eamamba", "eamambasr"} <= set(M.list())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        M.create("nope")


@pytest.mark.parametrize("scan_type", [None, "diagonal", "zorder", "zigzag", "hilbert"])
@pytest.mark.parametrize("count,merge", [(1, "concate"), (2, "add"), (4, "concate"), (8, "add")])
def test_every_scan_setting_runs_and_uses_the_fast_scan_consistently(scan_type, count, merge, monkeypatch):
    cfg = dict(SMALL_CFG, scan_type=scan_type, scan_count=count, scan_merge_method=merge)
    model = small_unet(mamba_cfg=cfg).eval()
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        fast = model(x)
        monkeypatch.setenv("SSMIR_SCAN_BACKEND", "reference")
        ref = model(x)
    assert fast.shape == x.shape
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-5)


def test_one_channel_per_head_loads_its_own_state_dict():
    # d_inner == scan_count: one channel per head (the official code fails to reload this)
    cfg = dict(SMALL_CFG, scan_count=8, expand=1)
    model = M.create("eamambasr", dim=8, num_blocks=[1], ffn_expansion_factor=2, upscale=2, mamba_cfg=cfg)
    clone = M.create("eamambasr", dim=8, num_blocks=[1], ffn_expansion_factor=2, upscale=2, mamba_cfg=cfg)
    clone.load_state_dict(model.state_dict(), strict=True)
    x = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model(x))


@pytest.mark.parametrize("mixer", ["Simple", "GDFN", "FFN", "CCA"])
@pytest.mark.parametrize("norm", ["WithBias", "BiasFree"])
def test_channel_mixers_and_norms(mixer, norm):
    model = small_unet(channel_mixer_type=mixer, LayerNorm_type=norm).eval()
    assert ("encoder_level1.0.norm1.body.bias" in model.state_dict()) == (norm == "WithBias")
    with torch.no_grad():
        assert model(torch.rand(2, 3, 16, 16)).shape == (2, 3, 16, 16)


def test_norm_spellings_both_honoured_and_disagreement_follows_the_official_argument():
    a = small_unet(layernorm_type="BiasFree")
    b = small_unet(LayerNorm_type="BiasFree")
    assert a.state_dict().keys() == b.state_dict().keys()
    with pytest.warns(UserWarning, match="disagree"):
        c = small_unet(layernorm_type="BiasFree", LayerNorm_type="WithBias")
    assert c.state_dict().keys() == a.state_dict().keys()  # the official constructor reads layernorm_type
    with pytest.warns(UserWarning, match="WithBias norm"):
        d = small_unet(layernorm_type="Foo")  # the official LayerNorm: anything but 'BiasFree' has a bias
    assert "encoder_level1.0.norm1.body.bias" in d.state_dict()


def test_bias_true_follows_the_official_layers():
    # OverlapPatchEmbed(inp_channels, dim) never passes `bias`; every other bias-taking conv does
    keys = small_unet(bias=True).state_dict()
    assert "patch_embed.proj.bias" not in keys
    for name in ("reduce_chan_level3", "reduce_chan_level2", "output", "encoder_level1.0.ffn.project_in"):
        assert f"{name}.bias" in keys
    assert "skip_conv.bias" in small_unet(bias=True, dual_pixel_task=True, inp_channels=6).state_dict()
    sr = M.create("eamambasr", dim=8, num_blocks=[1], bias=True, mamba_cfg=SMALL_CFG).state_dict()
    assert {"conv_first.bias", "conv_after_body.bias", "conv_last.bias"} <= set(sr)


def test_what_the_official_constructor_accepts_builds():
    with pytest.warns(UserWarning, match="more than 4 entries"):
        five = small_unet(num_blocks=[1, 1, 1, 1, 2])
    assert five.state_dict().keys() == small_unet().state_dict().keys()
    with pytest.raises(ValueError, match="4 entries"):  # the official code fails with an IndexError
        small_unet(num_blocks=[1, 1, 1])
    for p in (-1.0, 1.5):  # the first ceil(p * n) blocks are checkpointed, as in the official code
        small_unet(checkpoint_percentage=p)
    with pytest.warns(UserWarning, match="not divisible by scan_count"):
        odd = small_unet(mamba_cfg=dict(SMALL_CFG, scan_count=4, expand=1.125))  # 18 inner channels, 4 heads
    assert odd.state_dict()["encoder_level1.0.mamba.x_proj_weight"].shape[-1] == 4  # 18 // 4, as the official
    with pytest.raises(ValueError, match="does not split"):
        odd(torch.rand(1, 3, 8, 8))


def test_conv1d_and_disabled_gate():
    cfg = dict(SMALL_CFG, conv_2d=False, d_conv=4, disable_z_branch=True)
    model = small_unet(mamba_cfg=cfg).eval()
    assert model.state_dict()["encoder_level1.0.mamba.in_proj.weight"].shape[0] == 16  # no z half
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 16)).shape == (1, 3, 8, 16)


def test_gradient_checkpointing_gives_identical_outputs_and_gradients():
    torch.manual_seed(1)
    plain = small_unet()
    ckpt = small_unet(checkpoint_percentage=1.0, mamba_cfg=dict(SMALL_CFG, use_checkpoint=True))
    ckpt.load_state_dict(plain.state_dict())
    x = torch.rand(1, 3, 16, 16)
    outs, grads = [], []
    for m in (plain, ckpt):
        m.zero_grad()
        y = m(x)
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append(m.patch_embed.proj.weight.grad.clone())
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_unet_upscale_produces_scaled_output():
    model = small_unet(upscale=2).eval()
    assert "upsample.0.weight" in model.state_dict()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 16, 16)).shape == (1, 3, 32, 32)


def test_default_unet_has_no_upsample_keys():
    assert not any(k.startswith("upsample") for k in small_unet().state_dict())


@pytest.mark.parametrize("size", [(17, 23), (8, 8), (5, 3), (33, 40)])
def test_run_model_handles_any_size(size):
    model = small_unet().eval()
    x = torch.rand(1, 3, *size)
    out = run_model(model, x)
    assert out.shape == x.shape


def test_run_model_equals_forward_on_valid_sizes():
    model = small_unet().eval()
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        torch.testing.assert_close(run_model(model, x), model(x))


def test_run_model_scales_sr_output():
    model = M.create("eamambasr", dim=8, num_blocks=[1], upscale=3, ffn_expansion_factor=1, mamba_cfg=SMALL_CFG)
    assert run_model(model.eval(), torch.rand(1, 3, 7, 9)).shape == (1, 3, 21, 27)


def test_unknown_arguments_warn_and_bad_config_raises():
    with pytest.warns(UserWarning, match="bogus"):
        small_unet(bogus=1)
    with pytest.warns(UserWarning, match="mamba_cfg: ignoring unknown key"):  # the official **kwargs ignore them
        small_unet(mamba_cfg=dict(SMALL_CFG, scan_typo="x"))
    with pytest.raises(ValueError, match="channel_mixer_type"):
        small_unet(channel_mixer_type="MLP")
    with pytest.raises(ValueError, match="scan_count"):
        small_unet(mamba_cfg=dict(SMALL_CFG, scan_count=3))


@pytest.mark.parametrize("norm", ["WithBias", "BiasFree"])
def test_layernorm2d_matches_restormer_formula(norm):
    from ssmir.layers.norms import LayerNorm2d

    layer = LayerNorm2d(5, norm).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p))
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64) * 3 + 1
    var = x.var(1, keepdim=True, unbiased=False)
    w = layer.body.weight.view(1, 5, 1, 1)
    if norm == "WithBias":
        want = (x - x.mean(1, keepdim=True)) / torch.sqrt(var + 1e-5) * w + layer.body.bias.view(1, 5, 1, 1)
    else:
        want = x / torch.sqrt(var + 1e-5) * w
    torch.testing.assert_close(layer(x), want)
