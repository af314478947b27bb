"""The ssmir command line, end to end through typer's runner and `python -m ssmir`."""

import subprocess
import sys

import torch
from typer.testing import CliRunner

import ssmir
import ssmir.models as M
from ssmir.cli import app
from ssmir.models.loading import save_model

runner = CliRunner()
ARGS = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
            mamba_cfg={"scan_type": "diagonal", "scan_count": 4, "scan_merge_method": "concate", "d_state": 4,
                       "d_conv": 3, "expand": 1, "conv_2d": True})


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and ssmir.__version__ in result.output
    out = subprocess.run([sys.executable, "-m", "ssmir", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "models" in out.stdout


def test_models_lists_architectures_and_zoo_with_parameters():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0
    for name in M.list():
        assert name in result.output
    assert "eamambasr-light-x2" in result.output and "725,056" in result.output
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.startswith("  ")}
    assert "bundled" in lines["eamamba-small-denoise-blind"] and "user" in lines["eamamba-sidd"]


def test_inspect_reports_a_loadable_checkpoint(tmp_path):
    path = save_model(M.create("eamamba", **ARGS), tmp_path / "m.safetensors")
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "eamamba" in result.output and "load strictly" in result.output


def test_inspect_plain_state_dict_with_config(tmp_path):
    import yaml

    path = tmp_path / "w.pth"
    torch.save(M.create("eamamba", **ARGS).state_dict(), path)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"name": "eamamba", "args": ARGS}}))
    result = runner.invoke(app, ["inspect", str(path), "--config", str(cfg)])
    assert result.exit_code == 0, result.output


def test_inspect_bad_inputs_exit_2_with_one_line_errors(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"garbage")
    result = runner.invoke(app, ["inspect", str(bad)])
    assert result.exit_code == 2 and "broken.pth" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["inspect", str(bad), "--config", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "none.yaml: no such file" in result.output
    torch.save(M.create("eamamba", **ARGS).state_dict(), tmp_path / "w.pth")
    result = runner.invoke(app, ["inspect", str(tmp_path / "w.pth"), "--arch", "nonexistent"])
    assert result.exit_code == 2 and "unknown model 'nonexistent'" in result.output
