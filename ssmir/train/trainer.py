"""The training loop: progressive patches, AdamW, the official schedules, EMA, validation, checkpoints.

Runs on one CPU, one GPU, or many processes through HuggingFace Accelerate
(``accelerate launch --num_processes N -m ssmir train ...``); the batch size is per process, as in the
official configs. Checkpoints use the official EAMamba layout
(``{'model': {name, args, sd, sd_e}, 'optimizer': {name, args, sd}, 'current_iter', 'state'}``), are written
atomically, and resume exactly: data are drawn from generators keyed by iteration, and the optimizer,
scheduler, EMA and RNG states travel in the checkpoint.
"""

from __future__ import annotations

import collections
import copy
import csv
import math
import random
import signal
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ssmir.data.io import atomic_write, save_image
from ssmir.eval.inference import min_size, run_model, size_multiple
from ssmir.eval.metrics import psnr, ssim
from ssmir.models.loading import save_model
from ssmir.models.registry import create
from ssmir.train.data import make_dataset
from ssmir.train.losses import PIXEL_LOSSES
from ssmir.train.schedulers import make_optimizer, make_scheduler


class TrainingError(RuntimeError):
    """A training run that cannot start or continue."""


def stage_at(cfg: dict, iteration: int) -> tuple[int, int, int]:
    """(stage index, batch size, crop size) for a 1-based iteration under ``progressive_train``."""
    pt = cfg.get("progressive_train")
    if not pt or not pt.get("iters"):
        return 0, cfg["train_dataset"]["batch_size"], cfg["train_dataset"]["crop_size"]
    ends = np.cumsum(pt["iters"])
    k = int(min(np.searchsorted(ends, iteration), len(ends) - 1))  # first stage whose end >= iteration
    return k, int(pt["batch_sizes"][k]), int(pt["crop_sizes"][k])


class IterationBatches(torch.utils.data.Sampler):
    """Batch keys ``[(iteration, slot, crop), ...]`` for iterations ``start..total``, sized by the stage."""

    def __init__(self, cfg: dict, start: int, total: int):
        self.cfg, self.start, self.total = cfg, start, total

    def __iter__(self):
        for it in range(self.start, self.total + 1):
            _, bs, crop = stage_at(self.cfg, it)
            yield [(it, j, crop) for j in range(bs)]

    def __len__(self):
        return max(0, self.total - self.start + 1)


def _stop_on_sigterm():
    """Make SIGTERM (schedulers, ``kill``, and the only way to stop a run started with ``nohup ... &``, which
    ignores SIGINT) stop training like Ctrl-C: last.pth is saved. Returns the previous handler (None off the
    main thread, where signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, stop)


def _pixel_loss(kind: str, weight: float = 1.0):
    """The config's ``loss`` given by name (``l1``, ``charbonnier``, ``mse``), times ``loss_weight``."""
    if kind not in PIXEL_LOSSES:  # charbonnier-basicsr comes from BasicSR option files only
        raise TrainingError(f"config key 'loss': {kind!r} is for BasicSR option files; use one of "
                            f"{', '.join(PIXEL_LOSSES)}")
    fn = PIXEL_LOSSES[kind]
    if weight == 1.0:
        return fn
    return lambda pred, gt: weight * fn(pred, gt)


def _plain(obj):
    """Checkpoint-safe copy of a state dict: Counters become dicts (``torch.load(weights_only=True)``)."""
    if isinstance(obj, collections.Counter):
        return dict(obj)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


class Trainer:
    def __init__(self, cfg: dict, output: Path, base: Path = Path("."), cpu: bool = False, workers: int = 0,
                 stop_after: int | None = None, progress: bool = True):
        from accelerate import Accelerator

        self.cfg, self.output, self.base = cfg, Path(output), Path(base)
        self.basicsr = cfg.get("basicsr")  # a BasicSR option file: its validation and checkpoint layout
        self.lr_used: list[float] = []
        self.workers, self.stop_after, self.progress = workers, stop_after, progress
        self.acc = Accelerator(cpu=cpu, mixed_precision=cfg["mixed_precision"])
        seed = int(cfg["seed"])
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        self.train_data = make_dataset(cfg["train_dataset"]["dataset"], self.base, seed, self.acc.process_index)
        vd = cfg.get("valid_dataset")
        self.valid_data = make_dataset(vd["dataset"], self.base, seed, train=False) if vd else None
        m = cfg["model"]
        self.model = create(m["name"], **copy.deepcopy(m.get("args") or {}))
        self._check_crops()
        if cfg.get("init_weights"):
            self._init_weights(self.base / cfg["init_weights"])
        # the EMA copy lives where the model trains (accelerate's device: a GPU where there is one)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False).to(self.acc.device)
        self.optimizer = make_optimizer(self.model.parameters(), cfg["optimizer"])
        self.scheduler = make_scheduler(self.optimizer, cfg["lr_scheduler"])
        self.iteration, self.best_psnr, self.validations = 0, -math.inf, 0
        if isinstance(cfg["loss"], list):
            self._combined_loss(cfg)
        elif self.basicsr:
            from ssmir.train.basicsr import make_loss

            self.loss_fn = make_loss(cfg)
        else:
            self.loss_fn = _pixel_loss(cfg["loss"], float(cfg.get("loss_weight", 1.0)))

    def _combined_loss(self, cfg: dict) -> None:
        from ssmir.train.losses import CombinedLoss, LossError

        try:
            self.loss_fn = CombinedLoss(cfg["loss"], self.base).to(self.acc.device)
        except LossError as e:
            raise TrainingError(str(e)) from None
        if self.loss_fn.needs_consecutive:
            if not getattr(self.train_data, "wants_consecutive", False):
                raise TrainingError("the temporal loss needs batches of consecutive frames: train on an "
                                    "event-sequence-dataset with consecutive: true")
            sizes = [cfg["train_dataset"]["batch_size"]] + list((cfg.get("progressive_train") or {})
                                                               .get("batch_sizes", []))
            if min(sizes) < 2:
                raise TrainingError("the temporal loss needs a batch size of at least 2 (consecutive frames)")
            try:
                self.train_data.use_consecutive(max(sizes))
            except ValueError as e:
                raise TrainingError(str(e)) from None

    def _check_crops(self):
        total = self.cfg["total_iter"]
        for it in {1, total} | set(np.cumsum((self.cfg.get("progressive_train") or {}).get("iters", [])).tolist()):
            _, _, crop = stage_at(self.cfg, min(max(it, 1), total))
            mult = self.train_data.scale * size_multiple(self.model)
            if crop // self.train_data.scale < min_size(self.model):
                raise TrainingError(f"crop size {crop} is below the model's minimum input size {min_size(self.model)}")
            if crop % mult:
                raise TrainingError(f"crop size {crop} must be a multiple of {mult} (the data's scale "
                                    f"{self.train_data.scale} x the model's size multiple)")

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self) -> dict:
        m = self.cfg["model"]
        return {
            "model": {"name": m["name"], "args": m.get("args") or {},
                      "sd": self.acc.unwrap_model(self.model).state_dict(), "sd_e": self.ema.state_dict()},
            "optimizer": {"name": self.cfg["optimizer"]["name"], "args": self.cfg["optimizer"].get("args") or {},
                          "sd": self.optimizer.state_dict()},
            "current_iter": self.iteration,
            "state": {"scheduler": _plain(self.scheduler.state_dict()), "torch_rng": torch.get_rng_state(),
                      "best_psnr": self.best_psnr, "validations": self.validations,
                      "stage": stage_at(self.cfg, max(self.iteration, 1))[0], "config": self.cfg},
        }

    def save(self, name: str) -> Path:
        path = self.output / name
        ckpt = self.checkpoint()
        atomic_write(path, lambda t: torch.save(ckpt, t))
        self.ema.ssmir_config = {"name": self.cfg["model"]["name"], "args": self.cfg["model"].get("args") or {}}
        save_model(self.ema, self.output / "ema.safetensors")
        return path

    def _init_weights(self, path: Path) -> None:
        """Start from the weights of ``path`` (fine-tuning): EMA weights where the file has them; the optimizer,
        schedule and iteration start fresh. A checkpoint of another architecture is refused by name."""
        from ssmir.models.loading import CheckpointError, load_state_dict_strict, read_checkpoint

        if self.basicsr:  # path.pretrain_network_g, read as BasicSR reads it (param_key_g, strict_load_g)
            from ssmir.eval.basicsr import load_weights, read_network

            try:
                sd = read_network(path, self.basicsr["param_key_g"])
                load_weights(self.model, sd, self.basicsr["strict_load_g"], str(path))
            except CheckpointError as e:
                raise TrainingError(f"pretrain_network_g: {e}") from None
            return
        try:
            sd, spec = read_checkpoint(path, ema=True)
            if spec and spec.get("name") and spec["name"] != self.cfg["model"]["name"]:
                raise CheckpointError(f"{path}: holds a {spec['name']!r} model, the config trains "
                                      f"{self.cfg['model']['name']!r}")
            load_state_dict_strict(self.model, sd, source=str(path))
        except CheckpointError as e:
            raise TrainingError(f"init_weights: {e}") from None

    def resume(self, path: Path) -> None:
        if Path(path).suffix == ".state":  # BasicSR's training_states/<iter>.state
            self._resume_basicsr(Path(path))
            return
        if not Path(path).is_file():
            raise TrainingError(f"--resume {path}: no such checkpoint")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise TrainingError(f"--resume {path}: cannot read checkpoint ({e})") from None
        if ckpt.get("model", {}).get("name") != self.cfg["model"]["name"]:
            raise TrainingError(f"--resume {path}: holds a {ckpt.get('model', {}).get('name')!r} model, "
                                f"the config trains {self.cfg['model']['name']!r}")
        self.acc.unwrap_model(self.model).load_state_dict(ckpt["model"]["sd"])
        self.ema.load_state_dict(ckpt["model"]["sd_e"])
        self.optimizer.load_state_dict(ckpt["optimizer"]["sd"])
        state = ckpt.get("state", {})
        sched = state.get("scheduler")
        if sched:
            if "milestones" in sched:
                sched["milestones"] = collections.Counter(sched["milestones"])
            self.scheduler.load_state_dict(sched)
        if "torch_rng" in state:
            torch.set_rng_state(state["torch_rng"])
        self.best_psnr = state.get("best_psnr", -math.inf)
        self.validations = state.get("validations", 0)
        self.iteration = int(ckpt["current_iter"])

    def _resume_basicsr(self, path: Path) -> None:
        """Continue from a BasicSR training state and its ``models/net_g_<iter>.pth`` (``params``, and
        ``params_ema`` for the EMA where present)."""
        from torch.optim.lr_scheduler import LambdaLR

        from ssmir.eval.basicsr import read_network
        from ssmir.models.loading import CheckpointError, load_state_dict_strict
        from ssmir.train.basicsr import network_of_state, read_state

        state = read_state(path)
        net = network_of_state(path, int(state["iter"]))
        try:
            load_state_dict_strict(self.acc.unwrap_model(self.model), read_network(net, "params"), str(net))
            load_state_dict_strict(self.ema, read_network(net, "params_ema"), str(net))
            self.optimizer.load_state_dict(state["optimizers"][0])
        except (CheckpointError, ValueError) as e:
            raise TrainingError(f"resume_state {path}: {e}") from None
        sched = dict((state.get("schedulers") or [{}])[0])
        if isinstance(self.scheduler, LambdaLR) or "milestones" not in sched:
            self.scheduler.last_epoch = int(sched.get("last_epoch", int(state["iter"]) - 1))
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        else:
            sched["milestones"] = collections.Counter(sched["milestones"])
            self.scheduler.load_state_dict(sched)
        self.scheduler.step()  # BasicSR's state is one step behind ssmir's (it steps at an iteration's start)
        self.iteration = int(state["iter"])

    def _save_basicsr(self, iteration: int | None) -> None:
        """BasicSR's files: ``models/net_g_<iter>.pth`` and ``training_states/<iter>.state``, or
        ``models/net_g_latest.pth`` (``iteration`` None) at the end."""
        from ssmir.train.basicsr import save_network, save_state

        net = self.acc.unwrap_model(self.model)
        ema = self.ema if float(self.cfg["e_decay"]) > 0 else None
        tag = "latest" if iteration is None else str(iteration)
        save_network(self.output / "models" / f"net_g_{tag}.pth", net, ema)
        if iteration is not None:
            save_state(self.output / "training_states" / f"{iteration}.state", iteration, self.optimizer,
                       self.scheduler, self.lr_used)

    # ------------------------------------------------------------------ validation

    @torch.no_grad()
    def _validate_basicsr(self) -> dict:
        """BasicSR's validation: the EMA network (the network itself without EMA) on every val image, its
        metrics on uint8 outputs; ``psnr``/``ssim`` are the first metrics of those types."""
        from ssmir.eval.basicsr import score

        b = self.basicsr
        net = self.ema if float(self.cfg["e_decay"]) > 0 else self.acc.unwrap_model(self.model)
        was_training = net.training
        net.eval()
        totals = collections.defaultdict(float)
        n = self.valid_data.validation_count
        for i in range(n):
            lq, gt = self.valid_data.validation_sample(i)
            out, row = score(net, lq, gt, b["model_type"], b["scale"], b["metrics"], self.acc.device)
            if not row:
                raise TrainingError(f"validation image {i}: output {tuple(out.shape)} does not fit the ground "
                                    f"truth {tuple(gt.shape)}")
            for k, v in row.items():
                totals[k] += v / n
            if i == 0 and self.validations % self.cfg["val_img_save_freq_mult"] == 0:
                save_image(out.clamp(0, 1), self.output / "val" / f"iter_{self.iteration:07d}.png")
        net.train(was_training)
        self.validations += 1
        types = {k: v["type"] for k, v in b["metrics"].items()}
        first = {t: next((totals[k] for k in totals if types[k] == t), float("nan"))
                 for t in ("calculate_psnr", "calculate_ssim")}
        return {"psnr": first["calculate_psnr"], "ssim": first["calculate_ssim"], "input_psnr": float("nan"),
                **{f"metric_{k}": v for k, v in totals.items()}}

    @torch.no_grad()
    def validate(self) -> dict:
        if self.basicsr:
            return self._validate_basicsr()
        crop = self.cfg["valid_dataset"].get("crop_size")
        rows, dev = [], self.acc.device
        for i in range(getattr(self.valid_data, "validation_count", len(self.valid_data))):
            *inputs, gt = self.valid_data.validation_sample(i, crop)
            lq = inputs[0]
            pred = run_model(self.ema, *(t[None].to(dev) for t in inputs))[0, :, : gt.shape[1], : gt.shape[2]]
            pred = pred.clamp(0, 1).cpu()
            base = psnr(lq[: gt.shape[0]].clamp(0, 1), gt) if lq.shape == gt.shape else float("nan")
            rows.append((psnr(pred, gt), ssim(pred, gt) if min(gt.shape[-2:]) > 20 else float("nan"), base))
            if i == 0 and self.validations % self.cfg["val_img_save_freq_mult"] == 0:
                up = F.interpolate(lq[None, :3], size=gt.shape[-2:], mode="nearest")[0].clamp(0, 1)
                save_image(torch.cat([up, pred, gt], dim=2), self.output / "val" / f"iter_{self.iteration:07d}.png")
        self.validations += 1
        return {k: float(np.nanmean([r[j] for r in rows])) for j, k in enumerate(("psnr", "ssim", "input_psnr"))}

    # ------------------------------------------------------------------ loop

    def _log(self, row: dict, writer) -> None:
        path = self.output / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["iteration", "loss", "lr", "val_psnr", "val_ssim", "val_input_psnr"])
            if new:
                w.writeheader()
            w.writerow(row)
        if writer is not None:
            for k, v in row.items():
                if k != "iteration" and v not in ("", None):
                    writer.add_scalar(k, float(v), row["iteration"])

    def fit(self) -> dict:
        cfg, acc = self.cfg, self.acc
        self.output.mkdir(parents=True, exist_ok=True)
        model, optimizer = acc.prepare(self.model, self.optimizer)
        start, total = self.iteration + 1, cfg["total_iter"]
        loader = torch.utils.data.DataLoader(self.train_data, batch_sampler=IterationBatches(cfg, start, total),
                                             num_workers=self.workers)
        writer = None
        if acc.is_main_process and (not self.basicsr or self.basicsr.get("use_tb_logger", True)):
            try:
                from torch.utils.tensorboard import SummaryWriter

                writer = SummaryWriter(str(self.output / "tb"))
            except ImportError:
                writer = None
        decay = float(cfg["e_decay"])
        last_val = {}
        bar = tqdm(total=total, initial=self.iteration, disable=not (self.progress and acc.is_main_process),
                   desc="train")
        previous = _stop_on_sigterm()
        try:
            for *inputs, gt in loader:  # (lq, gt), or (frame, voxels, gt) for event models
                self.iteration += 1
                inputs, gt = [t.to(acc.device) for t in inputs], gt.to(acc.device)
                warmup = int(cfg["warmup_iter"])
                if 0 < self.iteration < warmup:  # BasicSR's linear warm-up from the initial lr
                    for group in self.optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * self.iteration / warmup
                model.train()
                with acc.autocast():
                    loss = self.loss_fn(model(*inputs).float(), gt)
                optimizer.zero_grad(set_to_none=True)
                acc.backward(loss)
                if cfg["use_grad_clip"]:
                    acc.clip_grad_norm_(model.parameters(), 0.01)  # the value of the official recipe
                optimizer.step()
                self.lr_used = [g["lr"] for g in self.optimizer.param_groups]
                self.scheduler.step()
                with torch.no_grad():
                    live = dict(acc.unwrap_model(model).named_parameters())
                    for name, p in self.ema.named_parameters():
                        p.mul_(decay).add_(live[name].detach(), alpha=1 - decay)
                lr = self.optimizer.param_groups[0]["lr"]
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", stage=stage_at(cfg, self.iteration)[0])
                it = self.iteration
                if acc.is_main_process:
                    row = {"iteration": it, "loss": f"{loss.item():.6f}", "lr": f"{lr:.3e}"}
                    if self.valid_data is not None and (it % cfg["val_freq"] == 0 or it == total):
                        last_val = self.validate()
                        row.update(val_psnr=f"{last_val['psnr']:.4f}", val_ssim=f"{last_val['ssim']:.4f}",
                                   val_input_psnr=f"{last_val['input_psnr']:.4f}")
                        if last_val["psnr"] > self.best_psnr:
                            self.best_psnr = last_val["psnr"]
                            self.save("best.pth")
                    if it % cfg["print_freq"] == 0 or "val_psnr" in row or it == total:
                        self._log(row, writer)
                    if it % cfg["save_checkpoint_freq"] == 0:
                        if self.basicsr:
                            self._save_basicsr(it)
                        else:
                            self.save(f"iter_{it:07d}.pth")
                    if it % cfg["save_last_freq"] == 0 or it == total:
                        self.save("last.pth")
                    if it == total and self.basicsr:
                        self._save_basicsr(None)
                if self.stop_after is not None and it >= self.stop_after:
                    if acc.is_main_process:
                        self.save("last.pth")
                    break
        except KeyboardInterrupt:
            if acc.is_main_process:
                path = self.save("last.pth")
                bar.write(f"interrupted at iteration {self.iteration}: saved {path}; resume with --resume {path}")
            raise
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        acc.wait_for_everyone()
        return {"iteration": self.iteration, **last_val}
