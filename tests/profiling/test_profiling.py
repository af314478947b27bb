"""Profiling: FLOP counts against hand counts, the scan formula, size sweeps, and exact receptive fields."""

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import ssmir.models as M
from ssmir.cli import app
from ssmir.ops.selective_scan import scan_flops
from ssmir.profiling.erf import effective_receptive_field, save_heatmaps
from ssmir.profiling.flops import count_flops
from ssmir.profiling.measure import MeasureError, doubling_sizes, sweep
from ssmir.profiling.plots import growth_exponent


class ConvThenLinear(nn.Module):
    input_channels = (3,)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.dw = nn.Conv2d(8, 8, 5, padding=2, groups=8)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        y = self.dw(self.conv(x))
        return self.fc(y.flatten(2).transpose(1, 2))


def test_flops_of_known_modules_equal_hand_counts():
    h, w = 10, 12
    report = count_flops(ConvThenLinear(), h, w)
    conv = h * w * 8 * 3 * 9  # multiply-adds: output pixels x out channels x (in channels x kernel)
    dw = h * w * 8 * 1 * 25
    fc = h * w * 8 * 4
    assert report.by_module["conv"] == conv
    assert report.by_module["dw"] == dw
    assert report.by_module["fc"] == fc
    assert report.total == conv + dw + fc and report.scan == 0


def test_scan_flops_follow_the_official_formula():
    class ScanOnly(nn.Module):
        input_channels = (3,)

        def forward(self, x):
            from ssmir.ops import selective_scan

            b, c, h, w = x.shape
            u = x.reshape(b, c, h * w)
            A = torch.ones(c, 5, device=x.device)
            Bm = torch.ones(b, 5, h * w, device=x.device)
            return selective_scan(u, u, A, Bm, Bm, torch.ones(c, device=x.device))

    report = count_flops(ScanOnly(), 6, 7)
    assert report.scan == report.total == scan_flops(1, 3, 42, 5) == 9 * 1 * 42 * 3 * 5 + 1 * 3 * 42


def test_eamamba_scan_flops_are_the_sum_over_blocks():
    args = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                mamba_cfg={"scan_type": "diagonal", "scan_count": 4, "scan_merge_method": "concate", "d_state": 4,
                           "d_conv": 3, "expand": 1, "conv_2d": True})
    model = M.create("eamamba", **args)
    h = w = 16
    expected = 0
    for level, (dim, side) in enumerate([(8, 16), (16, 8), (32, 4), (64, 2), (32, 4), (16, 8), (16, 16), (16, 16)]):
        del level
        expected += scan_flops(1, dim, side * side, 4)  # concate heads: D = d_inner = dim in total
    assert count_flops(model, h, w).scan == expected


def test_flop_counting_needs_no_memory_for_large_inputs():
    model = M.create("eamambasr", dim=8, num_blocks=[1], upscale=2,
                     mamba_cfg={"scan_type": "diagonal", "scan_count": 8, "scan_merge_method": "concate",
                                "d_state": 4, "d_conv": 3, "expand": 1, "conv_2d": True})
    small, big = count_flops(model, 64, 64).total, count_flops(model, 2048, 2048).total
    assert big == pytest.approx(small * 1024, rel=0.01)


def test_sweep_stops_cleanly_at_the_first_failing_size():
    def measure(size):
        if size > 128:
            raise MeasureError(f"{size}x{size}: killed (out of memory?)")
        return {"gmacs": size * size * 1e-6}

    rows, stopped = sweep(doubling_sizes(32, 1024), measure)
    assert [r["size"] for r in rows] == [32, 64, 128]
    assert stopped.startswith("256x256")


def test_growth_exponent_recovers_power_laws():
    px = [1e3, 4e3, 1.6e4, 6.4e4]
    assert growth_exponent(px, [3 * p for p in px]) == pytest.approx(1.0)
    assert growth_exponent(px, [p**2 for p in px]) == pytest.approx(2.0)


def test_erf_of_stacked_convs_is_exactly_their_neighbourhood():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 3, 3, padding=1))
    with torch.no_grad():
        for conv in net:
            conv.weight.copy_(torch.rand_like(conv.weight) + 0.1)  # positive: no cancellation
    images = [torch.rand(3, 15, 15) for _ in range(2)]
    erf = effective_receptive_field(net, images)
    support = np.zeros((15, 15), dtype=bool)
    support[5:10, 5:10] = True  # two 3x3 convs: the 5x5 around the centre (7, 7)
    assert (erf[support] > 0).all()
    assert (erf[~support] == 0).all()


def test_erf_heatmap_png(tmp_path):
    path = save_heatmaps({"a": np.random.rand(8, 8), "b": np.random.rand(8, 8)}, tmp_path / "erf.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_cli_single_size_and_bad_options(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["profile", "--model", "eamambasr-light-x2", "--size", "32x32", "--repeat", "1",
                                 "--simple"])
    assert result.exit_code == 0, result.output
    assert "725,056 parameters" in result.output and "GMACs" in result.output
    result = runner.invoke(app, ["profile", "--model", "nope"])
    assert result.exit_code == 2 and "unknown" in result.output
    result = runner.invoke(app, ["profile", "--model", "eamambasr-light-x2", "--size", "big"])
    assert result.exit_code == 2 and "expected HxW" in result.output
    result = runner.invoke(app, ["profile", "--model", "emambair-event-deblur", "--size", "32x32"])
    assert result.exit_code == 2 and "multiples of 4 and at least 60" in result.output


def test_erf_cli_compares_two_configs(tmp_path):
    import yaml

    cfgs = []
    for name, count in (("one", 1), ("eight", 8)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"model": {"name": "eamamba", "args": {
            "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1,
            "mamba_cfg": {"scan_type": "diagonal", "scan_count": count, "scan_merge_method": "concate",
                          "d_state": 4, "d_conv": 3, "expand": 1, "conv_2d": True}}}}))
        cfgs += ["--config", str(path)]
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    from PIL import Image

    Image.fromarray((np.random.rand(40, 40, 3) * 255).astype(np.uint8)).save(imgs / "a.png")
    runner = CliRunner()
    out = tmp_path / "erf.png"
    result = runner.invoke(app, ["erf", *cfgs, "--images", str(imgs), "--size", "32", "-o", str(out)])
    assert result.exit_code == 2 and "--compare" in result.output
    result = runner.invoke(app, ["erf", *cfgs, "--images", str(imgs), "--size", "32", "--compare", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file()
    result = runner.invoke(app, ["erf", "--model", "eamambasr-light-x2", "--images", str(tmp_path / "none")])
    assert result.exit_code == 2 and "no such folder" in result.output
