"""BasicSR test option files: BasicSR's partitioned test, its uint8 metrics, its datasets, and clear errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from typer.testing import CliRunner

import ssmir.models as M
from ssmir.cli import app
from ssmir.eval.basicsr import (
    OptionError,
    build_test_set,
    calculate_psnr,
    calculate_ssim,
    partition_forward,
    tensor2img,
)

V1 = dict(in_chans=3, img_size=64, img_range=1.0, d_state=4, depths=[1], embed_dim=30, mlp_ratio=1.2)


@pytest.mark.parametrize("size", [(450, 230), (199, 201), (57, 64), (401, 613)])
@pytest.mark.parametrize("scale", [1, 2])
def test_partitions_reassemble_a_pixelwise_function_exactly(size, scale):
    calls = []

    def fn(t):
        calls.append(tuple(t.shape[-2:]))
        return F.interpolate(t * 2 + 1, scale_factor=scale, mode="nearest")

    x = torch.rand(1, 3, *size)
    out = partition_forward(fn, x, scale)
    assert torch.equal(out, fn(x))
    assert len(calls) - 1 == (size[0] // 200 + 1) * (size[1] // 200 + 1)
    if len(calls) > 2:  # parts overlap by a tenth of their size
        assert sum(h * w for h, w in calls[:-1]) > size[0] * size[1]


def test_metrics_match_scikit_image_on_rounded_images():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    crop = 3
    ac, bc = a[crop:-crop, crop:-crop], b[crop:-crop, crop:-crop]
    assert calculate_psnr(a, b, crop) == pytest.approx(peak_signal_noise_ratio(ac, bc, data_range=255), abs=1e-9)
    ssim_kw = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=2)
    assert calculate_ssim(a, b, crop) == pytest.approx(structural_similarity(ac, bc, **ssim_kw), abs=1e-9)
    # test_y_channel: BasicSR holds BGR images; Y is BT.601 on the 0-255 scale
    ya, yb = (rgb2ycbcr(x[..., ::-1])[..., 0] for x in (ac, bc))
    assert calculate_psnr(a, b, crop, True) == pytest.approx(peak_signal_noise_ratio(ya, yb, data_range=255),
                                                             abs=1e-4)
    assert calculate_ssim(a, b, crop, True) == pytest.approx(
        structural_similarity(ya, yb, **dict(ssim_kw, channel_axis=None)), abs=1e-6)
    gray = a[..., :1]
    assert calculate_psnr(gray, b[..., :1], 0, True) == pytest.approx(
        peak_signal_noise_ratio(gray, b[..., :1], data_range=255), abs=1e-4)  # Y of a gray image is itself


def test_tensor2img_clamps_rounds_and_orders_bgr():
    t = torch.tensor([[[1.2, 0.5 / 255]], [[0.5, -1.0]], [[0.0, 2.5 / 255]]])  # (3, 1, 2): R, G, B
    img = tensor2img(t)
    assert img.dtype == np.uint8 and img.shape == (1, 2, 3)
    assert img[0, 0].tolist() == [0, 128, 255] and img[0, 1].tolist() == [2, 0, 0]  # half to even: 0.5 -> 0, 2.5 -> 2


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_denoising_color_inputs_follow_basicsr_noise(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    _write(tmp_path / "dn" / "a.png", img)
    test_set = build_test_set("test_1", {"type": "PairedImageDataset", "task": "denoising_color", "noise": 25,
                                         "dataroot_gt": "dn", "dataroot_lq": "dn", "io_backend": {"type": "disk"}},
                              1, tmp_path)
    lq, gt = test_set.load(test_set.samples[0])
    bgr = img[..., ::-1].astype(np.float32) / 255.0  # as cv2 reads it
    np.random.seed(0)
    want = (bgr + np.random.normal(0, 25 / 255.0, bgr.shape))[..., ::-1].transpose(2, 0, 1).astype(np.float32)
    assert np.array_equal(lq.numpy(), want)
    assert np.array_equal(tensor2img(gt), img[..., ::-1])


def _sr_setup(tmp_path, **opt_extra):
    rng = np.random.default_rng(2)
    for name, (h, w) in {"a": (30, 44), "b": (26, 34)}.items():
        hr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        _write(tmp_path / "HR" / f"{name}.png", hr)
        _write(tmp_path / "LR" / f"{name}x2.png", np.asarray(Image.fromarray(hr).resize((w // 2, h // 2))))
    torch.manual_seed(0)
    raw = M.create("mambair", upscale=2, upsampler="pixelshuffledirect", **V1)
    ema = M.create("mambair", upscale=2, upsampler="pixelshuffledirect", **V1)
    torch.save({"params": raw.state_dict(), "params_ema": ema.state_dict()}, tmp_path / "net_g.pth")
    opt = {
        "name": "tiny", "model_type": "MambaIRModel", "scale": 2,
        "datasets": {"test_1": {"name": "Tiny", "type": "PairedImageDataset", "dataroot_gt": str(tmp_path / "HR"),
                                "dataroot_lq": str(tmp_path / "LR"), "filename_tmpl": "{}x2",
                                "io_backend": {"type": "disk"}}},
        "network_g": {"type": "MambaIR", "upscale": 2, "upsampler": "pixelshuffledirect", **V1},
        "path": {"pretrain_network_g": str(tmp_path / "net_g.pth"), "strict_load_g": True},
        "val": {"save_img": True, "suffix": None, "metrics": {
            "psnr": {"type": "calculate_psnr", "crop_border": 2, "test_y_channel": True},
            "ssim": {"type": "calculate_ssim", "crop_border": 2, "test_y_channel": True}}},
    }
    for key, value in opt_extra.items():
        opt[key] = value
    path = tmp_path / "test_tiny.yml"
    path.write_text(yaml.safe_dump(opt))
    return path, raw


def test_cli_scores_every_image_as_basicsr_with_the_params_weights(tmp_path):
    path, raw = _sr_setup(tmp_path)
    out = tmp_path / "results"
    result = CliRunner().invoke(app, ["test", "--config", str(path), "--output", str(out), "--save",
                                      str(tmp_path / "saved")])
    assert result.exit_code == 0, result.output
    assert "Tiny: psnr" in result.output and "over 2 images" in result.output
    lines = (out / "Tiny" / "per_image.csv").read_text().splitlines()
    assert lines[0] == "image,psnr,ssim,seconds" and len(lines) == 3
    raw.eval()
    for line in lines[1:]:
        name, psnr_text = line.split(",")[:2]
        lr = np.asarray(Image.open(tmp_path / "LR" / f"{name}.png"), dtype=np.float32) / 255
        hr = np.asarray(Image.open(tmp_path / "HR" / f"{name[:-2]}.png"))
        with torch.no_grad():
            sr = raw(torch.from_numpy(lr).permute(2, 0, 1)[None])[0]
        sr = np.round(sr.clamp(0, 1).numpy().transpose(1, 2, 0) * 255).astype(np.uint8)
        ys, yh = (rgb2ycbcr(x)[2:-2, 2:-2, 0] for x in (sr, hr[: sr.shape[0], : sr.shape[1]]))
        assert float(psnr_text) == pytest.approx(peak_signal_noise_ratio(yh, ys, data_range=255), abs=1e-3)
        assert (tmp_path / "saved" / "Tiny" / f"{name}_tiny.png").is_file()


@pytest.mark.parametrize("change,message", [
    ({"network_g": {"type": "SwinIR"}}, "network_g.type 'SwinIR'"),
    ({"model_type": "GANModel"}, "model_type 'GANModel'"),
    ({"val": {"metrics": {"niqe": {"type": "calculate_niqe", "crop_border": 0}}}}, "calculate_niqe"),
    ({"datasets": {"test_1": {"type": "PairedImageDataset", "dataroot_gt": "/nowhere/HR", "dataroot_lq": "/nowhere/LR",
                              "io_backend": {"type": "disk"}}}}, "/nowhere"),
    ({"datasets": {"test_1": {"type": "PairedImageDataset", "dataroot_gt": "a", "dataroot_lq": "b",
                              "io_backend": {"type": "lmdb"}}}}, "lmdb"),
    ({"datasets": {"test_1": {"type": "SingleImageDataset", "dataroot_lq": "b"}}}, "only PairedImageDataset"),
    ({"path": {}}, "pretrain_network_g"),
])
def test_bad_option_files_are_one_line_errors(tmp_path, change, message):
    path, _ = _sr_setup(tmp_path, **change)
    result = CliRunner().invoke(app, ["test", "--config", str(path), "--output", str(tmp_path / "r")])
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_set_overrides_data_paths_and_other_flags_are_refused(tmp_path):
    path, _ = _sr_setup(tmp_path)
    moved = tmp_path / "moved"
    (tmp_path / "HR").rename(moved)
    args = ["test", "--config", str(path), "--output", str(tmp_path / "r")]
    assert CliRunner().invoke(app, args).exit_code == 2
    ok = CliRunner().invoke(app, [*args, "--set", f"datasets.test_1.dataroot_gt={moved}"])
    assert ok.exit_code == 0, ok.output
    refused = CliRunner().invoke(app, [*args, "--ensemble"])
    assert refused.exit_code == 2 and "do not apply" in refused.output
    with pytest.raises(OptionError, match="no network_g"):
        from ssmir.eval.basicsr import read_options

        (tmp_path / "x.yml").write_text("name: x\n")
        read_options(tmp_path / "x.yml")
