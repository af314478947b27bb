"""ssmir train: learning, exact resume, 2-process Accelerate, the official recipes, data and config errors."""

import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

pytest.importorskip("accelerate")

import ssmir.models as ssmir_models  # noqa: E402
from ssmir.train.config import ConfigError, load_config, validate  # noqa: E402
from ssmir.train.data import DataError, RestorationData, imresize  # noqa: E402
from ssmir.train.schedulers import cosine_restart_cyclic  # noqa: E402
from ssmir.train.trainer import Trainer, TrainingError  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODEL = {"name": "eamamba", "args": {"dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1, "mamba_cfg": {
    "scan_type": "diagonal", "scan_count": 4, "scan_merge_method": "concate", "d_state": 4, "d_conv": 3,
    "expand": 1, "conv_2d": True}}}


def _images(folder: Path, n: int, seed: int, h=48, w=56):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:h, 0:w] / 48.0
    for i in range(n):
        img = np.stack([0.5 + 0.4 * np.sin(2 * np.pi * (yy * rng.uniform(0.5, 2) + xx * rng.uniform(0.5, 2))
                                           + rng.uniform(0, 6)) for _ in range(3)], -1)
        img[h // 3:h // 2, w // 4:w // 2] = rng.random(3)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / f"{i}.png")


def _config(tmp_path, total=40, **over):
    _images(tmp_path / "train", 6, 0)
    _images(tmp_path / "val", 2, 1)
    cfg = {
        "train_dataset": {"dataset": {"name": "denoising-color-dataset", "args": {
            "gt_dir": str(tmp_path / "train"), "sigma_type": "random", "sigma_range": [40, 60], "augment": True}},
            "batch_size": 4, "crop_size": 32},
        "valid_dataset": {"dataset": {"name": "denoising-color-dataset", "args": {
            "gt_dir": str(tmp_path / "val"), "sigma_type": "constant", "sigma_range": 50}},
            "batch_size": 1, "crop_size": 32},
        "model": MODEL, "e_decay": 0.8,
        "progressive_train": {"iters": [total // 2, total - total // 2], "batch_sizes": [4, 2], "crop_sizes": [24, 32]},
        "optimizer": {"name": "AdamW", "args": {"lr": 0.002, "weight_decay": 1e-4, "betas": [0.9, 0.999]}},
        "lr_scheduler": {"name": "CosineAnnealingRestartCyclicLR", "args": {
            "periods": [total // 2, total - total // 2], "restart_weights": [1, 1], "eta_mins": [0.002, 0.0002]}},
        "total_iter": total, "use_grad_clip": False, "print_freq": 10, "val_freq": total, "val_img_save_freq_mult": 1,
        "save_checkpoint_freq": 1000, "save_last_freq": 1000, "resume": None,
    }
    cfg.update(over)
    return validate(cfg)


def test_tiny_training_beats_the_noisy_input(tmp_path):
    result = Trainer(_config(tmp_path, 40), tmp_path / "run", cpu=True, progress=False).fit()
    assert result["psnr"] > result["input_psnr"] + 0.3, result
    out = tmp_path / "run"
    assert (out / "last.pth").is_file() and (out / "best.pth").is_file() and (out / "ema.safetensors").is_file()
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("iteration,loss,lr")
    assert list((out / "val").glob("*.png"))
    ckpt = torch.load(out / "last.pth", weights_only=True)
    assert set(ckpt) == {"model", "optimizer", "current_iter", "state"} and ckpt["current_iter"] == 40
    assert {"name", "args", "sd", "sd_e"} <= set(ckpt["model"])


def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    cfg = _config(tmp_path, 8, valid_dataset=None)
    Trainer(cfg, tmp_path / "a", cpu=True, progress=False).fit()
    Trainer(cfg, tmp_path / "b", cpu=True, progress=False, stop_after=5).fit()  # crosses the stage change at 4
    resumed = Trainer(cfg, tmp_path / "b", cpu=True, progress=False)
    resumed.resume(tmp_path / "b" / "last.pth")
    resumed.fit()
    a = torch.load(tmp_path / "a" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "last.pth", weights_only=True)
    assert a["current_iter"] == b["current_iter"] == 8
    for key in ("sd", "sd_e"):
        for name, t in a["model"][key].items():
            assert torch.equal(t, b["model"][key][name]), (key, name)
    assert a["state"]["scheduler"]["last_epoch"] == b["state"]["scheduler"]["last_epoch"] == 8


def test_init_weights_fine_tunes_from_a_trained_model_and_refuses_another_architecture(tmp_path):
    from ssmir.models.loading import read_checkpoint, save_model

    Trainer(_config(tmp_path, 40), tmp_path / "base", cpu=True, progress=False).fit()
    trained, _ = read_checkpoint(tmp_path / "base" / "ema.safetensors")
    tuned = Trainer(_config(tmp_path, 4, init_weights=str(tmp_path / "base" / "ema.safetensors")), tmp_path / "ft",
                    cpu=True, progress=False)
    for net in (tuned.model, tuned.ema):  # both start from the file's weights; optimizer and schedule fresh
        for name, t in net.state_dict().items():
            assert torch.equal(t, trained[name]), name
    assert tuned.iteration == 0
    scratch = Trainer(_config(tmp_path, 4), tmp_path / "scratch", cpu=True, progress=False)
    assert tuned.validate()["psnr"] > scratch.validate()["psnr"] + 0.3

    other = ssmir_models.create("mambairv2light", upscale=2, embed_dim=8, depths=[1], num_heads=[2], window_size=8,
                                d_state=4, inner_rank=4, num_tokens=8, convffn_kernel_size=3, mlp_ratio=1.0)
    save_model(other, tmp_path / "other.safetensors")
    with pytest.raises(TrainingError, match="mambairv2light"):
        Trainer(_config(tmp_path, 4, init_weights=str(tmp_path / "other.safetensors")), tmp_path / "bad", cpu=True,
                progress=False)
    with pytest.raises(TrainingError, match=r"^init_weights: .*missing\.safetensors: no such checkpoint file$"):
        Trainer(_config(tmp_path, 4, init_weights=str(tmp_path / "missing.safetensors")), tmp_path / "bad2",
                cpu=True, progress=False)


@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="accelerate launcher not installed")
def test_two_process_cpu_training_with_accelerate(tmp_path):
    cfg = _config(tmp_path, 4, valid_dataset=None)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    launcher = shutil.which("accelerate") or str(Path(sys.executable).parent / "accelerate")
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    out = subprocess.run([launcher, "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                          "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "ssmir", "train", "--config",
                          str(tmp_path / "cfg.yaml"), "--output", str(tmp_path / "run"), "--cpu"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert ckpt["current_iter"] == 4


def test_every_shipped_official_recipe_loads_and_builds():
    from ssmir.models.registry import create

    files = sorted((REPO / "configs" / "eamamba").glob("*.yaml"))
    assert len(files) == 13
    for f in files:
        cfg = load_config(f)
        with torch.device("meta"):
            model = create(cfg["model"]["name"], **cfg["model"]["args"])
        assert sum(p.numel() for p in model.parameters()) in (25_320_512, 725_056, 909_696, 872_768)


def test_config_errors_name_the_key(tmp_path):
    cfg = _config(tmp_path, 4)
    with pytest.raises(ConfigError, match="'total_itr' is unknown"):
        validate({**cfg, "total_itr": 5})
    with pytest.raises(ConfigError, match="'total_iter': expected int"):
        validate({**cfg, "total_iter": "many"})
    with pytest.raises(ConfigError, match=r"train_dataset.'crop'"):
        validate({**cfg, "train_dataset": {**cfg["train_dataset"], "crop": 3}})
    bad = {**cfg, "progressive_train": {"iters": [1, 2], "batch_sizes": [1], "crop_sizes": [8, 8]}}
    with pytest.raises(ConfigError, match="an entry per stage"):
        validate(bad)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert load_config(path, ["total_iter=7", "optimizer.args.lr=1e-4"])["optimizer"]["args"]["lr"] == 1e-4


def test_a_loss_named_in_the_config_is_the_loss_trained_with(tmp_path):
    """Each named pixel loss against its definition, times loss_weight (``mse`` was once trained as L1)."""
    torch.manual_seed(0)
    pred, gt = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)
    diff = pred - gt
    expected = {"l1": diff.abs().mean(), "mse": (diff**2).mean(),
                "charbonnier": torch.sqrt(diff**2 + 1e-6).mean()}
    for name, value in expected.items():
        for weight in (1.0, 2.5):
            trainer = Trainer(_config(tmp_path, 4, loss=name, loss_weight=weight), tmp_path / f"run-{name}",
                              cpu=True, progress=False)
            torch.testing.assert_close(trainer.loss_fn(pred, gt), weight * value)
    with pytest.raises(TrainingError, match="'charbonnier-basicsr' is for BasicSR option files"):
        Trainer(_config(tmp_path, 4, loss="charbonnier-basicsr"), tmp_path / "run-bad", cpu=True, progress=False)


def test_data_errors_are_reported_by_path_before_training(tmp_path):
    with pytest.raises(DataError, match="nowhere: no such folder"):
        RestorationData({"name": "denoising-color-dataset", "args": {"gt_dir": str(tmp_path / "nowhere")}})
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        RestorationData({"name": "denoising-color-dataset", "args": {"gt_dir": str(tmp_path / "empty")}})
    _images(tmp_path / "gt", 1, 0, 32, 32)
    _images(tmp_path / "lq", 1, 0, 15, 15)
    with pytest.raises(DataError, match="does not divide"):
        RestorationData({"name": "paired-dataset",
                         "args": {"gt_dir": str(tmp_path / "gt"), "lq_dir": str(tmp_path / "lq")}})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"not an image")
    with pytest.raises(DataError, match="x.png: unreadable"):
        RestorationData({"name": "denoising-color-dataset", "args": {"gt_dir": str(tmp_path / "bad")}})


def test_the_image_cache_changes_no_sample_and_keeps_to_its_budget(tmp_path):
    _images(tmp_path / "gt", 3, 0, 32, 32)  # 3 x 12 KiB decoded
    spec = {"name": "denoising-color-dataset", "args": {"gt_dir": str(tmp_path / "gt"), "sigma_type": "random",
                                                          "sigma_range": [0, 50], "augment": True}}
    plain = RestorationData({**spec, "args": {**spec["args"], "cache_mb": 0}})
    cached = RestorationData({**spec, "args": {**spec["args"], "cache_mb": 0.025}})  # room for two images
    for it in range(12):
        a, b = plain.training_sample(it, 0, 16), cached.training_sample(it, 0, 16)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(plain.cache.images) == 0 and len(cached.cache.images) == 2
    assert cached.cache.used == 2 * 3 * 32 * 32 * 4 <= cached.cache.budget
    with pytest.raises(DataError, match="cache_mb must be a number"):
        RestorationData({**spec, "args": {**spec["args"], "cache_mb": "lots"}})


def test_sr_pairs_crop_aligned_patches(tmp_path):
    _images(tmp_path / "gt", 2, 0, 32, 48)
    lq = tmp_path / "lq"
    lq.mkdir()
    for p in sorted((tmp_path / "gt").iterdir()):
        Image.open(p).resize((24, 16), Image.BICUBIC).save(lq / p.name)
    data = RestorationData({"name": "sr-paired-dataset", "args": {"gt_dir": str(tmp_path / "gt"), "lq_dir": str(lq)}})
    assert data.scale == 2
    x, y = data.training_sample(3, 0, 16)
    assert x.shape == (3, 8, 8) and y.shape == (3, 16, 16)


def test_matlab_bicubic_reproduces_linear_ramps_and_constants():
    ramp = torch.arange(1, 17, dtype=torch.float64).repeat(1, 16, 1)  # (1, 16, 16), ramp along W
    small = imresize(ramp, 0.5)
    assert small.shape == (1, 8, 8)
    torch.testing.assert_close(small[0, 4, 2:6], torch.tensor([5.5, 7.5, 9.5, 11.5], dtype=torch.float64))
    torch.testing.assert_close(imresize(torch.full((3, 9, 12), 0.3), 1 / 3), torch.full((3, 3, 4), 0.3))


def test_cosine_restart_cyclic_schedule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = cosine_restart_cyclic(opt, periods=[10, 20], restart_weights=[1, 1], eta_mins=[0.5, 0.0])
    lrs = []
    for _ in range(31):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1.0)
    assert lrs[5] == pytest.approx(0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[10] == pytest.approx(0.5)  # end of the first cycle (iteration <= 10 belongs to it)
    assert lrs[20] == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 20)))


def test_ctrl_c_saves_a_resumable_checkpoint(tmp_path):
    import signal
    import time

    cfg = _config(tmp_path, 100000, valid_dataset=None, save_last_freq=100000)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ssmir", "train", "--config", str(tmp_path / "cfg.yaml"), "--output",
                             str(run), "--cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + 120
    while not (run / "metrics.csv").exists() and time.time() < deadline:  # first log line: training is under way
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    ckpt = torch.load(run / "last.pth", weights_only=True)
    assert ckpt["current_iter"] >= 10
    resumed = Trainer({**cfg, "total_iter": ckpt["current_iter"] + 2}, run, cpu=True, progress=False)
    resumed.resume(run / "last.pth")
    assert resumed.fit()["iteration"] == ckpt["current_iter"] + 2


def _sequences(root: Path, count: int, seed: int, frames=7, size=40):
    """Sequences of a textured background with a bright square moving across it (motion blur when averaged)."""
    rng = np.random.default_rng(seed)
    for s in range(count):
        folder = root / f"seq{s}"
        folder.mkdir(parents=True)
        bg = np.clip(0.3 + 0.1 * rng.standard_normal((size, size, 3)), 0, 1)
        y0, x0, vx = rng.integers(4, size - 16), rng.integers(2, 8), rng.integers(2, 4)
        for k in range(frames):
            img = bg.copy()
            x = x0 + vx * k
            img[y0:y0 + 10, x:x + 10] = 0.9
            Image.fromarray((img * 255).astype(np.uint8)).save(folder / f"{k:03d}.png")


def test_emambair_trains_on_simulated_event_pairs(tmp_path):
    _sequences(tmp_path / "train", 4, 0)
    _sequences(tmp_path / "val", 2, 1)
    args = {"frames_per_blur": 7, "bins": 6, "contrast_threshold": 0.2, "threshold_sigma": 0.0}
    cfg = _config(tmp_path, 150, model={"name": "emambair", "args": {"wf": 8, "depth": 2, "num_heads": [1, 2]}},
                  train_dataset={"dataset": {"name": "event-sequence-dataset", "args": {
                                 "sequence_dir": str(tmp_path / "train"), "augment": True, **args}},
                                 "batch_size": 4, "crop_size": 32},
                  valid_dataset={"dataset": {"name": "event-sequence-dataset",
                                             "args": {"sequence_dir": str(tmp_path / "val"), **args}},
                                 "batch_size": 1, "crop_size": 40})
    cfg["progressive_train"] = None
    cfg["optimizer"]["args"]["lr"] = 0.003
    cfg["lr_scheduler"] = {"name": "MultiStepLR", "args": {"milestones": [150], "gamma": 0.5}}
    result = Trainer(validate(cfg), tmp_path / "run", cpu=True, progress=False).fit()
    # EmambaIR has no global residual: it must learn to reproduce the frame before it can beat the blur
    assert result["psnr"] > result["input_psnr"] + 1.0, result


def test_sigterm_stops_like_ctrl_c_and_saves_last(tmp_path):
    import signal
    import time

    cfg = _config(tmp_path, 100000)
    cfg["print_freq"] = 1
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ssmir", "train", "--config", str(path), "--output", str(run),
                             "--cpu"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not (run / "metrics.csv").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert (run / "metrics.csv").is_file(), proc.communicate()[0][-2000:]
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=240)[0]
    assert proc.returncode == 130, output[-2000:]
    assert "interrupted at iteration" in output
    saved = torch.load(run / "last.pth", weights_only=True)
    assert saved["current_iter"] >= 1
