"""Loading checkpoints: official EAMamba .pth, plain state_dicts, ssmir safetensors; clear errors."""

import argparse
import json

import pytest
import torch

import ssmir
import ssmir.models as M
from ssmir.models.loading import CheckpointError, load_model, read_checkpoint, save_model

ARGS = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
            mamba_cfg={"scan_type": "diagonal", "scan_count": 4, "scan_merge_method": "concate", "d_state": 4,
                       "d_conv": 3, "expand": 1, "conv_2d": True})


def _official_checkpoint(path, model, ema_model):
    ckpt = {
        "model": {"name": "eamamba", "args": ARGS, "sd": model.state_dict(), "sd_e": ema_model.state_dict()},
        "optimizer": {"name": "adamw", "args": {"lr": 3e-4}, "sd": {}},
        "current_iter": 10,
        "state": torch.get_rng_state(),
    }
    torch.save(ckpt, path)


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_official_checkpoint_loads_ema_by_default_and_raw_on_request(tmp_path):
    raw, ema = M.create("eamamba", **ARGS), M.create("eamamba", **ARGS)
    path = tmp_path / "official.pth"
    _official_checkpoint(path, raw, ema)
    assert _same_weights(load_model(path), ema)
    assert _same_weights(load_model(path, ema=False), raw)
    assert not load_model(path).training


def test_plain_state_dict_needs_name_and_args(tmp_path):
    model = M.create("eamamba", **ARGS)
    path = tmp_path / "plain.pth"
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, path)  # DDP prefix is stripped
    with pytest.raises(CheckpointError, match="does not name its architecture"):
        load_model(path)
    assert _same_weights(load_model(path, name="eamamba", args=ARGS), model)


def test_safetensors_round_trip_carries_architecture(tmp_path):
    model = M.create("eamamba", **ARGS)
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = ssmir.load_model(path)
    assert _same_weights(loaded, model)
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x))


def test_safetensors_with_sidecar_config(tmp_path):
    from safetensors.torch import save_file

    model = M.create("eamamba", **ARGS)
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    (tmp_path / "w.json").write_text(json.dumps({"name": "eamamba", "args": ARGS}))
    assert _same_weights(load_model(tmp_path / "w.safetensors"), model)


def test_layout_mismatch_names_the_keys(tmp_path):
    model = M.create("eamambasr", dim=8, num_blocks=[1], upscale=2, mamba_cfg=ARGS["mamba_cfg"])
    path = tmp_path / "sr.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"does not fit architecture 'eamamba'.*missing .*patch_embed"):
        load_model(path, name="eamamba", args=ARGS)


def test_shape_mismatch_is_reported(tmp_path):
    model = M.create("eamamba", **ARGS)
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(path, name="eamamba", args=dict(ARGS, dim=16))


def test_truncated_and_missing_files_give_clear_errors(tmp_path):
    model = M.create("eamamba", **ARGS)
    good = tmp_path / "good.pth"
    torch.save(model.state_dict(), good)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="bad.pth: cannot read checkpoint"):
        read_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        read_checkpoint(tmp_path / "absent.pth")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="junk.safetensors"):
        read_checkpoint(junk)


def test_wrong_architecture_name_is_refused(tmp_path):
    raw = M.create("eamamba", **ARGS)
    path = tmp_path / "official.pth"
    _official_checkpoint(path, raw, raw)
    with pytest.raises(CheckpointError, match="holds a 'eamamba' model, not 'eamambasr'"):
        load_model(path, name="eamambasr")


def test_pickled_objects_are_refused_without_trust(tmp_path):
    path = tmp_path / "pickled.pth"
    ckpt = {"model": {"name": "eamamba", "args": ARGS, "sd": {}, "sd_e": {}}, "extra": argparse.Namespace(lr=1)}
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="trust"):
        read_checkpoint(path)
