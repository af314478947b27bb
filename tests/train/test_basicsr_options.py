"""BasicSR training option files: translation, BasicSR's data/loss/schedule conventions, its checkpoint layout
(both ways), resume, and clear errors."""

import collections
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("accelerate")

from ssmir.cli import app  # noqa: E402
from ssmir.models.loading import load_model  # noqa: E402
from ssmir.train.basicsr import BasicSRPairedData, from_options  # noqa: E402
from ssmir.train.config import ConfigError, load_config  # noqa: E402
from ssmir.train.trainer import Trainer  # noqa: E402

NET = {"type": "MambaIR", "upscale": 2, "in_chans": 3, "img_size": 64, "img_range": 1.0, "d_state": 4, "depths": [1],
       "embed_dim": 30, "mlp_ratio": 1.2, "upsampler": "pixelshuffledirect", "resi_connection": "1conv",
       "drop_path_rate": 0.0}


def _data(root, n=3, size=(40, 48)):
    rng = np.random.default_rng(0)
    for d in ("HR", "LR"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        hr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(hr).save(root / "HR" / f"im{i}.png")
        Image.fromarray(hr).resize((size[1] // 2, size[0] // 2), Image.BICUBIC).save(root / "LR" / f"im{i}x2.png")


def _options(root, **train_extra):
    ds = {"type": "PairedImageDataset", "dataroot_gt": [str(root / "HR")], "dataroot_lq": [str(root / "LR")],
          "filename_tmpl": "{}x2", "io_backend": {"type": "disk"}}
    return {
        "name": "tiny", "model_type": "MambaIRModel", "scale": 2, "num_gpu": 1, "manual_seed": 10,
        "datasets": {"train": {**ds, "task": "SR", "name": "t", "gt_size": 16, "use_hflip": True, "use_rot": True,
                               "use_shuffle": True, "num_worker_per_gpu": 8, "batch_size_per_gpu": 2,
                               "dataset_enlarge_ratio": 100, "prefetch_mode": None},
                     "val": {**ds, "name": "v", "dataroot_gt": str(root / "HR"), "dataroot_lq": str(root / "LR")}},
        "network_g": dict(NET),
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None},
        "train": {"optim_g": {"type": "Adam", "lr": 2e-4, "weight_decay": 0, "betas": [0.9, 0.99]},
                  "scheduler": {"type": "MultiStepLR", "milestones": [2, 3], "gamma": 0.5},
                  "total_iter": 4, "warmup_iter": -1,
                  "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"}, **train_extra},
        "val": {"val_freq": 2, "save_img": False,
                "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": 2, "test_y_channel": True}}},
        "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False, "wandb": {"project": None}},
        "dist_params": {"backend": "nccl", "port": 29500},
    }


def _write(path, opt):
    path.write_text(yaml.safe_dump(opt))
    return path


def _train(args):
    result = CliRunner().invoke(app, ["train", *args, "--cpu"])
    assert result.exit_code == 0, result.output
    return result


def test_training_writes_basicsr_files_that_resume_exactly_and_load_anywhere(tmp_path):
    _data(tmp_path / "d")
    cfg = _write(tmp_path / "train.yml", _options(tmp_path / "d"))
    _train(["--config", str(cfg), "--output", str(tmp_path / "a")])
    models, states = tmp_path / "a" / "models", tmp_path / "a" / "training_states"
    assert sorted(p.name for p in models.iterdir()) == ["net_g_2.pth", "net_g_4.pth", "net_g_latest.pth"]
    assert sorted(p.name for p in states.iterdir()) == ["2.state", "4.state"]
    net = torch.load(models / "net_g_4.pth", weights_only=True)
    assert list(net) == ["params"]  # no EMA without ema_decay, as BasicSR
    state = torch.load(states / "2.state", weights_only=True)
    assert state["iter"] == 2 and state["schedulers"][0]["last_epoch"] == 1  # BasicSR steps at an iteration's start
    assert state["optimizers"][0]["param_groups"][0]["lr"] == pytest.approx(2e-4)  # the lr iteration 2 used
    model = load_model(models / "net_g_4.pth")  # ssmir reads BasicSR files by detection
    assert model.ssmir_config["name"] == "mambair"

    (tmp_path / "b").mkdir()
    for d in ("models", "training_states"):
        (tmp_path / "b" / d).mkdir()
    (tmp_path / "b" / "models" / "net_g_2.pth").write_bytes((models / "net_g_2.pth").read_bytes())
    (tmp_path / "b" / "training_states" / "2.state").write_bytes((states / "2.state").read_bytes())
    _train(["--config", str(cfg), "--output", str(tmp_path / "b"), "--resume",
            str(tmp_path / "b" / "training_states" / "2.state")])
    resumed = torch.load(tmp_path / "b" / "models" / "net_g_4.pth", weights_only=True)["params"]
    for k, v in net["params"].items():
        assert torch.equal(resumed[k], v), k


def test_a_state_written_by_basicsr_resumes_on_its_schedule(tmp_path):
    _data(tmp_path / "d")
    opt = _options(tmp_path / "d")
    trainer = Trainer(from_options(opt), tmp_path / "run", cpu=True, progress=False)
    exp = tmp_path / "exp"
    (exp / "models").mkdir(parents=True)
    (exp / "training_states").mkdir()
    torch.save({"params": trainer.model.state_dict()}, exp / "models" / "net_g_3.pth")
    adam = torch.optim.Adam(trainer.model.parameters(), lr=2e-4, betas=(0.9, 0.99))
    for g in adam.param_groups:
        g["initial_lr"], g["lr"] = 2e-4, 1e-4  # the lr BasicSR used at iteration 3 (milestone 2 passed)
    sched = {"milestones": collections.Counter({2: 1, 3: 1}), "gamma": 0.5, "restarts": (0,), "restart_weights": (1,),
             "base_lrs": [2e-4], "last_epoch": 2, "_step_count": 3, "_get_lr_called_within_step": False,
             "_last_lr": [1e-4]}  # BasicSR's MultiStepRestartLR after iteration 3
    torch.save({"epoch": 0, "iter": 3, "optimizers": [adam.state_dict()], "schedulers": [sched]},
               exp / "training_states" / "3.state")
    trainer.resume(exp / "training_states" / "3.state")
    assert trainer.iteration == 3
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-5)  # iteration 4 passes milestone 3
    missing = tmp_path / "lone.state"
    missing.write_bytes((exp / "training_states" / "3.state").read_bytes())
    from ssmir.train.trainer import TrainingError

    with pytest.raises(TrainingError, match="net_g_3.pth is missing"):
        trainer.resume(missing)


def test_warmup_ema_loss_weight_and_pretrained_params_key(tmp_path):
    _data(tmp_path / "d")
    opt = _options(tmp_path / "d", warmup_iter=4, ema_decay=0.999)
    opt["train"]["pixel_opt"] = {"type": "MSELoss", "loss_weight": 3.0}
    init = tmp_path / "init.pth"
    from ssmir.models.registry import create

    args = {k: v for k, v in NET.items() if k != "type"}
    raw, ema = create("mambair", **args), create("mambair", **args)
    torch.save({"params": raw.state_dict(), "params_ema": ema.state_dict()}, init)
    opt["path"].update(pretrain_network_g=str(init), param_key_g="params_ema")
    cfg = from_options(opt)
    assert cfg["e_decay"] == 0.999 and cfg["loss"] == "mse" and cfg["loss_weight"] == 3.0
    trainer = Trainer(cfg, tmp_path / "run", cpu=True, progress=False, stop_after=1)
    for k, v in ema.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[k], v), k
    pred, gt = torch.zeros(1, 3, 2, 2), torch.ones(1, 3, 2, 2)
    assert trainer.loss_fn(pred, gt).item() == pytest.approx(3.0)
    trainer.fit()
    assert trainer.lr_used[0] == pytest.approx(2e-4 * 1 / 4)  # BasicSR's linear warm-up at iteration 1
    saved = torch.load(trainer.output / "last.pth", weights_only=True)
    assert saved["current_iter"] == 1


@pytest.mark.parametrize("kind, formula", [
    ("L1Loss", lambda d: d.abs().mean()),
    ("MSELoss", lambda d: (d**2).mean()),
    ("CharbonnierLoss", lambda d: torch.sqrt(d**2 + 1e-12).mean()),  # BasicSR: eps inside the root, unsquared
])
def test_each_pixel_opt_type_is_the_loss_of_its_formula_times_loss_weight(tmp_path, kind, formula):
    from ssmir.train.basicsr import make_loss

    opt = _options(tmp_path / "d")
    opt["train"]["pixel_opt"] = {"type": kind, "loss_weight": 0.5, "reduction": "mean"}
    loss = make_loss(from_options(opt))
    gen = torch.Generator().manual_seed(0)
    pred, gt = torch.rand(2, 3, 5, 5, generator=gen), torch.rand(2, 3, 5, 5, generator=gen)
    assert loss(pred, gt).item() == pytest.approx(0.5 * formula(pred - gt).item(), rel=1e-6)


def test_degradation_tasks_and_augmentation(tmp_path):
    _data(tmp_path / "d")
    root = tmp_path / "d"
    opt = _options(root)
    dn = dict(opt["datasets"]["train"], task="denoising_color", noise=25, dataroot_lq=[str(root / "HR")],
              filename_tmpl="{}")
    data = BasicSRPairedData({"options": dn, "scale": 1}, tmp_path, seed=0, train=True)
    noisy = [data.training_sample(it, 0, 32) for it in range(1, 40)]
    residual = torch.cat([(lq - gt).flatten() for lq, gt in noisy])
    assert residual.std().item() == pytest.approx(25 / 255, rel=0.05)
    car = tmp_path / "car"
    (car / "HQ").mkdir(parents=True)
    (car / "LQ").mkdir()
    for p in (root / "HR").glob("*.png"):
        gray = Image.open(p).convert("L")
        gray.save(car / "HQ" / p.name)
        gray.save(car / "LQ" / f"{p.stem}.jpg", quality=10)
    spec = dict(opt["datasets"]["train"], task="CAR", dataroot_gt=str(car / "HQ"), dataroot_lq=str(car / "LQ"),
                filename_tmpl="{}")
    lq, gt = BasicSRPairedData({"options": spec, "scale": 1}, tmp_path, train=True).training_sample(1, 0, 16)
    assert lq.shape == gt.shape == (1, 16, 16)
    sr = BasicSRPairedData({"options": opt["datasets"]["train"], "scale": 2}, tmp_path, train=True)
    shapes = {sr.training_sample(it, 0, 16)[1].shape for it in range(1, 20)}
    assert shapes == {(3, 16, 16)}
    views = {tuple(sr.training_sample(it, 0, 16)[0].flatten()[:4].tolist()) for it in range(1, 8)}
    assert len(views) > 1


@pytest.mark.parametrize("change,message", [
    (lambda o: o["train"]["pixel_opt"].update(type="PerceptualLoss"), "pixel_opt.type 'PerceptualLoss'"),
    (lambda o: o["train"]["scheduler"].update(type="StepLR"), "scheduler.type 'StepLR'"),
    (lambda o: o["train"]["optim_g"].update(type="SGD"), "optim_g.type 'SGD'"),
    (lambda o: o["datasets"]["train"].update(color="y"), "datasets.train.color"),
    (lambda o: o["datasets"]["train"].update(type="SingleImageDataset"), "only PairedImageDataset"),
    (lambda o: o["datasets"]["train"]["io_backend"].update(type="lmdb"), "lmdb"),
    (lambda o: o["network_g"].update(type="SwinIR"), "network_g.type 'SwinIR'"),
    (lambda o: o.update(network_d={"type": "VGG"}), "network_d"),
    (lambda o: o["datasets"]["train"].update(gt_size=15), "not a multiple of scale 2"),
])
def test_unsupported_options_are_clear_errors(tmp_path, change, message):
    opt = _options(tmp_path)
    change(opt)
    with pytest.raises(ConfigError, match=message):
        from_options(opt)


def test_unknown_keys_warn_and_cli_errors_are_one_line(tmp_path):
    opt = _options(tmp_path / "d")
    opt["train"]["mystery"] = 1
    with pytest.warns(UserWarning, match="train.mystery"):
        from_options(opt)
    cfg = _write(tmp_path / "t.yml", _options(tmp_path / "nowhere"))
    result = CliRunner().invoke(app, ["train", "--config", str(cfg), "--output", str(tmp_path / "o"), "--cpu"])
    assert result.exit_code == 2 and "nowhere" in result.output and "Traceback" not in result.output
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = load_config(cfg, ["train.total_iter=7", f"datasets.train.dataroot_gt={tmp_path}"])
    assert loaded["total_iter"] == 7 and loaded["model"]["name"] == "mambair"
