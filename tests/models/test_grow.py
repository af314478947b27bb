"""ssmir.models.grow: a deepened EAMamba computes what the trained one did, and its new blocks can learn."""

import importlib.util
from pathlib import Path

import pytest
import torch

import ssmir
from ssmir.models.grow import deepen_eamamba
from tests.models.test_eamamba import small_unet

ROOT = Path(__file__).resolve().parents[2]


def _trained_like(seed=0):
    """A small UNet whose every weight is random (no zero projections to hide behind)."""
    torch.manual_seed(seed)
    model = small_unet(dim=8)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_deepened_unet_gives_the_trained_output_exactly():
    model = _trained_like()
    grown = deepen_eamamba(model, [2, 2, 1, 3], 3)
    x = torch.rand(2, 3, 32, 40)
    with torch.no_grad():
        assert torch.equal(model(x), grown(x))
    assert [len(grown.encoder_level1), len(grown.latent), len(grown.decoder_level1), len(grown.refinement)] == [
        2, 3, 2, 3]
    assert sum(p.numel() for p in grown.parameters()) > sum(p.numel() for p in model.parameters())
    # the trained blocks are copied, not re-initialised, and the model itself is untouched
    assert torch.equal(grown.encoder_level1[0].mamba.in_proj.weight, model.encoder_level1[0].mamba.in_proj.weight)
    assert len(model.encoder_level1) == 1


def test_new_blocks_get_gradients_from_the_first_step():
    grown = deepen_eamamba(_trained_like(), [1, 1, 1, 2], 1).train()
    x = torch.rand(1, 3, 32, 32)
    (grown(x) - x).square().mean().backward()
    new = grown.latent[1]
    for layer in (new.mamba.out_proj, new.ffn.project_out):
        assert torch.count_nonzero(layer.weight) == 0
        assert layer.weight.grad is not None and torch.count_nonzero(layer.weight.grad) > 0


def test_grown_weights_round_trip_through_save_and_load(tmp_path):
    grown = deepen_eamamba(_trained_like(), [1, 2, 1, 1], 2)
    ssmir.save_model(grown, tmp_path / "g.safetensors")
    again = ssmir.load_model(tmp_path / "g.safetensors")
    assert again.ssmir_config["args"]["num_blocks"] == [1, 2, 1, 1]
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), grown(x))


@pytest.mark.parametrize(("blocks", "refinement", "message"), [
    ([1, 1, 1, 0], 1, "latent has 1 blocks; it can grow, not shrink to 0"),
    ([1, 1, 1, 1], 0, "refinement has 1 blocks"),
    ([2, 2, 2], 1, "needs 4 counts"),
])
def test_bad_targets_are_refused_by_name(blocks, refinement, message):
    with pytest.raises(ValueError, match=message):
        deepen_eamamba(_trained_like(), blocks, refinement)


def test_only_eamamba_unets_grow():
    with pytest.raises(ValueError, match="needs an EAMamba UNet"):
        deepen_eamamba(torch.nn.Conv2d(3, 3, 1), [1, 1, 1, 1], 1)


def test_grow_tool_writes_a_file_that_trains_from_the_same_output(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("grow_eamamba", ROOT / "tools" / "grow_eamamba.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    ssmir.save_model(_trained_like(), tmp_path / "small.safetensors")
    tool.main(["--weights", str(tmp_path / "small.safetensors"), "--num-blocks", "1", "1", "2", "2",
               "--refinement", "2", "--out", str(tmp_path / "big.safetensors")])
    assert "output identical" in capsys.readouterr().out
    small, big = ssmir.load_model(tmp_path / "small.safetensors"), ssmir.load_model(tmp_path / "big.safetensors")
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        assert torch.equal(small(x), big(x))
    with pytest.raises(SystemExit, match="is the input file"):
        tool.main(["--weights", str(tmp_path / "small.safetensors"), "--num-blocks", "1", "1", "1", "1",
                   "--refinement", "1", "--out", str(tmp_path / "small.safetensors")])
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="corrupt.safetensors"):
        tool.main(["--weights", str(tmp_path / "corrupt.safetensors"), "--num-blocks", "1", "1", "1", "1",
                   "--refinement", "1", "--out", str(tmp_path / "y.safetensors")])
    with pytest.raises(SystemExit, match="can grow, not shrink"):
        tool.main(["--weights", str(tmp_path / "big.safetensors"), "--num-blocks", "1", "1", "1", "1",
                   "--refinement", "1", "--out", str(tmp_path / "x.safetensors")])
