"""EmambaIR: the golden case of the official network, its released layout, any input size."""

import json

import pytest
import torch

import ssmir.models as M
from ssmir.eval.inference import run_model
from tests.conftest import check_golden, golden_dir

SMALL = dict(in_chn=3, ev_chn=6, wf=16, depth=2, num_heads=[1, 2])


def test_golden_case_matches_official_output():
    check_golden(golden_dir("emambair") / "em_small_d2.pt")


def test_default_model_has_the_released_layout_and_parameter_count():
    d = golden_dir("emambair")
    spec = json.loads((d / "full_configs.json").read_text())["default"]
    with torch.device("meta"):
        model = M.create("emambair", **spec["args"])
    keys = json.loads((d / "keys_default.json").read_text())
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == keys
    assert sum(p.numel() for p in model.parameters()) == spec["params"] == 6_202_840


@pytest.mark.parametrize("size", [(17, 23), (30, 31), (45, 64)])
def test_run_model_pads_sizes_the_network_rejects(size):
    model = M.create("emambair", **SMALL).eval()
    frame, events = torch.rand(1, 3, *size), torch.rand(1, 6, *size)
    with pytest.raises(RuntimeError):  # the bare network fails on these sizes, as the official one does
        with torch.no_grad():
            model(frame, events)
    assert run_model(model, frame, events).shape == frame.shape


def test_fuse_after_downsample_variant_runs():
    model = M.create("emambair", **dict(SMALL, fuse_before_downsample=False)).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 32, 32), torch.rand(1, 6, 32, 32)).shape == (1, 3, 32, 32)


def test_mismatched_frame_and_events_are_rejected():
    model = M.create("emambair", **SMALL).eval()
    with pytest.raises(ValueError, match="same height and width"):
        model(torch.rand(1, 3, 32, 32), torch.rand(1, 6, 32, 48))


def test_backward_reaches_event_branch():
    model = M.create("emambair", **SMALL)
    out = model(torch.rand(1, 3, 32, 32), torch.rand(1, 6, 32, 32))
    out.square().mean().backward()
    assert model.conv_ev1.weight.grad.abs().sum() > 0
