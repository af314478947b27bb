"""BasicSR training option files (``csguoh/MambaIR``'s ``options/train/**/*.yml``) for ``ssmir train``.

``from_options`` turns an option file into ssmir's training config, so that the same loop (Accelerate, resume,
Ctrl-C safety, progress, TensorBoard) trains it; what is BasicSR's is kept:

- ``network_g`` (MambaIR, MambaIRv2, MambaIRv2Light), ``manual_seed``, ``scale``;
- ``datasets.train``: ``PairedImageDataset`` (``dataroot_gt``/``dataroot_lq`` as folders or lists,
  ``filename_tmpl``, ``meta_info_file``, ``gt_size``, ``use_hflip``, ``use_rot``, ``batch_size_per_gpu``) with
  the MambaIR repository's tasks (``CAR``: grayscale pairs, ``<name>.jpg`` inputs; ``denoising_color`` /
  ``denoising_gray``: Gaussian noise of level ``noise`` added on the fly); ``datasets.val`` as ``ssmir test
  --config`` reads a test set;
- ``train.optim_g`` (Adam, AdamW), ``train.scheduler`` (MultiStepLR, CosineAnnealingRestartLR),
  ``total_iter``, ``warmup_iter``, ``ema_decay`` (0 or absent: no EMA, as BasicSR), ``pixel_opt`` (L1Loss,
  MSELoss, CharbonnierLoss with ``loss_weight``), no gradient clipping;
- ``val.val_freq`` and ``val.metrics`` scored as BasicSR (partitioned test of the MambaIR models, uint8
  outputs), ``logger.print_freq``, ``logger.save_checkpoint_freq``, ``logger.use_tb_logger``;
- ``path.pretrain_network_g`` / ``param_key_g`` / ``strict_load_g`` (initial weights) and
  ``path.resume_state`` (a BasicSR ``training_states/<iter>.state``);
- checkpoints in BasicSR's layout: ``models/net_g_<iter>.pth`` (``params``, and ``params_ema`` with EMA),
  ``training_states/<iter>.state`` (``iter``, ``optimizers``, ``schedulers``), ``models/net_g_latest.pth`` at
  the end, so that BasicSR and ssmir load each other's files.

Keys that only steer BasicSR's machinery (workers, prefetching, ``dataset_enlarge_ratio``, ``num_gpu``,
``dist_params``, wandb) are accepted; unknown keys are warned about by name; keys that would change the
result and are not supported are a ``ConfigError`` naming them.
"""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import numpy as np
import torch

from ssmir.eval.basicsr import PARTITION_MODELS, WHOLE_MODELS, OptionError, network_spec
from ssmir.train.config import ConfigError
from ssmir.train.losses import PIXEL_LOSSES

MODEL_TYPES = PARTITION_MODELS + WHOLE_MODELS

_TOP = {"name", "model_type", "scale", "num_gpu", "manual_seed", "datasets", "network_g", "path", "train", "val",
        "logger", "dist_params", "dist", "is_train", "find_unused_parameters", "use_static_graph", "cudnn_benchmark"}
_MACHINERY = {"use_shuffle", "num_worker_per_gpu", "prefetch_mode", "dataset_enlarge_ratio", "pin_memory",
              "persistent_workers", "io_backend", "name", "phase", "scale"}
_DATASET = {"type", "task", "noise", "dataroot_gt", "dataroot_lq", "filename_tmpl", "meta_info_file", "gt_size",
            "use_hflip", "use_rot", "batch_size_per_gpu"} | _MACHINERY
_TRAIN = {"optim_g", "scheduler", "total_iter", "warmup_iter", "ema_decay", "pixel_opt"}
_LOSSES = {"L1Loss": "l1", "MSELoss": "mse", "CharbonnierLoss": "charbonnier-basicsr"}


def is_option_file(raw) -> bool:
    """A BasicSR option file (rather than an EAMamba-schema config)?"""
    return isinstance(raw, dict) and "network_g" in raw


def _check_keys(section: dict, allowed: set, where: str, changing: set = frozenset()) -> None:
    for key in section:
        if key in changing:
            raise ConfigError(f"{where}.{key}: not supported (it would change the training); remove it")
        if key not in allowed:
            warnings.warn(f"{where}.{key}: unknown BasicSR option, ignored", stacklevel=3)


def _dataset(spec, where: str, scale: int, train: bool) -> dict:
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: expected a mapping")
    if spec.get("type") != "PairedImageDataset":
        raise ConfigError(f"{where}.type {spec.get('type')!r}: only PairedImageDataset is supported")
    if (spec.get("io_backend") or {}).get("type", "disk") != "disk":
        raise ConfigError(f"{where}.io_backend.type: only 'disk' is supported (not lmdb)")
    _check_keys(spec, _DATASET, where, changing={"mean", "std", "color", "gt_path", "use_flip"})
    if spec.get("task") not in (None, "SR", "CAR", "denoising_color", "denoising_gray"):
        raise ConfigError(f"{where}.task {spec.get('task')!r} is not SR, CAR, denoising_color or denoising_gray")
    if spec.get("task") in ("denoising_color", "denoising_gray") and spec.get("noise") is None:
        raise ConfigError(f"{where}: task {spec['task']} needs noise (the sigma, 0-255)")
    for key in ("dataroot_gt", "dataroot_lq"):
        if spec.get(key) is None:
            raise ConfigError(f"{where}.{key} is required")
    if train:
        for key in ("gt_size", "batch_size_per_gpu"):
            if not isinstance(spec.get(key), int):
                raise ConfigError(f"{where}.{key}: expected an integer, got {spec.get(key)!r}")
        if spec["gt_size"] % scale:
            raise ConfigError(f"{where}.gt_size {spec['gt_size']} is not a multiple of scale {scale}")
    return {"name": "basicsr-paired-dataset", "args": {"options": dict(spec), "scale": scale}}


def _number(value, where: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a number, got {value!r}") from None


def from_options(opt: dict) -> dict:
    """ssmir's training config for a BasicSR option file (already with ``--set`` overrides applied)."""
    from ssmir.train.config import validate

    _check_keys(opt, _TOP, "option file", changing={"network_d", "network_g_ema"})
    model_type = opt.get("model_type", "SRModel")
    if model_type not in MODEL_TYPES:
        raise ConfigError(f"model_type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    try:
        name, net = network_spec(opt)
    except OptionError as e:
        raise ConfigError(str(e)) from None
    scale = int(opt.get("scale", 1))
    datasets = opt.get("datasets") or {}
    if "train" not in datasets:
        raise ConfigError("datasets.train is required")
    train_ds = datasets["train"]
    train = opt.get("train") or {}
    _check_keys(train, _TRAIN, "train")
    for key in ("optim_g", "scheduler", "total_iter"):
        if key not in train:
            raise ConfigError(f"train.{key} is required")
    optim = dict(train["optim_g"])
    optim_type = optim.pop("type", None)
    if optim_type not in ("Adam", "AdamW"):
        raise ConfigError(f"train.optim_g.type {optim_type!r} is not Adam or AdamW")
    optim = {k: _number(v, f"train.optim_g.{k}") if k in ("lr", "weight_decay", "eps") else v
             for k, v in optim.items()}
    sched = dict(train["scheduler"])
    sched_type = sched.pop("type", None)
    if sched_type == "MultiStepLR":
        if sched.get("restarts") or sched.get("restart_weights") not in (None, [1]):
            raise ConfigError("train.scheduler: MultiStepLR restarts are not supported")
        scheduler = {"name": "MultiStepLR", "args": {"milestones": [int(_number(m, "train.scheduler.milestones"))
                                                                    for m in sched.get("milestones", [])],
                                                     "gamma": _number(sched.get("gamma", 0.1), "gamma")}}
    elif sched_type == "CosineAnnealingRestartLR":
        periods = [int(_number(p, "train.scheduler.periods")) for p in sched.get("periods", [])]
        weights = list(sched.get("restart_weights", [1] * len(periods)))
        eta = _number(sched.get("eta_min", 0), "train.scheduler.eta_min")
        scheduler = {"name": "CosineAnnealingRestartLR",
                     "args": {"periods": periods, "restart_weights": weights, "eta_min": eta}}
    else:
        raise ConfigError(f"train.scheduler.type {sched_type!r} is not MultiStepLR or CosineAnnealingRestartLR")
    pixel = dict(train.get("pixel_opt") or {"type": "L1Loss"})
    if pixel.get("type") not in _LOSSES:
        raise ConfigError(f"train.pixel_opt.type {pixel.get('type')!r} is not one of {', '.join(_LOSSES)}")
    if pixel.get("reduction", "mean") != "mean":
        raise ConfigError("train.pixel_opt.reduction: only 'mean' is supported")
    val = opt.get("val") or {}
    logger = opt.get("logger") or {}
    paths = opt.get("path") or {}
    _check_keys(paths, {"pretrain_network_g", "param_key_g", "strict_load_g", "resume_state", "experiments_root",
                        "models", "training_states", "log", "visualization", "root"}, "path")
    total = int(_number(train["total_iter"], "train.total_iter"))
    save_freq = int(_number(logger.get("save_checkpoint_freq", 5000), "logger.save_checkpoint_freq"))
    cfg = {
        "train_dataset": {"dataset": _dataset(train_ds, "datasets.train", scale, True),
                          "batch_size": int(train_ds["batch_size_per_gpu"]), "crop_size": int(train_ds["gt_size"])},
        "model": {"name": name, "args": net},
        "e_decay": _number(train.get("ema_decay", 0), "train.ema_decay"),
        "optimizer": {"name": optim_type, "args": optim},
        "lr_scheduler": scheduler,
        "total_iter": total,
        "use_grad_clip": False,
        "print_freq": int(_number(logger.get("print_freq", 100), "logger.print_freq")),
        "val_freq": int(_number(val.get("val_freq", total), "val.val_freq")),
        "save_checkpoint_freq": save_freq,
        "save_last_freq": max(1, min(save_freq, 100)),
        "seed": int(opt.get("manual_seed", 0) or 0),
        "loss": _LOSSES[pixel["type"]],
        "loss_weight": _number(pixel.get("loss_weight", 1.0), "train.pixel_opt.loss_weight"),
        "warmup_iter": int(_number(train.get("warmup_iter", -1), "train.warmup_iter")),
        "resume": paths.get("resume_state"),
        "init_weights": paths.get("pretrain_network_g"),
        "basicsr": {"name": str(opt.get("name", "basicsr")), "model_type": model_type, "scale": scale,
                    "metrics": val.get("metrics") or {}, "param_key_g": paths.get("param_key_g", "params"),
                    "strict_load_g": bool(paths.get("strict_load_g", True)),
                    "use_tb_logger": bool(logger.get("use_tb_logger", True))},
    }
    if "eps" in pixel:
        cfg["basicsr"]["charbonnier_eps"] = _number(pixel["eps"], "train.pixel_opt.eps")
    if datasets.get("val") is not None:
        cfg["valid_dataset"] = {"dataset": _dataset(datasets["val"], "datasets.val", scale, False)}
        if not cfg["basicsr"]["metrics"]:
            raise ConfigError("datasets.val is given but val.metrics is empty")
        from ssmir.eval.basicsr import metric_specs

        try:
            metric_specs(opt)
        except OptionError as e:
            raise ConfigError(str(e)) from None
    for key in set(datasets) - {"train", "val"}:
        warnings.warn(f"datasets.{key}: only train and val are used in training, ignored", stacklevel=2)
    return validate(cfg)


# ----------------------------------------------------------------------------------------------- data


class BasicSRPairedData(torch.utils.data.Dataset):
    """BasicSR's ``PairedImageDataset`` (the MambaIR repository's version) keyed as ssmir's loop asks:
    training samples by ``(iteration, slot, crop)``, validation samples by index."""

    def __init__(self, args: dict, base: Path, seed: int = 0, rank: int = 0, train: bool = True):
        from ssmir.data.benchmarks import DatasetError
        from ssmir.eval.basicsr import build_test_set
        from ssmir.train.data import DataError

        self.options, self.scale = dict(args["options"]), int(args["scale"])
        self.seed, self.rank, self.train = seed, rank, train
        try:
            self.set = build_test_set("train" if train else "val", self.options, self.scale, Path(base))
        except (DatasetError, OptionError) as e:
            raise DataError(str(e)) from None
        self.task = self.set.task
        if train and self.task not in ("denoising_color", "denoising_gray"):
            self._check_sizes()
        self.hflip, self.rot = bool(self.options.get("use_hflip", False)), bool(self.options.get("use_rot", False))

    def _check_sizes(self) -> None:
        """Every training pair before the first iteration: the ground truth must be ``scale`` x its input
        (BasicSR stops with "Scale mismatches" only when it draws the pair)."""
        from ssmir.train.data import DataError, _image_size

        for sample in self.set.samples:
            (h, w), (gh, gw) = _image_size(sample.lq_path), _image_size(sample.gt_path)
            if (gh, gw) != (h * self.scale, w * self.scale):
                raise DataError(f"{sample.gt_path}: ground truth {gw}x{gh} is not scale {self.scale} x its input "
                                f"{sample.lq_path} ({w}x{h})")

    def __len__(self) -> int:
        return len(self.set.samples)

    @property
    def validation_count(self) -> int:
        return len(self.set.samples)

    def _read(self, sample) -> tuple[torch.Tensor, torch.Tensor]:
        from ssmir.data.io import read_image

        if self.task in ("denoising_color", "denoising_gray"):
            gt = read_image(sample.gt_path, "RGB" if self.task == "denoising_color" else "L")
            return gt, gt
        mode = "L" if self.task == "CAR" else "RGB"
        return read_image(sample.lq_path, mode), read_image(sample.gt_path, mode)

    def training_sample(self, iteration: int, slot: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ssmir.train.data import DataError

        rng = np.random.default_rng([self.seed, self.rank, iteration, slot])
        sample = self.set.samples[int(rng.integers(len(self.set.samples)))]
        lq, gt = self._read(sample)
        s, c = self.scale, crop // self.scale
        h, w = lq.shape[-2:]  # the ground truth is s times that: checked for every pair before training
        if h < c or w < c:
            raise DataError(f"{sample.lq_path}: input {w}x{h} is smaller than the patch {c}x{c} (gt_size {crop})")
        top, left = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        lq = lq[:, top:top + c, left:left + c]
        gt = gt[:, top * s:(top + c) * s, left * s:(left + c) * s]
        flips = rng.random(3) < 0.5  # BasicSR's augment: hflip, then (with use_rot) vflip and transpose
        out = []
        for t in (lq, gt):
            if self.hflip and flips[0]:
                t = t.flip(-1)
            if self.rot and flips[1]:
                t = t.flip(-2)
            if self.rot and flips[2]:
                t = t.transpose(-2, -1)
            out.append(t)
        lq, gt = out
        if self.task in ("denoising_color", "denoising_gray"):  # i.i.d. noise: drawn on the patch
            noise = rng.standard_normal(gt.shape).astype(np.float32) * (self.set.noise / 255.0)
            lq = gt + torch.from_numpy(noise)
        return lq.contiguous(), gt.contiguous()

    def __getitem__(self, key):
        iteration, slot, crop = key
        return self.training_sample(iteration, slot, crop)

    def validation_sample(self, i: int, crop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.set.load(self.set.samples[i])


# ---------------------------------------------------------------------------------------------- losses


def make_loss(cfg: dict):
    """The pixel loss of ``pixel_opt`` (times ``loss_weight``)."""
    weight = float(cfg.get("loss_weight", 1.0))
    eps = float(cfg["basicsr"].get("charbonnier_eps", 1e-12))
    kind = cfg["loss"]

    def loss(pred, gt):
        if kind == "charbonnier-basicsr":  # BasicSR's eps sits inside the root unsquared, unlike ssmir's
            return weight * torch.sqrt((pred - gt) ** 2 + eps).mean()
        return weight * PIXEL_LOSSES[kind](pred, gt)

    return loss


# ----------------------------------------------------------------------------------------- checkpoints


def save_network(path: Path, net: torch.nn.Module, ema: torch.nn.Module | None) -> Path:
    """``net_g_<iter>.pth`` as BasicSR writes it: ``params`` (and ``params_ema``), CPU tensors."""
    from ssmir.data.io import atomic_write

    ckpt = {"params": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    if ema is not None:
        ckpt["params_ema"] = {k: v.detach().cpu() for k, v in ema.state_dict().items()}
    return atomic_write(path, lambda t: torch.save(ckpt, t))


def save_state(path: Path, iteration: int, optimizer, scheduler, lr_used: list[float]) -> Path:
    """``training_states/<iter>.state`` as BasicSR writes it. BasicSR steps its scheduler at the start of an
    iteration, ssmir after it: BasicSR's state after iteration k has the scheduler stepped k - 1 times and the
    learning rate of iteration k (``lr_used``), which is what is written."""
    from ssmir.data.io import atomic_write

    opt = optimizer.state_dict()
    opt = {**opt, "param_groups": [{**g, "lr": lr} for g, lr in zip(opt["param_groups"], lr_used, strict=True)]}
    sched = {k: dict(v) if isinstance(v, collections.Counter) else v for k, v in scheduler.state_dict().items()
             if not callable(v) and k != "lr_lambdas"}
    sched.update(last_epoch=sched.get("last_epoch", iteration) - 1, _last_lr=list(lr_used))
    if "_step_count" in sched:
        sched["_step_count"] -= 1
    state = {"epoch": 0, "iter": int(iteration), "optimizers": [opt], "schedulers": [sched]}
    return atomic_write(path, lambda t: torch.save(state, t))


def read_state(path: Path) -> dict:
    """A BasicSR training state, read without running code (``collections.Counter`` allowed: BasicSR's
    MultiStepRestartLR keeps its milestones in one)."""
    from ssmir.train.trainer import TrainingError

    if not Path(path).is_file():
        raise TrainingError(f"resume_state {path}: no such file")
    try:
        with torch.serialization.safe_globals([collections.Counter]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainingError(f"resume_state {path}: cannot read training state ({str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or "iter" not in state or "optimizers" not in state:
        raise TrainingError(f"resume_state {path}: not a BasicSR training state (no iter/optimizers)")
    return state


def network_of_state(path: Path, iteration: int) -> Path:
    """Where BasicSR keeps the network of a training state: ``<experiment>/models/net_g_<iter>.pth``."""
    from ssmir.train.trainer import TrainingError

    net = Path(path).resolve().parent.parent / "models" / f"net_g_{iteration}.pth"
    if not net.is_file():
        raise TrainingError(f"resume_state {path}: its network {net} is missing")
    return net
