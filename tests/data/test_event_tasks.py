"""The simulated event tasks: what each input, target and event stream is, and their ssmir test layouts."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ssmir.data.event_tasks import event_sample, linear_to_srgb, rain_layers, srgb_to_linear

ROOT = Path(__file__).resolve().parents[2]


def _frames(n=7, size=40, seed=0):
    """A textured scene panning by 2 pixels per frame."""
    rng = np.random.default_rng(seed)
    scene = torch.from_numpy(np.clip(0.5 + 0.25 * rng.standard_normal((3, size, size + 2 * n)), 0, 1)).float()
    return torch.stack([scene[:, :, 2 * k:2 * k + size] for k in range(n)])


def test_srgb_curve_round_trips():
    x = torch.linspace(0, 1, 1001)
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-6, rtol=0)


def test_deblur_input_is_the_mean_exposure_and_the_target_the_middle_frame():
    frames = _frames()
    inp, events, target = event_sample(frames, "deblur", np.random.default_rng(1))
    torch.testing.assert_close(inp, frames.mean(0))
    assert torch.equal(target, frames[3]) and len(events) > 0


def test_rain_falls_between_frames_and_is_what_the_events_see():
    alpha, bright = rain_layers(5, 48, 48, np.random.default_rng(2))
    assert alpha.shape == (5, 1, 48, 48) and 0.55 <= bright <= 0.95
    assert (alpha > 0.05).float().mean() > 0.01 and not torch.equal(alpha[0], alpha[1])  # streaks move
    frames = torch.full((7, 3, 40, 40), 0.3)  # a static grey scene: without rain, nothing changes
    inp, events, target = event_sample(frames, "derain", np.random.default_rng(3))
    assert torch.equal(target, frames[3]) and inp.mean() > target.mean()  # bright streaks over the scene
    assert len(events) > 0  # every event comes from the moving rain
    clean = event_sample(frames, "deblur", np.random.default_rng(3))[1]
    assert len(clean) == 0


def test_hdr_input_is_a_badly_exposed_8_bit_frame_and_events_see_the_radiance():
    frames = _frames(seed=4)
    seen = []
    for seed in range(6):
        inp, events, target = event_sample(frames, "hdr", np.random.default_rng(seed))
        assert torch.equal(target, frames[3])
        assert torch.equal(torch.round(inp * 255), inp * 255)  # quantised to 8 bits
        seen.append(float(inp.mean() - target.mean()))
        assert len(events) > 0
    assert min(seen) < -0.1 and max(seen) > 0.1  # both under- and over-exposed inputs occur


@pytest.mark.parametrize("task,dataset", [("derain", "event-derain"), ("hdr", "event-hdr")])
def test_tool_exports_test_sets_that_ssmir_test_reads(tmp_path, task, dataset):
    pytest.importorskip("skimage")
    cmd = [sys.executable, str(ROOT / "tools" / "make_event_sequences.py"), "--out", str(tmp_path / "seq"),
           "--per-photo", "1", "--heldout-per-photo", "1", "--size", "48", "--frames", "7",
           "--export-test", str(tmp_path / "set"), "--task", task]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert len(list((tmp_path / "seq" / "train").iterdir())) == 5
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["events", "input", "target"]
    import ssmir.models as M
    from ssmir.cli import app
    from ssmir.models.loading import save_model

    weights = save_model(M.create("emambair", wf=8, depth=2, num_heads=[1, 2]), tmp_path / "em.safetensors")
    r = CliRunner().invoke(app, ["test", "--weights", str(weights), "--dataset", dataset, "--root",
                                 str(tmp_path / "set"), "--output", str(tmp_path / "res")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "res" / "summary.json").read_text())["images"] == 3
    listing = CliRunner().invoke(app, ["test", "--list"]).output
    assert dataset in listing and "ROOT/input" in listing
