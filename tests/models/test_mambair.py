"""MambaIR (v1): golden outputs, released layouts, argument acceptance, loading BasicSR files."""

import json
import warnings

import pytest
import torch

import ssmir.models as M
from ssmir.models.loading import load_model
from ssmir.models.registry import detect
from tests.conftest import check_golden, golden_cases, golden_dir, released_configs

SMALL = dict(in_chans=3, img_size=32, img_range=1.0, embed_dim=30, d_state=4, depths=[1, 2], mlp_ratio=1.2)


@pytest.mark.parametrize("path", golden_cases("mambair"), ids=lambda p: p.stem)
def test_golden_case_matches_official_output(path):
    check_golden(path)


@pytest.mark.parametrize("config", sorted(released_configs("mambair")))
def test_released_config_layout_parameters_and_detection(config):
    spec = released_configs("mambair")[config]
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("error")
        model = M.create(spec["name"], **spec["args"])
    keys = json.loads((golden_dir("mambair") / f"keys_{config}.json").read_text())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == keys
    assert sum(p.numel() for p in model.parameters()) == spec["params"]
    name, args = detect(model.state_dict())
    assert name == "mambair"
    with torch.device("meta"):
        rebuilt = M.create(name, **args)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    for key in ("embed_dim", "depths", "d_state", "in_chans"):
        assert args[key] == spec["args"][key]
    assert args["upscale"] == (spec["args"]["upscale"] if spec["args"].get("upsampler") else 1)


@pytest.mark.parametrize("upsampler,scale", [("pixelshuffle", 2), ("pixelshuffle", 3), ("pixelshuffle", 4),
                                             ("pixelshuffledirect", 3), ("", 1)])
@pytest.mark.parametrize("resi", ["1conv", "3conv"])
def test_heads_and_residual_connections_on_odd_sizes(upsampler, scale, resi):
    model = M.create("mambair", upscale=scale, upsampler=upsampler, resi_connection=resi, **SMALL).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 13, 19))
    assert out.shape == (2, 3, 13 * scale, 19 * scale)


def test_light_sr_uses_the_depthwise_cab():
    model = M.create("mambair", upscale=2, upsampler="pixelshuffledirect", **SMALL)
    cab = model.layers[0].residual_group.blocks[0].conv_blk.cab
    assert len(cab) == 6 and cab[1].groups == 15 and cab[4].dilation == (2, 2)


def test_gray_input_and_the_official_zero_mean():
    model = M.create("mambair", upscale=1, **dict(SMALL, in_chans=1)).eval()
    assert model.mean.shape == (1, 1, 1, 1) and not model.mean.any()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 10, 12)).shape == (1, 1, 10, 12)


def test_drop_path_is_stochastic_in_training_and_identity_in_eval():
    model = M.create("mambair", upscale=1, drop_path_rate=0.5, **SMALL)
    rates = [b.drop_path.p for g in model.layers for b in g.residual_group.blocks]
    assert rates == pytest.approx([0.0, 0.25, 0.5])
    x = torch.rand(4, 3, 8, 8)
    model.train()
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.equal(a, b)
    a.mean().backward()
    assert model.layers[0].residual_group.blocks[0].self_attention.A_logs.grad is not None
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_official_arguments_are_accepted_not_refused():
    with pytest.warns(UserWarning, match="denoising head"):
        model = M.create("mambair", upscale=4, upsampler="nearest+conv", **SMALL)
    assert model.upscale == 1 and model.conv_last.in_channels == 30
    with pytest.warns(UserWarning, match="unknown argument"):
        M.create("mambair", upscale=2, upsampler="pixelshuffle", bogus=1, **SMALL)
    with warnings.catch_warnings():  # what the released configs pass and the official code ignores
        warnings.simplefilter("error")
        M.create("mambair", upscale=2, upsampler="pixelshuffle", window_size=8, num_heads=[6, 6], interval=[4, 4],
                 patch_size=1, drop_rate=0.0, use_checkpoint=False, **SMALL)
    with pytest.warns(UserWarning, match="fails in forward"):
        small = M.create("mambair", upscale=1, **dict(SMALL, embed_dim=16)).eval()
    with pytest.raises(ValueError, match="embed_dim >= 30"):
        small(torch.rand(1, 3, 8, 8))
    no_norm = M.create("mambair", upscale=1, patch_norm=False, **SMALL)
    assert "patch_embed.norm.weight" not in no_norm.state_dict()
    assert detect(no_norm.state_dict())[1]["patch_norm"] is False
    with pytest.warns(UserWarning, match="no residual convolution"):
        broken = M.create("mambair", upscale=1, resi_connection="2conv", **SMALL)
    with pytest.raises(NotImplementedError, match="resi_connection"):
        broken(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="upscale 5"):
        M.create("mambair", upscale=5, upsampler="pixelshuffle", **SMALL)


def test_detection_rebuilds_uneven_mlp_ratio():
    model = M.create("mambair", upscale=1, **dict(SMALL, embed_dim=36, mlp_ratio=43 / 36))
    name, args = detect(model.state_dict())
    rebuilt = M.create(name, **args)
    rebuilt.load_state_dict(model.state_dict(), strict=True)


@pytest.mark.parametrize("key", ["params_ema", "params"])
def test_basicsr_checkpoint_loads_by_detection_preferring_ema(tmp_path, key):
    raw = M.create("mambair", upscale=2, upsampler="pixelshuffledirect", **SMALL)
    ema = M.create("mambair", upscale=2, upsampler="pixelshuffledirect", **SMALL)
    ckpt = {"params": raw.state_dict()}
    if key == "params_ema":
        ckpt["params_ema"] = ema.state_dict()
    path = tmp_path / "net_g.pth"
    torch.save(ckpt, path)
    loaded = load_model(path)
    expected = ema if key == "params_ema" else raw
    assert loaded.ssmir_config["name"] == "mambair"
    for k, v in expected.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


ZOO = {**{f"SR_x{s}": f"mambair-sr-x{s}" for s in (2, 3, 4)},
       **{f"lightSR_x{s}": f"mambair-light-sr-x{s}" for s in (2, 3, 4)},
       **{f"ColorDN_level{s}": f"mambair-denoise-color-s{s}" for s in (15, 25, 50)},
       **{f"CAR_q{q}": f"mambair-jpeg-q{q}" for q in (10, 30, 40)}}


@pytest.mark.parametrize("config", sorted(ZOO))
def test_zoo_entries_build_the_released_models(config):
    from ssmir.models.zoo import get_entry

    spec = released_configs("mambair").get(config) or pytest.skip("golden configs not found")
    entry = get_entry(ZOO[config])
    assert entry.official_config == f"train_MambaIR_{config}" and entry.parameters() == spec["params"]
    with torch.device("meta"):
        model = M.create(entry.arch, **entry.args)
    keys = json.loads((golden_dir("mambair") / f"keys_{config}.json").read_text())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == keys
