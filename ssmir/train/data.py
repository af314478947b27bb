"""Training and validation data: the official dataset kinds, ssmir's folder and degradation forms.

Kinds (``train_dataset.dataset.name``):

- ``denoising-color-dataset``: clean images (``gt_data_file`` list or ``gt_dir``) plus Gaussian noise,
  ``sigma_type`` constant / random (uniform in ``sigma_range``) / choice, sigma on the 0-255 scale.
  ``blur_probability`` (ssmir, default 0) blurs that share of the clean training crops with a defocus (disk)
  kernel of a radius drawn uniformly from ``blur_radius`` (pixels, default ``[1, 6]``) before the noise is
  added, so the target is the blurred crop: smooth, out-of-focus content for a network trained on sharp photos.
- ``paired-dataset`` / ``sr-paired-dataset``: ``gt_data_file`` + ``lq_data_file`` lists (or ``gt_dir`` +
  ``lq_dir`` folders with matching names); the scale is the size ratio. ``lq2_data_file`` / ``lq2_dir`` adds
  a second input view (dual-pixel: the two views stacked as 6 channels).
- ``degraded-dataset`` (ssmir): clean images plus ``degradation: {type: bicubic, scale: 2|3|4}`` (MATLAB-style
  bicubic, antialiased) or ``{type: jpeg, quality: q | [lo, hi]}``.
- ``event-sequence-dataset`` (ssmir, for EmambaIR): ``sequence_dir`` holds one folder of sharp frames per
  sequence; each sample averages ``frames_per_blur`` consecutive frames into a blurry frame, simulates the
  exposure's events (``ssmir.data.events.simulate_events`` on the frames' luma, ``contrast_threshold``,
  ``threshold_sigma``), voxelises them into ``bins`` and targets the middle frame. Samples are
  ``(blurry, voxels, sharp)``.

Decoded images are kept in a per-process least-recently-used cache of ``cache_mb`` megabytes (default 1024;
0 turns it off), so small datasets are decoded once instead of at every sample; results do not depend on it.

Every training sample is drawn from a generator seeded by (seed, process rank, iteration, slot), so a run
is reproducible, each process sees different data, and a resumed run continues exactly.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssmir.data.benchmarks import DatasetError, add_test_noise, jpeg_compress, read_list_file
from ssmir.data.io import IMAGE_SUFFIXES, list_images, read_image

DataError = DatasetError  # a dataset that cannot be used, reported by path before training starts


# ----------------------------------------------------------------------------- MATLAB-style bicubic


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
            + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _resize_matrix(in_len: int, out_len: int, scale: float) -> np.ndarray:
    """(out_len, in_len) weights of MATLAB's imresize (bicubic, antialiased when shrinking, mirrored borders)."""
    width = 4.0 / scale if scale < 1 else 4.0
    i = np.arange(1, out_len + 1, dtype=np.float64)
    u = i / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(math.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps)[None, :]  # 1-based source positions
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if scale < 1 else _cubic(dist)
    w = w / w.sum(1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    src = mirror[np.mod(idx.astype(np.int64) - 1, 2 * in_len)]
    mat = np.zeros((out_len, in_len))
    np.add.at(mat, (np.repeat(np.arange(out_len), taps), src.reshape(-1)), w.reshape(-1))
    return mat


def imresize(img: torch.Tensor, scale: float) -> torch.Tensor:
    """MATLAB ``imresize(img, scale, 'bicubic')`` of a (C, H, W) tensor (no clipping, no rounding)."""
    c, h, w = img.shape
    oh, ow = math.ceil(h * scale), math.ceil(w * scale)
    mh = torch.from_numpy(_resize_matrix(h, oh, scale)).to(img.dtype)
    mw = torch.from_numpy(_resize_matrix(w, ow, scale)).to(img.dtype)
    return torch.einsum("oh,chw,pw->cop", mh, img, mw)


# ----------------------------------------------------------------------------- files


def _files(args: dict, key: str, base: Path) -> list[Path] | None:
    """The images of a ``<key>_data_file`` list or a ``<key>_dir`` folder (None when neither is given)."""
    if args.get(f"{key}_data_file"):
        return read_list_file(args[f"{key}_data_file"], base)
    if args.get(f"{key}_dir"):
        folder = Path(args[f"{key}_dir"])
        folder = folder if folder.is_absolute() else base / folder
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder ({key} images)")
        files = list_images(folder)
        if not files:
            raise DataError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        return files
    return None


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size[1], im.size[0]
    except Exception as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def disk_kernel(radius: float, supersample: int = 8) -> torch.Tensor:
    """A defocus (pillbox) kernel: each tap is the share of its pixel inside a disk of ``radius`` pixels
    (estimated on a ``supersample``² grid per pixel), normalised to sum 1. Size 2·ceil(radius)+1 square."""
    if radius <= 0:
        raise ValueError(f"disk radius must be positive, got {radius}")
    half = math.ceil(radius)
    sub = (torch.arange(supersample, dtype=torch.float64) + 0.5) / supersample - 0.5
    pos = torch.arange(-half, half + 1, dtype=torch.float64)
    fine = (pos[:, None] + sub[None, :]).reshape(-1)  # sample positions along one axis
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2 <= radius**2).to(torch.float64)
    n = 2 * half + 1
    taps = inside.reshape(n, supersample, n, supersample).mean(dim=(1, 3))
    return (taps / taps.sum()).to(torch.float32)


def defocus(img: torch.Tensor, radius: float) -> torch.Tensor:
    """``img`` (C, H, W) convolved with ``disk_kernel(radius)``, edges mirrored (reflect padding)."""
    k = disk_kernel(radius)
    half = k.shape[0] // 2
    c = img.shape[0]
    padded = F.pad(img[None], (half,) * 4, mode="reflect")
    return F.conv2d(padded, k.expand(c, 1, -1, -1).contiguous(), groups=c)[0]


def _augment(tensors: list[torch.Tensor], mode: int) -> list[torch.Tensor]:
    """One of the 8 flips/rotations, the same for every tensor."""
    out = []
    for t in tensors:
        if mode & 4:
            t = t.flip(-1)
        out.append(torch.rot90(t, mode & 3, dims=(-2, -1)))
    return out


_KINDS = ("denoising-color-dataset", "paired-dataset", "sr-paired-dataset", "degraded-dataset",
          "event-sequence-dataset")
_ARGS = {"gt_data_file", "lq_data_file", "lq2_data_file", "gt_dir", "lq_dir", "lq2_dir", "phase", "repeat", "augment",
         "sigma_type", "sigma_range", "degradation", "crop_size", "sequence_dir", "frames_per_blur", "bins",
         "contrast_threshold", "threshold_sigma", "cache_mb", "consecutive", "task", "blur_probability",
         "blur_radius"}


class ImageCache:
    """Decoded images by path, least recently used dropped first once ``megabytes`` are exceeded."""

    def __init__(self, megabytes: float = 1024):
        self.budget, self.used = int(megabytes * 2**20), 0
        self.images: OrderedDict[Path, torch.Tensor] = OrderedDict()

    def read(self, path: Path) -> torch.Tensor:
        if path in self.images:
            self.images.move_to_end(path)
            return self.images[path]
        image = read_image(path)
        size = image.numel() * image.element_size()
        if size <= self.budget:
            while self.used + size > self.budget:
                dropped = self.images.popitem(last=False)[1]
                self.used -= dropped.numel() * dropped.element_size()
            self.images[path], self.used = image, self.used + size
        return image


def _image_cache(args: dict, kind: str) -> ImageCache:
    try:
        return ImageCache(float(args.get("cache_mb", 1024)))
    except (TypeError, ValueError):
        raise DataError(f"dataset {kind}: cache_mb must be a number of megabytes") from None


class EventSequenceData(torch.utils.data.Dataset):
    """(blurry frame, event voxel grid, sharp middle frame) simulated from sequences of sharp frames."""

    def __init__(self, args: dict, base: Path, seed: int = 0, rank: int = 0):
        root = Path(args.get("sequence_dir", ""))
        root = root if root.is_absolute() else base / root
        if not root.is_dir():
            raise DataError(f"{root}: no such folder (sequence_dir: one sub-folder of frames per sequence)")
        self.n = int(args.get("frames_per_blur", 7))
        self.cache = _image_cache(args, "event-sequence-dataset")
        self.sequences = [list_images(d) for d in sorted(root.iterdir()) if d.is_dir()]
        self.sequences = [s for s in self.sequences if len(s) >= self.n]
        if not self.sequences:
            raise DataError(f"{root}: no sequence folder with at least {self.n} frames")
        for seq in self.sequences:
            sizes = {_image_size(p) for p in seq}
            if len(sizes) != 1:
                raise DataError(f"{seq[0].parent}: frames differ in size {sorted(sizes)}")
        self.bins = int(args.get("bins", 6))
        self.threshold = float(args.get("contrast_threshold", 0.2))
        self.sigma = float(args.get("threshold_sigma", 0.03))
        self.augment = bool(args.get("augment", False))
        self.task = args.get("task", "deblur")
        from ssmir.data.event_tasks import TASKS

        if self.task not in TASKS:
            raise DataError(f"event-sequence-dataset: task {self.task!r} is not one of {', '.join(TASKS)}")
        self.seed, self.rank, self.scale, self.train = seed, rank, 1, True
        self.wants_consecutive = bool(args.get("consecutive", False))
        self.consecutive = 0  # > 0: the slots of a batch are that many consecutive windows of one sequence

    def use_consecutive(self, count: int) -> None:
        """Make each batch (up to ``count`` slots) consecutive exposure windows of one sequence, one frame apart,
        with the same crop and flips (for the temporal loss)."""
        need = self.n + count - 1
        if not any(len(s) >= need for s in self.sequences):
            raise DataError(f"consecutive batches of {count} need sequences of at least {need} frames")
        self.sequences = [s for s in self.sequences if len(s) >= need]
        self.consecutive = int(count)

    def __len__(self) -> int:
        return sum(len(s) - self.n + 1 for s in self.sequences)

    @property
    def validation_count(self) -> int:
        return len(self.sequences)  # one fixed exposure per sequence

    def _simulate(self, rng, crop: int | None, offset: int = 0):
        """(input frame, events, target) of one exposure window (``ssmir.data.event_tasks``)."""
        from ssmir.data.event_tasks import event_sample

        seq = self.sequences[int(rng.integers(len(self.sequences)))]
        start = int(rng.integers(len(seq) - self.n - max(self.consecutive - 1, 0) + 1)) + offset
        frames = torch.stack([self.cache.read(p) for p in seq[start:start + self.n]])  # (N, 3, H, W)
        if crop:
            h, w = frames.shape[-2:]
            if h < crop or w < crop:
                raise DataError(f"{seq[0].parent}: frames of {w}x{h} are smaller than the crop {crop}")
            top, left = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
            frames = frames[..., top:top + crop, left:left + crop]
        if self.augment:
            frames = _augment([frames], int(rng.integers(8)))[0]
        return event_sample(frames, self.task, rng, self.threshold, self.sigma)

    def _make(self, rng, crop: int | None, offset: int = 0):
        from ssmir.data.events import events_to_voxel

        inp, events, target = self._simulate(rng, crop, offset)
        h, w = target.shape[-2:]
        voxels = events_to_voxel(events, self.bins, h, w, t_start=0.0, t_end=1.0)
        return inp, voxels, target

    def __getitem__(self, key):
        iteration, slot, crop = key
        if self.consecutive:  # one draw per batch; the slot is the window's offset
            return self._make(np.random.default_rng([self.seed, self.rank, iteration]), crop, offset=slot)
        return self._make(np.random.default_rng([self.seed, self.rank, iteration, slot]), crop)

    def validation_sample(self, i: int, crop: int | None = None):
        return self._make(np.random.default_rng([self.seed, 10**6 + i]), crop)

    def validation_events(self, i: int, crop: int | None = None):
        """``validation_sample`` with the raw events instead of their voxel grid (for exporting test sets)."""
        return self._simulate(np.random.default_rng([self.seed, 10**6 + i]), crop)


def make_dataset(spec: dict, base: str | Path = ".", seed: int = 0, rank: int = 0, train: bool = True):
    """The dataset object for ``train_dataset.dataset`` / ``valid_dataset.dataset``."""
    if spec.get("name") == "basicsr-paired-dataset":  # from a BasicSR option file (ssmir.train.basicsr)
        from ssmir.train.basicsr import BasicSRPairedData

        return BasicSRPairedData(spec.get("args") or {}, Path(base), seed, rank, train)
    if spec.get("name") == "event-sequence-dataset":
        unknown = sorted(set(spec.get("args") or {}) - _ARGS)
        if unknown:
            raise DataError(f"dataset event-sequence-dataset: unknown argument(s) {unknown}")
        return EventSequenceData(dict(spec.get("args") or {}), Path(base), seed, rank)
    return RestorationData(spec, base, seed, rank, train)


class RestorationData(torch.utils.data.Dataset):
    """Training samples keyed by ``(iteration, slot, crop)``; validation samples keyed by index."""

    def __init__(self, spec: dict, base: str | Path = ".", seed: int = 0, rank: int = 0, train: bool = True):
        self.kind = spec.get("name")
        args = dict(spec.get("args") or {})
        if self.kind not in _KINDS:
            raise DataError(f"dataset name {self.kind!r} is not one of {', '.join(_KINDS)}")
        unknown = sorted(set(args) - _ARGS)
        if unknown:
            raise DataError(f"dataset {self.kind}: unknown argument(s) {unknown}")
        base = Path(base)
        self.args, self.seed, self.rank, self.train = args, seed, rank, train
        self.augment = bool(args.get("augment", False)) and train
        self.cache = _image_cache(args, self.kind)
        self.gt = _files(args, "gt", base)
        if self.gt is None:
            raise DataError(f"dataset {self.kind}: give gt_data_file or gt_dir")
        self.lq = _files(args, "lq", base) if self.kind in ("paired-dataset", "sr-paired-dataset") else None
        self.lq2 = _files(args, "lq2", base) if self.lq is not None else None
        if self.kind in ("paired-dataset", "sr-paired-dataset"):
            if self.lq is None:
                raise DataError(f"dataset {self.kind}: give lq_data_file or lq_dir")
            for other in [self.lq] + ([self.lq2] if self.lq2 else []):
                if len(other) != len(self.gt):
                    raise DataError(f"dataset {self.kind}: {len(self.gt)} ground truths but {len(other)} inputs")
            self.scale = self._check_pairs()
        elif self.kind == "degraded-dataset":
            deg = args.get("degradation") or {}
            if deg.get("type") == "bicubic":
                self.scale = int(deg.get("scale", 0))
                if self.scale not in (2, 3, 4):
                    raise DataError("degradation bicubic: scale must be 2, 3 or 4")
            elif deg.get("type") == "jpeg":
                self.scale = 1
            else:
                raise DataError("degraded-dataset: degradation.type must be 'bicubic' or 'jpeg'")
            for p in self.gt:
                _image_size(p)
        else:
            self.scale = 1
            for p in self.gt:
                _image_size(p)
            if args.get("sigma_type", "constant") not in ("constant", "random", "choice"):
                raise DataError(f"sigma_type {args['sigma_type']!r} is not constant, random or choice")
        self.blur_probability, self.blur_radius = self._blur_args(args)

    def _blur_args(self, args: dict) -> tuple[float, tuple[float, float]]:
        p, r = args.get("blur_probability", 0.0), args.get("blur_radius", [1, 6])
        if ("blur_probability" in args or "blur_radius" in args) and self.kind != "denoising-color-dataset":
            raise DataError(f"dataset {self.kind}: blur_probability/blur_radius are for denoising-color-dataset")
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
            raise DataError(f"dataset {self.kind}: blur_probability must be a number in [0, 1], got {p!r}")
        if (not isinstance(r, (list, tuple)) or len(r) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in r) or not 0 < r[0] <= r[1]):
            raise DataError(f"dataset {self.kind}: blur_radius must be [low, high] pixels with 0 < low <= high, "
                            f"got {r!r}")
        return float(p), (float(r[0]), float(r[1]))

    def _check_pairs(self) -> int:
        scale = None
        for i, (g, q) in enumerate(zip(self.gt, self.lq, strict=True)):
            gh, gw = _image_size(g)
            qh, qw = _image_size(q)
            if gh % qh or gw % qw or gh // qh != gw // qw:
                raise DataError(f"{q}: size {qw}x{qh} does not divide its ground truth {g} ({gw}x{gh})")
            s = gh // qh
            if scale is not None and s != scale:
                raise DataError(f"{q}: scale {s} differs from the other pairs' {scale}")
            if self.lq2 and _image_size(self.lq2[i]) != (qh, qw):
                raise DataError(f"{self.lq2[i]}: size differs from its first view {q}")
            scale = s
        return scale

    def __len__(self) -> int:
        return len(self.gt)

    # ------------------------------------------------------------------ degradations

    def _sigma(self, rng) -> float:
        kind, rng_arg = self.args.get("sigma_type", "constant"), self.args.get("sigma_range", 15)
        if kind == "random":
            return float(rng.uniform(rng_arg[0], rng_arg[1]))
        if kind == "choice":
            return float(rng.choice(rng_arg))
        return float(rng_arg)

    def _degrade(self, gt: torch.Tensor, rng) -> torch.Tensor:
        deg = self.args["degradation"]
        if deg["type"] == "bicubic":
            return imresize(gt, 1 / self.scale)
        q = deg.get("quality", 40)
        quality = int(rng.integers(q[0], q[1] + 1)) if isinstance(q, list) else int(q)
        gray = gt.shape[0] == 1
        chans = [jpeg_compress(gt[c:c + 1], quality) for c in range(gt.shape[0])] if not gray else [
            jpeg_compress(gt, quality)]
        return torch.cat(chans)

    # ------------------------------------------------------------------ samples

    def _load(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        gt = self.cache.read(self.gt[i])
        lq = None
        if self.lq is not None:
            lq = self.cache.read(self.lq[i])
            if self.lq2:
                lq = torch.cat([lq, self.cache.read(self.lq2[i])])
        return gt, lq

    def training_sample(self, iteration: int, slot: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.rank, iteration, slot])
        gt, lq = self._load(int(rng.integers(len(self.gt))))
        s = self.scale
        if self.kind == "degraded-dataset" and s > 1:  # crop the clean image to whole LR pixels first
            gt = gt[:, : gt.shape[1] // s * s, : gt.shape[2] // s * s]
        if gt.shape[1] < crop or gt.shape[2] < crop:  # small images are reflect-padded, as in the official code
            ph, pw = max(0, crop - gt.shape[1]), max(0, crop - gt.shape[2])
            gt = F.pad(gt[None], (0, pw, 0, ph), mode="reflect")[0]
            if lq is not None:
                lq = F.pad(lq[None], (0, pw // s, 0, ph // s), mode="reflect")[0]
        c = crop // s
        h, w = gt.shape[1] // s, gt.shape[2] // s
        top, left = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        gt = gt[:, top * s:(top + c) * s, left * s:(left + c) * s]
        if lq is not None:
            lq = lq[:, top:top + c, left:left + c]
        if self.augment:
            mode = int(rng.integers(8))
            gt, lq = _augment([gt, lq], mode) if lq is not None else (_augment([gt], mode)[0], None)
        if self.kind == "denoising-color-dataset":
            if self.blur_probability > 0 and self.train and rng.random() < self.blur_probability:
                gt = defocus(gt, float(rng.uniform(*self.blur_radius)))
            sigma = self._sigma(rng)
            lq = gt + torch.from_numpy(rng.standard_normal(gt.shape).astype(np.float32)) * (sigma / 255.0)
        elif self.kind == "degraded-dataset":
            lq = self._degrade(gt, rng)
        return lq.contiguous(), gt.contiguous()

    def validation_sample(self, i: int, crop: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Deterministic: the centre crop of image i, with the official seeded test noise for denoising."""
        gt, lq = self._load(i)
        s = self.scale
        if crop:
            c = crop // s
            h, w = gt.shape[1] // s, gt.shape[2] // s
            top, left = max(0, (h - c) // 2), max(0, (w - c) // 2)
            gt = gt[:, top * s:(top + c) * s, left * s:(left + c) * s]
            lq = lq[:, top:top + c, left:left + c] if lq is not None else None
        if self.kind == "denoising-color-dataset":
            sigma = float(np.mean(self.args.get("sigma_range", 15)))
            lq = add_test_noise(gt, sigma)
        elif self.kind == "degraded-dataset":
            lq = self._degrade(gt, np.random.default_rng(i))
        return lq, gt

    def __getitem__(self, key):
        iteration, slot, crop = key
        return self.training_sample(iteration, slot, crop)
