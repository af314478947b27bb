"""ssmir train --time-budget: durations, the recipe scaled as a whole, and the command end to end."""

import pytest
import torch
import yaml

pytest.importorskip("accelerate")

from typer.testing import CliRunner  # noqa: E402

from ssmir.cli import app  # noqa: E402
from ssmir.train import budget  # noqa: E402
from ssmir.train.budget import BudgetError, iterations_for, parse_duration, scale_schedule, step_cost  # noqa: E402
from ssmir.train.config import load_config  # noqa: E402
from ssmir.train.trainer import stage_at  # noqa: E402
from tests.train.test_training import _config  # noqa: E402


@pytest.mark.parametrize("text, seconds", [("600", 600), ("600s", 600), ("45m", 2700), ("1.5h", 5400),
                                           ("1h30m", 5400), ("2d", 172800), (" 10M ", 600)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "ten minutes", "10x", "m", "1h 30m", "0s"])
def test_bad_durations_name_the_option(text):
    with pytest.raises(BudgetError, match="--time-budget"):
        parse_duration(text)


def test_the_whole_recipe_is_scaled_by_one_factor(tmp_path):
    cfg = _config(tmp_path, 40, warmup_iter=8)  # two progressive stages (batch 4 of 24², then 2 of 32²), 2 cycles
    assert step_cost(cfg) == [(20, 1.0), (20, 2 * 32**2 / (4 * 24**2))]
    for n in (7, 40, 101, 2):
        s = scale_schedule(cfg, n)
        assert s["total_iter"] == n and sum(s["lr_scheduler"]["args"]["periods"]) == n
        assert sum(s["progressive_train"]["iters"]) == n
        assert cfg["total_iter"] == 40  # the input is not changed
    s = scale_schedule(cfg, 101)
    assert s["lr_scheduler"]["args"]["periods"] == [50, 51] and s["progressive_train"]["iters"] == [50, 51]
    assert s["warmup_iter"] == 20
    # the stage changes half-way, as in the original recipe
    assert [stage_at(s, it)[0] for it in (1, 50, 51, 101)] == [0, 0, 1, 1]
    one = scale_schedule(cfg, 1)  # fewer iterations than cycles: the first cycle
    assert one["total_iter"] == 1 and stage_at(one, 1)[0] == 0
    assert one["lr_scheduler"]["args"] == {"periods": [1], "restart_weights": [1], "eta_mins": [0.002]}
    steps = scale_schedule(dict(cfg, lr_scheduler={"name": "MultiStepLR", "args": {"milestones": [10, 30]}}), 80)
    assert steps["lr_scheduler"]["args"]["milestones"] == [20, 60]
    with pytest.raises(BudgetError, match="cannot rescale"):
        scale_schedule(dict(cfg, lr_scheduler={"name": "Other", "args": {"gamma": 0.5}}), 10)
    with pytest.raises(BudgetError, match="no iteration"):
        scale_schedule(cfg, 0)


def test_iterations_cost_later_stages_by_their_pixels(tmp_path):
    cfg = _config(tmp_path, 40)
    w = 2 * 32**2 / (4 * 24**2)  # the second stage's step relative to the first
    n = iterations_for(cfg, 100.0, 0.5, margin=1.0)
    assert n == int(100.0 / (0.5 * (1 + w) / 2))
    flat = _config(tmp_path, 40, progressive_train=None)
    assert iterations_for(flat, 100.0, 0.5, margin=0.9) == 180


def test_train_with_a_time_budget_runs_the_scaled_recipe_to_its_end(tmp_path, monkeypatch):
    cfg = _config(tmp_path, 10_000, valid_dataset=None)  # far more than fits: the budget decides the length
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    # The real probe runs, but reports 60 s per iteration: 10 minutes then fit a handful of iterations however
    # fast or loaded this machine is (a wall-clock budget of seconds failed on a busy CI machine).
    probes, real_probe = [], budget.probe_rate

    def slow_probe(*args, **kwargs):
        probes.append(real_probe(*args, **kwargs))
        return 60.0

    monkeypatch.setattr("ssmir.train.budget.probe_rate", slow_probe)
    result = CliRunner().invoke(app, ["train", "--config", str(path), "--output", str(run), "--cpu",
                                      "--time-budget", "10m", "--probe-iters", "3"])
    assert result.exit_code == 0, result.output
    assert len(probes) == 1 and probes[0] > 0
    assert "time budget 10m" in result.output and "iterations (the config: 10000)" in result.output
    scaled = load_config(run / "config.yaml")  # the run's recipe, loadable for --resume
    n = scaled["total_iter"]
    assert 1 <= n <= 9  # 0.9 x (600 s - the probe) / 60 s, the two stages costed by their pixels
    assert sum(scaled["lr_scheduler"]["args"]["periods"]) == n == sum(scaled["progressive_train"]["iters"])
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert ckpt["current_iter"] == n  # ran to the end of the scaled schedule
    assert ckpt["state"]["config"]["total_iter"] == n
    assert not (run / ".budget-probe").exists()


def test_time_budget_refuses_what_it_cannot_honour(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(_config(tmp_path, 40, valid_dataset=None)))
    base = ["train", "--config", str(path), "--output", str(tmp_path / "run"), "--cpu"]
    for extra, message in [(["--time-budget", "1h", "--resume", "last"], "--resume last"),
                           (["--time-budget", "1h", "--stop-after", "5"], "give one of them"),
                           (["--time-budget", "soon"], "expected a duration"),
                           (["--time-budget", "1h", "--probe-iters", "0"], "at least 1")]:
        result = CliRunner().invoke(app, base + extra)
        assert result.exit_code != 0 and message in result.output, (extra, result.output)
        assert "Traceback" not in result.output
