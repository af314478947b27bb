"""MambaIRv2 and MambaIRv2-Light: golden outputs, released layouts, routing, loading BasicSR files."""

import json
import warnings

import pytest
import torch

import ssmir.models as M
from ssmir.models.loading import load_model
from ssmir.models.registry import detect
from tests.conftest import check_golden, golden_cases, golden_dir, released_configs

SMALL = dict(in_chans=3, img_size=32, img_range=1.0, embed_dim=24, d_state=4, depths=[1, 2], num_heads=[2, 2],
             window_size=8, inner_rank=8, num_tokens=16, convffn_kernel_size=5, mlp_ratio=1.0)


@pytest.mark.parametrize("path", golden_cases("mambairv2"), ids=lambda p: p.stem)
def test_golden_case_matches_official_output(path):
    check_golden(path)


@pytest.mark.parametrize("config", sorted(released_configs("mambairv2")))
def test_released_config_layout_parameters_and_detection(config):
    spec = released_configs("mambairv2")[config]
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("error")
        model = M.create(spec["name"], **spec["args"])
    keys = json.loads((golden_dir("mambairv2") / f"keys_{config}.json").read_text())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == keys
    assert sum(p.numel() for p in model.parameters()) == spec["params"]
    name, args = detect(model.state_dict())
    assert name == spec["name"]
    for key in ("embed_dim", "depths", "num_heads", "window_size", "d_state", "inner_rank", "num_tokens", "upscale"):
        assert args[key] == spec["args"][key]


def test_eval_routing_is_deterministic_and_gumbel_is_an_option():
    model = M.create("mambairv2", upscale=1, upsampler="", **SMALL).eval()
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b)
        model.set_routing("gumbel")
        samples = [model(x) for _ in range(4)]
    assert any(not torch.equal(s, a) for s in samples)


def test_training_mode_samples_routes_and_backpropagates():
    model = M.create("mambairv2light", upscale=2, upsampler="pixelshuffledirect", **SMALL).train()
    out = model(torch.rand(2, 3, 16, 16))
    out.mean().backward()
    route = model.layers[0].residual_group.layers[0].assm.route[0].weight
    assert route.grad is not None and route.grad.abs().sum() > 0


@pytest.mark.parametrize("upsampler,scale", [("pixelshuffle", 2), ("pixelshuffle", 3), ("pixelshuffledirect", 4),
                                             ("nearest+conv", 4), ("", 1)])
@pytest.mark.parametrize("resi", ["1conv", "3conv"])
def test_upsamplers_and_residual_connections_on_sizes_needing_padding(upsampler, scale, resi):
    model = M.create("mambairv2", upscale=scale, upsampler=upsampler, resi_connection=resi, **SMALL).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 13, 19))
    assert out.shape == (2, 3, 13 * scale, 19 * scale)


def test_gray_input():
    model = M.create("mambairv2", upscale=1, upsampler="", **dict(SMALL, in_chans=1)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 1, 10, 12)).shape == (1, 1, 10, 12)


@pytest.mark.parametrize("key", ["params_ema", "params"])
def test_basicsr_checkpoint_loads_by_detection_preferring_ema(tmp_path, key):
    raw = M.create("mambairv2light", upscale=2, upsampler="pixelshuffledirect", **SMALL)
    ema = M.create("mambairv2light", upscale=2, upsampler="pixelshuffledirect", **SMALL)
    ckpt = {"params": raw.state_dict()}
    if key == "params_ema":
        ckpt["params_ema"] = ema.state_dict()
    path = tmp_path / "net_g.pth"
    torch.save(ckpt, path)
    loaded = load_model(path)
    want = ema if key == "params_ema" else raw
    assert loaded.ssmir_config["name"] == "mambairv2light"
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), want.eval()(x))


def test_zoo_entries_build_with_official_parameter_counts():
    from ssmir.models import zoo

    released = {**released_configs("mambairv2")}
    for entry in zoo.entries().values():
        if entry.official_config in released:
            assert entry.parameters() == released[entry.official_config]["params"]
    with pytest.raises(ValueError, match="unknown model 'mambairv9'"):
        zoo.get_entry("mambairv9")


def test_zoo_entry_supplies_args_for_a_plain_state_dict(tmp_path):
    from ssmir.models import zoo

    entry = zoo.get_entry("mambairv2light-sr-x2")
    model = zoo.create_entry(entry.name)
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    loaded = load_model(path, name=entry.name)
    assert loaded.ssmir_config["args"]["upscale"] == 2


@pytest.mark.parametrize("name", ["mambairv2", "mambairv2light"])
def test_what_the_official_constructor_accepts_builds(name):
    # the official classes read num_heads[i] for each group and ignore the rest
    with pytest.warns(UserWarning, match="longer than depths"):
        model = M.create(name, upscale=2, upsampler="pixelshuffle", **dict(SMALL, depths=[1], num_heads=[2, 2]))
    assert len(model.layers) == 1
    with pytest.raises(ValueError, match="fewer entries"):  # the official code fails with an IndexError
        M.create(name, **dict(SMALL, depths=[1, 1], num_heads=[2]))
    # an unknown upsampler gets the official else-branch: the denoising head
    with pytest.warns(UserWarning, match="denoising head"):
        model = M.create(name, upscale=2, upsampler="bogus", **SMALL).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 8, 8)
    # a resi_connection without a conv builds (as the official constructor does) and fails clearly in forward
    with pytest.warns(UserWarning, match="resi_connection"):
        model = M.create(name, upscale=1, upsampler="", resi_connection="2conv", **SMALL)
    assert not any(k.startswith("conv_after_body") for k in model.state_dict())
    with pytest.raises(NotImplementedError, match="resi_connection"):
        model(torch.rand(1, 3, 8, 8))
    with pytest.warns(UserWarning, match="not divisible"):
        model = M.create(name, upscale=1, upsampler="", **dict(SMALL, embed_dim=26, num_heads=[4, 4]))
    with pytest.raises(ValueError, match="do not split into 4 heads"):
        model(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("option,missing,extra", [
    (dict(qkv_bias=False), "layers.0.residual_group.layers.0.wqkv.bias", None),
    (dict(patch_norm=False), "patch_embed.norm.weight", None),
    (dict(ape=True), None, "absolute_pos_embed"),
])
def test_non_default_official_options_build_run_and_are_detected(option, missing, extra):
    model = M.create("mambairv2light", upscale=2, upsampler="pixelshuffledirect", **dict(SMALL, **option)).eval()
    sd = model.state_dict()
    assert missing is None or missing not in sd
    assert extra is None or sd[extra].shape == (1, 32 * 32, 24)  # one vector per token of an img_size input
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3, 64, 64)
    name, args = detect(sd)
    rebuilt = M.create(name, **args)
    rebuilt.load_state_dict(sd, strict=True)
    if option.get("ape"):
        with pytest.raises(ValueError, match="ape=True"):
            model(torch.rand(1, 3, 16, 16))


@pytest.mark.parametrize("shifted", [False, True])
def test_window_attention_equals_the_explicit_formula(shifted):
    # scaled_dot_product_attention with the bias (and bias + mask on every window when shifted) against
    # softmax(q k^T * scale + bias + mask) v written out, values and gradients
    from ssmir.layers.window_attention import (
        WindowAttention,
        masked_windows,
        relative_position_index,
        shifted_window_mask,
    )

    torch.manual_seed(0)
    ws, heads, dim, h, w, b = 4, 2, 8, 12, 8, 2
    attn = WindowAttention(dim, ws, heads).double()
    nw, n = (h // ws) * (w // ws), ws * ws
    qkv = torch.randn(b * nw, n, 3 * dim, dtype=torch.float64, requires_grad=True)
    rpi = relative_position_index(ws)
    mask = shifted_window_mask(h, w, ws).double() if shifted else None
    windows = masked_windows(h, w, ws) if shifted else None
    out = attn(qkv, rpi, mask)

    q, k, v = qkv.view(b * nw, n, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    logits = logits + attn.relative_position_bias_table[rpi.reshape(-1)].view(n, n, heads).permute(2, 0, 1)
    if shifted:
        logits = (logits.view(b, nw, heads, n, n) + mask[None, :, None]).view(-1, heads, n, n)
    want = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(b * nw, n, dim))
    torch.testing.assert_close(out, want)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, qkv, g)[0], torch.autograd.grad(want, qkv, g)[0])
    if shifted:
        plain, masked = windows
        assert len(masked) == (h // ws) + (w // ws) - 1 and len(plain) + len(masked) == nw


@pytest.mark.parametrize("b,h,w,ws,shift", [(2, 12, 8, 4, 2), (1, 8, 8, 8, 4), (1, 16, 8, 4, 0), (3, 4, 12, 4, 2)])
def test_attend_map_equals_roll_partition_attend_reverse_roll(b, h, w, ws, shift):
    # the one-gather window attention against the Swin composition written with torch.roll, window_partition,
    # the mask on every window and window_reverse: values and gradients
    from ssmir.layers.window_attention import (
        WindowAttention,
        relative_position_index,
        shifted_window_mask,
        window_partition,
        window_reverse,
    )

    torch.manual_seed(0)
    dim, heads = 8, 2
    attn = WindowAttention(dim, ws, heads).double()
    rpi = relative_position_index(ws)
    qkv = torch.randn(b, h * w, 3 * dim, dtype=torch.float64, requires_grad=True)
    got = attn.attend_map(qkv, (h, w), rpi, shift)

    x = qkv.view(b, h, w, 3 * dim)
    mask = None
    if shift:
        x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
        mask = shifted_window_mask(h, w, ws).double()
    want = window_reverse(attn(window_partition(x, ws), rpi, mask), ws, h, w)
    if shift:
        want = torch.roll(want, shifts=(shift, shift), dims=(1, 2))
    want = want.reshape(b, h * w, dim)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(got)
    torch.testing.assert_close(torch.autograd.grad(got, qkv, g)[0], torch.autograd.grad(want, qkv, g)[0])
    # the projection to q, k, v taken after the gather (tokens in, as MambaIRv2's layers pass them)
    to_qkv = torch.nn.Linear(dim, 3 * dim).double()
    tokens = torch.randn(b, h * w, dim, dtype=torch.float64)
    torch.testing.assert_close(attn.attend_map(tokens, (h, w), rpi, shift, to_qkv=to_qkv),
                               attn.attend_map(to_qkv(tokens), (h, w), rpi, shift))


def test_cached_position_bias_follows_the_table():
    # the bias kept between no-grad calls is rebuilt when the table changes (loading weights, training)
    from ssmir.layers.window_attention import WindowAttention, relative_position_index

    torch.manual_seed(0)
    attn, rpi = WindowAttention(8, 4, 2).eval(), relative_position_index(4)
    qkv = torch.randn(1, 64, 24)
    with torch.no_grad():
        before = attn.attend_map(qkv, (8, 8), rpi, 2)
        attn.relative_position_bias_table.mul_(50.0)
        after = attn.attend_map(qkv, (8, 8), rpi, 2)
        fresh = WindowAttention(8, 4, 2).eval()
        fresh.load_state_dict(attn.state_dict())
        assert not torch.allclose(before, after)
        torch.testing.assert_close(after, fresh.attend_map(qkv, (8, 8), rpi, 2), rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(5, 4, 64, 12), (3, 2, 16, 8), (2, 3, 12, 4)])
def test_numba_window_attention_equals_sdpa(shape):
    """The numba window-attention kernel (float32 inference on CPU) against PyTorch's attention, with a bias per
    head, strided q/k/v views as attend_map passes them, and a masked bias; other cases take SDPA itself."""
    import torch.nn.functional as F

    from ssmir.layers.window_attention import attention
    from ssmir.ops.selective_scan import numba_available

    if not numba_available():
        pytest.skip("numba is not installed")
    torch.manual_seed(0)
    w, heads, n, d = shape
    qkv = torch.randn(w, n, 3 * heads * d)  # the layout attend_map's q, k and v are views of
    q, k, v = qkv.view(w, n, 3, heads, d).permute(2, 0, 3, 1, 4)
    bias = torch.randn(1, heads, n, n)
    bias[..., : n // 3] -= 100.0  # a masked block, as the shifted windows' mask makes
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=d**-0.5)
    with torch.no_grad():
        got = attention(q, k, v, bias, d**-0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert got.transpose(1, 2).is_contiguous()  # (W, n, heads, d) memory, as attend_map reads it
    q64, k64, v64, b64 = (t.double() for t in (q, k, v, bias))  # float64 and gradient mode: SDPA
    assert torch.equal(attention(q64, k64, v64, b64, 0.5), F.scaled_dot_product_attention(q64, k64, v64,
                                                                                           attn_mask=b64, scale=0.5))
