"""`ssmir test` and `ssmir export` end to end on miniature datasets built from generated images."""

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

import ssmir.models as M
from ssmir.cli import app
from ssmir.models.loading import save_model

skm = pytest.importorskip("skimage.metrics")
runner = CliRunner()
CFG = {"scan_type": "diagonal", "scan_count": 4, "scan_merge_method": "concate", "d_state": 4, "d_conv": 3,
       "expand": 1, "conv_2d": True}


@pytest.fixture
def identity_weights(tmp_path):
    """A tiny EAMamba whose output conv is zero: its output is exactly its input (the global residual)."""
    model = M.create("eamamba", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, mamba_cfg=CFG)
    with torch.no_grad():
        model.output.weight.zero_()
    return save_model(model, tmp_path / "identity.safetensors")


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _rand_image(rng, h, w):
    return (rng.random((h, w, 3)) * 255).astype(np.uint8)


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_denoising_set_psnr_equals_an_independent_computation(tmp_path, identity_weights):
    rng = np.random.default_rng(0)
    root = tmp_path / "CBSD68"
    images = {"a": _rand_image(rng, 30, 37), "b": _rand_image(rng, 24, 29)}
    for name, arr in images.items():
        _write(root / f"{name}.png", arr)
    out = tmp_path / "res"
    result = runner.invoke(app, ["test", "--weights", str(identity_weights), "--dataset", "cbsd68", "--root",
                                 str(root), "--sigma", "25", "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = {r["image"]: r for r in _read_csv(out / "per_image.csv")}
    expected = []
    for name, arr in images.items():
        gt = arr.astype(np.float32) / 255.0
        h, w = gt.shape[:2]
        padded = np.pad(gt, ((0, (-h) % 8), (0, (-w) % 8), (0, 0)), mode="reflect")  # reflect, bottom/right
        torch.manual_seed(2454)  # the official test-time noise
        noise = (torch.randn(3, *padded.shape[:2]) * (torch.tensor([25.0]) / 255.0)).numpy().transpose(1, 2, 0)
        pred = np.clip(padded + noise, 0, 1)[:h, :w]
        want = skm.peak_signal_noise_ratio(gt.astype(np.float64), pred.astype(np.float64), data_range=1.0)
        assert float(rows[name]["psnr"]) == pytest.approx(want, abs=1e-3)
        expected.append(want)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["psnr"] == pytest.approx(np.mean(expected), abs=1e-3)
    assert summary["sigma"] == 25 and summary["images"] == 2 and "RGB" in summary["metric"]
    assert (out / "summary.md").read_text().startswith("| dataset |")


def test_deraining_pairs_use_the_y_channel(tmp_path, identity_weights):
    rng = np.random.default_rng(1)
    root = tmp_path / "Rain100L"
    gt, lq = _rand_image(rng, 32, 24), _rand_image(rng, 32, 24)
    _write(root / "target" / "1.png", gt)
    _write(root / "input" / "1.png", lq)
    out = tmp_path / "res"
    result = runner.invoke(app, ["test", "--weights", str(identity_weights), "--dataset", "rain100l", "--root",
                                 str(root), "--output", str(out), "--save", str(tmp_path / "imgs")])
    assert result.exit_code == 0, result.output

    def y(a):
        a = a.astype(np.float64) / 255
        return (65.481 * a[..., 0] + 128.553 * a[..., 1] + 24.966 * a[..., 2] + 16) / 255

    want = skm.peak_signal_noise_ratio(y(gt), y(lq), data_range=1.0)
    assert float(_read_csv(out / "per_image.csv")[0]["psnr"]) == pytest.approx(want, abs=1e-3)
    assert (tmp_path / "imgs" / "1.png").is_file()


def test_classic_sr_crops_the_border_and_uses_y(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "Set5"
    _write(root / "HR" / "bird.png", _rand_image(rng, 34, 30))  # not divisible by 4: the GT is mod-cropped
    _write(root / "LR_bicubic" / "X2" / "birdx2.png", _rand_image(rng, 17, 15))
    model = M.create("eamambasr", dim=8, num_blocks=[1], upscale=2, ffn_expansion_factor=1, mamba_cfg=CFG)
    weights = save_model(model, tmp_path / "sr.safetensors")
    out = tmp_path / "res"
    result = runner.invoke(app, ["test", "--weights", str(weights), "--dataset", "set5", "--root", str(root),
                                 "--scale", "2", "--output", str(out), "--tile", "8", "--overlap", "4"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert "border crop 2" in summary["metric"] and "Y" in summary["metric"] and summary["tile"] == 8


def test_sidd_blocks_and_the_submission_exporter(tmp_path, identity_weights):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(3)
    gt = (rng.random((2, 3, 24, 24, 3)) * 255).astype(np.uint8)
    noisy = np.clip(gt.astype(int) + rng.integers(-20, 20, gt.shape), 0, 255).astype(np.uint8)
    scipy_io.savemat(tmp_path / "ValidationNoisyBlocksSrgb.mat", {"ValidationNoisyBlocksSrgb": noisy})
    scipy_io.savemat(tmp_path / "ValidationGtBlocksSrgb.mat", {"ValidationGtBlocksSrgb": gt})
    out = tmp_path / "res"
    result = runner.invoke(app, ["test", "--weights", str(identity_weights), "--dataset", "sidd", "--root",
                                 str(tmp_path), "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = _read_csv(out / "per_image.csv")
    assert [r["image"] for r in rows[:2]] == ["0001_01", "0001_02"] and len(rows) == 6
    want = skm.peak_signal_noise_ratio(gt[1, 2] / 255.0, noisy[1, 2] / 255.0, data_range=1.0)
    assert float(rows[-1]["psnr"]) == pytest.approx(want, abs=1e-3)

    result = runner.invoke(app, ["export", "sidd", "--weights", str(identity_weights), "--root", str(tmp_path),
                                 "--output", str(tmp_path / "mat"), "--name", "mine"])
    assert result.exit_code == 0, result.output
    mat = scipy_io.loadmat(tmp_path / "mat" / "mine_Idenoised.mat")["Idenoised"]
    assert mat.dtype == np.float32 and mat.shape == noisy.shape
    np.testing.assert_allclose(mat, noisy / 255.0, atol=1e-6)


def test_deblur_exporter_writes_pngs_named_after_inputs(tmp_path, identity_weights):
    rng = np.random.default_rng(4)
    arr = _rand_image(rng, 21, 19)
    _write(tmp_path / "in" / "GOPR0384_11_00-000001.png", arr)
    result = runner.invoke(app, ["export", "deblur", "--weights", str(identity_weights), "--input",
                                 str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--dataset", "HIDE"])
    assert result.exit_code == 0, result.output
    saved = np.asarray(Image.open(tmp_path / "out" / "HIDE" / "GOPR0384_11_00-000001.png"))
    np.testing.assert_array_equal(saved, arr)  # identity model, 8-bit round trip


def test_official_test_config_with_list_files(tmp_path, identity_weights):
    import yaml

    rng = np.random.default_rng(5)
    gt, lq = _rand_image(rng, 24, 24), _rand_image(rng, 24, 24)
    _write(tmp_path / "gt" / "x.png", gt)
    _write(tmp_path / "lq" / "x.png", lq)
    (tmp_path / "gt.txt").write_text(f"{tmp_path / 'gt' / 'x.png'}\n")
    (tmp_path / "lq.txt").write_text(f"{tmp_path / 'lq' / 'x.png'}\n")
    cfg = {"test_dataset": {"dataset": {"name": "paired-dataset", "args": {
        "gt_data_file": str(tmp_path / "gt.txt"), "lq_data_file": str(tmp_path / "lq.txt"), "phase": "test"}},
        "batch_size": 1}, "eval_y_only": True}
    (tmp_path / "test.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "res"
    result = runner.invoke(app, ["test", "--weights", str(identity_weights), "--test-config",
                                 str(tmp_path / "test.yaml"), "--output", str(out), "--ensemble"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ensemble"] == 4 and "Y" in summary["metric"]


def test_bad_dataset_inputs_give_one_line_errors(tmp_path, identity_weights):
    def run(*args):
        return runner.invoke(app, ["test", "--weights", str(identity_weights), *args])

    r = run("--dataset", "cbsd68", "--root", str(tmp_path / "nowhere"), "--sigma", "15")
    assert r.exit_code == 2 and "nowhere: no such folder" in r.output
    r = run("--dataset", "cbsd68", "--root", str(tmp_path))
    assert r.exit_code == 2 and "needs --sigma" in r.output
    r = run("--dataset", "imagenet", "--root", str(tmp_path))
    assert r.exit_code == 2 and "unknown dataset" in r.output
    (tmp_path / "input").mkdir()
    _write(tmp_path / "input" / "1.png", np.zeros((8, 8, 3), np.uint8))
    r = run("--dataset", "gopro", "--root", str(tmp_path))
    assert r.exit_code == 2 and "target: missing folder" in r.output
    _write(tmp_path / "target" / "2.png", np.zeros((8, 8, 3), np.uint8))
    r = run("--dataset", "gopro", "--root", str(tmp_path))
    assert r.exit_code == 2 and "no ground truth" in r.output
    assert all("Traceback" not in x for x in (r.output,))


def test_dual_pixel_set_feeds_six_channels(tmp_path):
    rng = np.random.default_rng(6)
    for sub in ("inputL", "inputR", "inputC", "target"):
        _write(tmp_path / sub / "p.png", _rand_image(rng, 24, 24))
    model = M.create("eamamba", inp_channels=6, dual_pixel_task=True, dim=8, num_blocks=[1, 1, 1, 1],
                     num_refinement_blocks=1, mamba_cfg=CFG)
    weights = save_model(model, tmp_path / "dp.safetensors")
    r = runner.invoke(app, ["test", "--weights", str(weights), "--dataset", "dpdd-dual", "--root", str(tmp_path),
                            "--output", str(tmp_path / "res")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["test", "--weights", str(weights), "--dataset", "dpdd", "--root", str(tmp_path)])
    assert r.exit_code == 2 and "channels" in r.output
    _write(tmp_path / "small" / "input" / "s.png", _rand_image(rng, 12, 12))
    _write(tmp_path / "small" / "target" / "s.png", _rand_image(rng, 12, 12))
    r = runner.invoke(app, ["test", "--weights", str(weights), "--dataset", "gopro", "--root", str(tmp_path / "small")])
    assert r.exit_code == 2


def test_jpeg_degradation_is_real_compression():
    from ssmir.data.benchmarks import jpeg_compress

    img = torch.rand(1, 32, 32).mul(255).round() / 255
    low, high = jpeg_compress(img, 10), jpeg_compress(img, 95)
    assert F.mse_loss(high, img) < F.mse_loss(low, img)


def test_event_deblurring_set_feeds_frame_and_voxels_to_emambair(tmp_path):
    rng = np.random.default_rng(7)
    for sub in ("blur", "sharp"):
        _write(tmp_path / sub / "f1.png", _rand_image(rng, 40, 44))
    (tmp_path / "events").mkdir()
    n = 300
    np.savez(tmp_path / "events" / "f1.npz", x=rng.integers(0, 44, n), y=rng.integers(0, 40, n),
             t=np.sort(rng.random(n)), p=rng.integers(0, 2, n))
    model = M.create("emambair", wf=8, depth=2, num_heads=[1, 2])
    weights = save_model(model, tmp_path / "em.safetensors")
    out = tmp_path / "res"
    r = runner.invoke(app, ["test", "--weights", str(weights), "--dataset", "event-deblur", "--root", str(tmp_path),
                            "--output", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "summary.json").read_text())["images"] == 1
    (tmp_path / "events" / "f1.npz").unlink()
    r = runner.invoke(app, ["test", "--weights", str(weights), "--dataset", "event-deblur", "--root", str(tmp_path)])
    assert r.exit_code == 2 and "no event file" in r.output


def test_sixteen_bit_rgb_png_is_read_at_full_precision(tmp_path):
    import png

    from ssmir.data.io import read_image

    deep = (np.random.default_rng(9).random((5, 6, 3)) * 65535).astype(np.uint16)
    with open(tmp_path / "d.png", "wb") as f:
        png.Writer(6, 5, bitdepth=16, greyscale=False).write(f, deep.reshape(5, -1).tolist())
    img = read_image(tmp_path / "d.png")
    np.testing.assert_allclose(img.numpy().transpose(1, 2, 0), deep / 65535.0, atol=1e-7)


def _yaml(path, cfg):
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sr_paired_test_config_crops_the_ground_truth_to_scale_times_the_input(tmp_path):
    # Set14/B100/Urban100 HR sizes are often not multiples of the scale: the official SRPairedDataset
    # keeps img_gt[:h_lr*s, :w_lr*s], with s the ratio of the heights
    from ssmir.data.benchmarks import benchmark_from_config

    rng = np.random.default_rng(3)
    _write(tmp_path / "hr.png", _rand_image(rng, 123, 157))
    _write(tmp_path / "lr.png", _rand_image(rng, 61, 78))
    (tmp_path / "gt.txt").write_text(f"{tmp_path / 'hr.png'}\n")
    (tmp_path / "lq.txt").write_text(f"{tmp_path / 'lr.png'}\n")
    args = {"gt_data_file": str(tmp_path / "gt.txt"), "lq_data_file": str(tmp_path / "lq.txt"), "phase": "test"}
    cfg = {"test_dataset": {"dataset": {"name": "sr-paired-dataset", "args": args}}, "eval_y_only": True}
    bench = benchmark_from_config(cfg, tmp_path, scale=2)
    assert bench.samples[0].gt().shape == (3, 122, 156) and bench.convention.crop == 2
    model = M.create("eamambasr", dim=8, num_blocks=[1], upscale=2, ffn_expansion_factor=1, mamba_cfg=CFG)
    weights = save_model(model, tmp_path / "sr.safetensors")
    config = _yaml(tmp_path / "t.yaml", cfg)
    result = runner.invoke(app, ["test", "--weights", str(weights), "--test-config", str(config), "--scale", "2",
                                 "--output", str(tmp_path / "res")])
    assert result.exit_code == 0, result.output
    # y_only (the official yRealSR configs): both images become 8-bit BT.601 Y before the network
    cfg["test_dataset"]["dataset"]["args"]["y_only"] = True
    y = benchmark_from_config(cfg, tmp_path, scale=2).samples[0].lq()
    rgb = torch.from_numpy(np.asarray(Image.open(tmp_path / "lr.png"), dtype=np.float64)).permute(2, 0, 1)
    want = torch.round(65.481 / 255 * rgb[0] + 128.553 / 255 * rgb[1] + 24.966 / 255 * rgb[2] + 16.0) / 255
    assert y.shape == (1, 61, 78)
    torch.testing.assert_close(y[0].double(), want, atol=1e-6, rtol=0)


def test_eamamba_inputs_are_padded_to_8_before_the_ensemble(tmp_path):
    # the official datasets reflect-pad every input (bottom/right) to a multiple of 8, and the x4 ensemble
    # flips that padded image; the scan is global, so this changes every pixel of the output
    from ssmir.data.benchmarks import Benchmark, Convention, Sample
    from ssmir.eval.metrics import psnr
    from ssmir.eval.tester import evaluate

    torch.manual_seed(0)
    model = M.create("eamambasr", dim=8, num_blocks=[1], upscale=2, ffn_expansion_factor=1, mamba_cfg=CFG).eval()
    lq, gt = torch.rand(3, 13, 19), torch.rand(3, 26, 38)
    bench = Benchmark("toy", "classic SR", Convention(), [Sample("a", lambda: gt, lambda: lq)])
    rows, _ = evaluate(model, bench, ensemble=4, progress=False)
    padded = F.pad(lq[None], (0, 5, 0, 3), mode="reflect")  # 16 x 24
    with torch.no_grad():
        flips = [(), (-1,), (-2,), (-2, -1)]
        pred = sum(model(padded.flip(d) if d else padded).flip(d) if d else model(padded) for d in flips) / 4
    want = psnr(pred[0, :, :26, :38].clamp(0, 1), gt)
    assert rows[0]["psnr"] == pytest.approx(want, abs=1e-6)
    unpadded = model(lq[None]).detach()  # what a model without the official padding gives
    assert abs(psnr(unpadded[0].clamp(0, 1), gt) - want) > 1e-4
