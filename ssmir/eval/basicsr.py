"""BasicSR test option files (``csguoh/MambaIR``'s ``options/test/**/*.yml``), evaluated as BasicSR's
``basicsr/test.py`` evaluates them.

What BasicSR does, and so what this does:

- the network is ``network_g`` (``type`` MambaIR, MambaIRv2 or MambaIRv2Light), its weights
  ``path.pretrain_network_g`` under ``path.param_key_g`` (default ``params``; ``params`` where that key is
  absent), ``module.`` prefixes removed, loaded with ``path.strict_load_g`` (default true);
- every entry of ``datasets`` is a ``PairedImageDataset``: ground truths and inputs from
  ``dataroot_gt``/``dataroot_lq`` (folders or lists of folders, ``filename_tmpl``, ``meta_info_file``), the
  MambaIR repository's ``task`` variants (``CAR``: grayscale, the input is ``<name>.jpg``;
  ``denoising_color`` / ``denoising_gray``: the input is the ground truth plus Gaussian noise of level
  ``noise`` drawn by ``np.random.seed(0)`` for each image, in the HWC BGR order BasicSR holds images in), and
  the ground truth cropped to ``scale`` x the input size;
- the MambaIR models (``model_type`` MambaIRModel, MambaIRv2Model, MambaIRv2LightModel) run each input in
  overlapping partitions of about 200 pixels (``partition_forward``); ``SRModel`` runs it whole;
- outputs are clamped to [0, 1] and rounded to 8 bits before ``val.metrics`` (``calculate_psnr``,
  ``calculate_ssim``: ``crop_border``, ``test_y_channel``) are computed on 0-255 values.

Options that would change the numbers and are not supported (lmdb storage, ``mean``/``std``
normalisation, ``color: y``, other dataset types or metrics) are errors naming the key.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ssmir.data.benchmarks import DatasetError
from ssmir.data.io import read_image, save_image

ARCH_TYPES = {"MambaIR": "mambair", "MambaIRv2": "mambairv2", "MambaIRv2Light": "mambairv2light"}
PARTITION_MODELS = ("MambaIRModel", "MambaIRv2Model", "MambaIRv2LightModel")
WHOLE_MODELS = ("SRModel",)
METRICS = ("calculate_psnr", "calculate_ssim")
_TASKS = (None, "SR", "CAR", "denoising_color", "denoising_gray")


class OptionError(ValueError):
    """A BasicSR option file that cannot be evaluated as BasicSR would."""


def read_options(path: str | Path, overrides: list[str] = ()) -> dict:
    """The option file as a dict, with ``key.sub=value`` overrides applied (e.g. data paths)."""
    from ssmir.train.config import ConfigError, apply_overrides, read_yaml

    path = Path(path)
    opt = read_yaml(path, "option file", OptionError)
    if not isinstance(opt, dict) or "network_g" not in opt:
        raise OptionError(f"{path}: not a BasicSR option file (no network_g section)")
    try:
        return apply_overrides(opt, list(overrides))
    except ConfigError as e:
        raise OptionError(str(e)) from None


def network_spec(opt: dict) -> tuple[str, dict]:
    """``(ssmir name, constructor args)`` of ``network_g``."""
    args = dict(opt["network_g"])
    kind = args.pop("type", None)
    if kind not in ARCH_TYPES:
        raise OptionError(f"network_g.type {kind!r} is not one of {', '.join(ARCH_TYPES)}")
    return ARCH_TYPES[kind], args


def read_network(weights: str | Path, param_key: str | None = "params", trust_pickle: bool = False) -> dict:
    """The state_dict BasicSR's ``load_network`` takes from a file: entry ``param_key`` (``params`` where the
    key is absent), ``module.`` prefixes removed; ``.safetensors`` files as ssmir reads them."""
    from ssmir.models.loading import CheckpointError, read_checkpoint, read_pth

    weights = Path(weights)
    if weights.suffix == ".safetensors":
        return read_checkpoint(weights)[0]
    obj = read_pth(weights, trust_pickle)
    if param_key is not None and isinstance(obj, dict):
        if param_key not in obj and "params" in obj:
            param_key = "params"
        if param_key not in obj:
            raise CheckpointError(f"{weights}: no {param_key!r} entry (path.param_key_g); the file has "
                                  f"{sorted(obj)[:8]}")
        obj = obj[param_key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{weights}: no state_dict of tensors under path.param_key_g")
    return {k[7:] if k.startswith("module.") else k: v for k, v in obj.items()}


def load_weights(model: nn.Module, sd: dict, strict: bool, source: str) -> None:
    """``strict_load_g``: every key must fit (strict), or the keys present must fit in shape."""
    from ssmir.models.loading import CheckpointError, load_state_dict_strict

    if strict:
        load_state_dict_strict(model, sd, source=source)
        return
    own = model.state_dict()
    bad = [k for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise CheckpointError(f"{source}: shape mismatch even with strict_load_g false: {bad[:5]}")
    model.load_state_dict(sd, strict=False)


def load_network(opt: dict, weights: str | Path | None = None, trust_pickle: bool = False) -> nn.Module:
    """``network_g`` with the weights BasicSR's test would load (see the module docstring)."""
    from ssmir.models.registry import create

    name, args = network_spec(opt)
    paths = opt.get("path") or {}
    weights = weights or paths.get("pretrain_network_g")
    if not weights:
        raise OptionError("no weights: set path.pretrain_network_g in the option file or pass --weights")
    sd = read_network(weights, paths.get("param_key_g", "params"), trust_pickle)
    model = create(name, **args)
    load_weights(model, sd, bool(paths.get("strict_load_g", True)), str(weights))
    return model.eval()


def partition_forward(fn, x: torch.Tensor, scale: int) -> torch.Tensor:
    """The MambaIR models' ``test()``: the input (1, C, H, W) reflect-padded to a multiple of
    ``H // 200 + 1`` (and ``W // 200 + 1``) parts per side, each part run with a tenth of its size of overlap
    into its neighbours, the outputs' own parts put together, the padding cropped."""
    _, c, h, w = x.shape
    parts_h, parts_w = h // 200 + 1, w // 200 + 1
    pad_h, pad_w = (parts_h - h % parts_h) % parts_h, (parts_w - w % parts_w) % parts_w
    img = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else x
    big_h, big_w = img.shape[-2:]
    size_h, size_w = big_h // parts_h, big_w // parts_w
    shave_h, shave_w = size_h // 10, size_w // 10

    def span(i, n, size, shave):  # the part's input rows (or columns) and where its own ones start in it
        lo = i * size - (shave if i > 0 else 0)
        hi = (i + 1) * size + (shave if i < n - 1 else 0)
        return slice(lo, hi), (shave if i > 0 else 0)

    out = None
    for i in range(parts_h):
        rows, top = span(i, parts_h, size_h, shave_h)
        for j in range(parts_w):
            cols, left = span(j, parts_w, size_w, shave_w)
            y = fn(img[..., rows, cols])
            if out is None:
                out = y.new_zeros(1, y.shape[1], big_h * scale, big_w * scale)
            out[..., i * size_h * scale:(i + 1) * size_h * scale, j * size_w * scale:(j + 1) * size_w * scale] = \
                y[..., top * scale:(top + size_h) * scale, left * scale:(left + size_w) * scale]
    return out[..., : big_h * scale - pad_h * scale, : big_w * scale - pad_w * scale]


# ---------------------------------------------------------------------------------------------- metrics


def tensor2img(img: torch.Tensor) -> np.ndarray:
    """BasicSR's ``tensor2img``: (C, H, W) float -> (H, W, C) uint8, clamped to [0, 1], x255, rounded; BGR
    channel order for colour images."""
    arr = np.round(img.detach().float().clamp(0, 1).cpu().numpy().transpose(1, 2, 0) * 255.0).astype(np.uint8)
    return arr[..., ::-1] if arr.shape[2] == 3 else arr


def _y_channel(img: np.ndarray) -> np.ndarray:
    """BasicSR's ``to_y_channel`` of an (H, W, C) 0-255 BGR image: the BT.601 Y (float32, 0-255 scale)."""
    img = img.astype(np.float32) / 255.0
    if img.ndim == 3 and img.shape[2] == 3:
        y = (np.dot(img, [24.966, 128.553, 65.481]) + 16.0) / 255.0
        img = y.astype(np.float32)[..., None]
    return img * 255.0


def _prepare(img, img2, crop_border, test_y_channel):
    if img.shape != img2.shape:
        raise ValueError(f"image shapes differ: {img.shape}, {img2.shape}")
    img, img2 = img.astype(np.float64), img2.astype(np.float64)
    if crop_border:
        img = img[crop_border:-crop_border, crop_border:-crop_border, ...]
        img2 = img2[crop_border:-crop_border, crop_border:-crop_border, ...]
    if test_y_channel:  # float32 from here on, as in BasicSR (its PSNR on Y is computed in float32)
        img, img2 = _y_channel(img), _y_channel(img2)
    return img, img2


def calculate_psnr(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool = False,
                   **_) -> float:
    """PSNR of two (H, W, C) 0-255 images, as BasicSR's ``calculate_psnr``."""
    img, img2 = _prepare(img, img2, crop_border, test_y_channel)
    mse = np.mean((img - img2) ** 2)
    return math.inf if mse == 0 else float(20.0 * np.log10(255.0 / np.sqrt(mse)))


def calculate_ssim(img: np.ndarray, img2: np.ndarray, crop_border: int, test_y_channel: bool = False,
                   **_) -> float:
    """SSIM of two (H, W, C) 0-255 images, as BasicSR's ``calculate_ssim``: per channel, an 11x11 Gaussian
    window (sigma 1.5) in valid mode, averaged."""
    from ssmir.eval.metrics import ssim

    img, img2 = _prepare(img, img2, crop_border, test_y_channel)
    a = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    b = torch.from_numpy(np.ascontiguousarray(img2.transpose(2, 0, 1)))
    return ssim(a, b, data_range=255.0, window_crop=0)


# --------------------------------------------------------------------------------------------- datasets


@dataclass
class PairedSample:
    name: str  # BasicSR's img_name: the input's file name without extension
    gt_path: Path
    lq_path: Path


@dataclass
class TestSet:
    key: str  # the option key (test_1, ...)
    name: str
    task: str | None
    scale: int
    noise: float
    samples: list[PairedSample] = field(default_factory=list)

    def load(self, sample: PairedSample) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, ground truth) as (C, H, W) float32 tensors, as the dataset's ``__getitem__`` gives them."""
        if self.task == "CAR":
            gt, lq = read_image(sample.gt_path, "L"), read_image(sample.lq_path, "L")
        elif self.task in ("denoising_color", "denoising_gray"):
            gt = read_image(sample.gt_path, "RGB" if self.task == "denoising_color" else "L")
            hwc = gt.numpy().transpose(1, 2, 0)[..., ::-1]  # BasicSR holds (H, W, C) BGR, 2D for gray
            hwc = hwc if self.task == "denoising_color" else hwc[..., 0]
            np.random.seed(0)
            noisy = hwc + np.random.normal(0, self.noise / 255.0, hwc.shape)
            noisy = noisy[..., None] if noisy.ndim == 2 else noisy[..., ::-1]
            lq = torch.from_numpy(np.ascontiguousarray(noisy.transpose(2, 0, 1))).float()
        else:
            gt, lq = read_image(sample.gt_path), read_image(sample.lq_path)
        return lq, gt[:, : lq.shape[1] * self.scale, : lq.shape[2] * self.scale]


def _files(folder: Path, what: str) -> list[str]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: missing folder ({what})")
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))


def _pairs(lq_dir: Path, gt_dir: Path, tmpl: str, task: str | None, check_count: bool) -> list[PairedSample]:
    gts = _files(gt_dir, "dataroot_gt")
    lqs = set(_files(lq_dir, "dataroot_lq"))
    if check_count and len(lqs) != len(gts):
        raise DatasetError(f"{lq_dir} and {gt_dir} hold different numbers of images: {len(lqs)}, {len(gts)}")
    out = []
    for g in gts:
        stem, ext = os.path.splitext(g)
        name = tmpl.format(stem) + (".jpg" if task == "CAR" else ext)
        if name not in lqs and check_count:
            raise DatasetError(f"{lq_dir}: no input {name} for ground truth {g} (filename_tmpl {tmpl!r})")
        out.append(PairedSample(os.path.splitext(name)[0], gt_dir / g, lq_dir / name))
    return out


def build_test_set(key: str, dopt: dict, scale: int, base: Path) -> TestSet:
    """One ``datasets`` entry as BasicSR's ``PairedImageDataset`` reads it in test phase."""
    where = f"datasets.{key}"
    if not isinstance(dopt, dict):
        raise OptionError(f"{where}: expected a mapping")
    if dopt.get("type") != "PairedImageDataset":
        raise OptionError(f"{where}.type {dopt.get('type')!r}: only PairedImageDataset test sets are supported")
    backend = (dopt.get("io_backend") or {}).get("type", "disk")
    if backend != "disk":
        raise OptionError(f"{where}.io_backend.type {backend!r}: only 'disk' is supported (not lmdb)")
    for unsupported in ("mean", "std", "color"):
        if dopt.get(unsupported) is not None:
            raise OptionError(f"{where}.{unsupported}: not supported (it changes the inputs and the metrics)")
    task = dopt.get("task")
    if task not in _TASKS:
        raise OptionError(f"{where}.task {task!r} is not one of CAR, denoising_color, denoising_gray (or none)")
    if task in ("denoising_color", "denoising_gray") and dopt.get("noise") is None:
        raise OptionError(f"{where}: task {task} needs noise (the sigma, 0-255)")
    tmpl = dopt.get("filename_tmpl", "{}")

    def resolve(p):
        p = Path(str(p))
        return p if p.is_absolute() else base / p

    gt_root, lq_root = dopt.get("dataroot_gt"), dopt.get("dataroot_lq")
    if gt_root is None or lq_root is None:
        raise OptionError(f"{where}: dataroot_gt and dataroot_lq are required")
    if dopt.get("meta_info_file"):
        meta = resolve(dopt["meta_info_file"])
        if not meta.is_file():
            raise DatasetError(f"{meta}: meta_info_file not found")
        names = [line.strip().split(" ")[0] for line in meta.read_text().splitlines() if line.strip()]
        samples = []
        for g in names:
            stem, ext = os.path.splitext(os.path.basename(g))
            lq_name = tmpl.format(stem) + ext
            samples.append(PairedSample(stem if tmpl == "{}" else os.path.splitext(lq_name)[0],
                                        resolve(gt_root) / g, resolve(lq_root) / lq_name))
    elif isinstance(gt_root, list) != isinstance(lq_root, list):
        raise OptionError(f"{where}: dataroot_gt and dataroot_lq must both be folders or both be lists")
    elif isinstance(gt_root, list):
        samples = [s for lq, gt in zip(lq_root, gt_root, strict=True)
                   for s in _pairs(resolve(lq), resolve(gt), tmpl, task, check_count=False)]
    else:
        samples = _pairs(resolve(lq_root), resolve(gt_root), tmpl, task, check_count=True)
    missing = [s for s in samples if not s.gt_path.is_file() or not s.lq_path.is_file()]
    if missing:
        raise DatasetError(f"{where}: {len(missing)} image(s) missing, e.g. {missing[0].lq_path} / "
                           f"{missing[0].gt_path}")
    if not samples:
        raise DatasetError(f"{where}: no images in {gt_root}")
    if task in ("denoising_color", "denoising_gray"):  # the input is the ground truth: names follow it
        samples = [PairedSample(s.gt_path.stem, s.gt_path, s.gt_path) for s in samples]
    return TestSet(key, str(dopt.get("name", key)), task, scale, float(dopt.get("noise") or 0), samples)


def metric_specs(opt: dict) -> dict[str, dict]:
    """``val.metrics``: name -> {type, crop_border, test_y_channel}, checked."""
    metrics = (opt.get("val") or {}).get("metrics") or {}
    if not isinstance(metrics, dict) or not metrics:
        raise OptionError("val.metrics: no metrics to compute")
    for name, spec in metrics.items():
        if not isinstance(spec, dict) or spec.get("type") not in METRICS:
            raise OptionError(f"val.metrics.{name}.type {spec.get('type') if isinstance(spec, dict) else spec!r} "
                              f"is not one of {', '.join(METRICS)}")
    return metrics


def evaluate_options(opt: dict, model: nn.Module, base: Path = Path("."), device: str = "cpu",
                     save_dir: Path | None = None, progress: bool = True) -> list[tuple[TestSet, list[dict], dict]]:
    """Every test set of the option file: per-image rows and a summary each (see the module docstring)."""
    model_type = opt.get("model_type", "SRModel")
    if model_type not in PARTITION_MODELS + WHOLE_MODELS:
        raise OptionError(f"model_type {model_type!r} is not one of {', '.join(PARTITION_MODELS + WHOLE_MODELS)}")
    scale = int(opt.get("scale", 1))
    metrics = metric_specs(opt)
    datasets = opt.get("datasets") or {}
    if not isinstance(datasets, dict) or not datasets:
        raise OptionError("datasets: no test sets")
    sets = [build_test_set(k, v, scale, base) for k, v in sorted(datasets.items())]  # all checked before running
    channels = int(getattr(model, "input_channels", (3,))[0])
    model = model.eval().to(device)
    suffix = (opt.get("val") or {}).get("suffix") or opt.get("name", "ssmir")
    results = []
    for test_set in sets:
        rows = []
        for sample in tqdm(test_set.samples, desc=test_set.name, disable=not progress):
            lq, gt = test_set.load(sample)
            if lq.shape[0] != channels:
                raise DatasetError(f"{test_set.name}/{sample.name}: input has {lq.shape[0]} channels, the model "
                                   f"takes {channels}")
            start = time.perf_counter()
            out, row = score(model, lq, gt, model_type, scale, metrics, device)
            seconds = time.perf_counter() - start
            if out.shape != gt.shape:
                raise DatasetError(f"{test_set.name}/{sample.name}: output {tuple(out.shape)} does not fit the "
                                   f"ground truth {tuple(gt.shape)} (wrong scale or model for this test set?)")
            row = {"image": sample.name, **row}
            row["seconds"] = seconds
            rows.append(row)
            if save_dir is not None:
                save_image(out.clamp(0, 1), Path(save_dir) / test_set.name / f"{sample.name}_{suffix}.png")
        summary = {"dataset": test_set.name, "task": test_set.task or "SR", "scale": scale, "images": len(rows),
                   **{name: sum(r[name] for r in rows) / len(rows) for name in metrics},
                   "metric": describe(metrics), "seconds_per_image": sum(r["seconds"] for r in rows) / len(rows),
                   "model_type": model_type, "device": str(device)}
        results.append((test_set, rows, summary))
    return results


def score(model: nn.Module, lq: torch.Tensor, gt: torch.Tensor, model_type: str, scale: int, metrics: dict,
          device="cpu") -> tuple[torch.Tensor, dict]:
    """BasicSR's validation of one (C, H, W) input: the model's test (partitioned for the MambaIR models),
    then ``metrics`` on the uint8 outputs. Returns the (C, sH, sW) output (CPU, unclamped) and the scores
    (empty when the output does not fit the ground truth)."""
    with torch.no_grad():
        x = lq[None].to(device)
        out = partition_forward(model, x, scale) if model_type in PARTITION_MODELS else model(x)
    out = out[0].float().cpu()
    if out.shape != gt.shape:
        return out, {}
    funcs = {"calculate_psnr": calculate_psnr, "calculate_ssim": calculate_ssim}
    sr, ref = tensor2img(out), tensor2img(gt)
    return out, {name: funcs[spec["type"]](sr, ref, int(spec.get("crop_border", 0)),
                                            bool(spec.get("test_y_channel", False)))
                 for name, spec in metrics.items()}


def describe(metrics: dict) -> str:
    spec = next(iter(metrics.values()))
    space = "Y (BT.601)" if spec.get("test_y_channel") else "RGB/gray"
    return f"BasicSR: uint8-rounded output, {space}, border crop {int(spec.get('crop_border', 0))}"
