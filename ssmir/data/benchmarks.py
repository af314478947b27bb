"""Benchmark test sets: their on-disk layouts under a user-given root, and their metric conventions.

Each definition turns ``root`` into samples (an id, a ground truth, a degraded input) and says how the
field scores it (RGB or Y channel, border crop). Layouts follow the folders the official code bases and
Restormer/BasicSR use; ``describe_layouts()`` prints them. A missing root or a layout that does not match
raises ``DatasetError`` naming the path and what was expected.
"""

from __future__ import annotations

import io as _io
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from ssmir.data.io import list_images, read_image

TEST_NOISE_SEED = 2454  # the seed of EAMamba's (and Restormer's) test-time Gaussian noise


class DatasetError(ValueError):
    """A dataset root or layout that does not match its definition."""


@dataclass(frozen=True)
class Convention:
    """How a benchmark is scored: on RGB (or gray) or on BT.601 Y, after cropping ``crop`` border pixels."""

    y_only: bool = False
    crop: int = 0

    def describe(self) -> str:
        space = "Y (BT.601)" if self.y_only else "RGB/gray"
        return f"{space}, border crop {self.crop}, prediction clipped to [0, 1]"


@dataclass
class Sample:
    name: str
    gt: Callable[[], torch.Tensor]  # (C, H, W) in [0, 1]
    lq: Callable[[], torch.Tensor]  # (C', h, w)
    events: Callable[[int], torch.Tensor] | None = None  # bins -> (bins, h, w) voxel grid, for event models


@dataclass
class Benchmark:
    name: str
    task: str
    convention: Convention
    samples: list[Sample]
    params: dict = field(default_factory=dict)
    quadrants: int | None = None  # the official eval_crop_size: EAMamba's quadrant split (RealSR, DPDD)


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DatasetError(f"{path}: missing folder ({what})")
    return path


def _need_images(folder: Path, what: str) -> list[Path]:
    files = list_images(_need_dir(folder, what))
    if not files:
        raise DatasetError(f"{folder}: no images found ({what})")
    return files


def add_test_noise(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """EAMamba's test degradation: reflect-pad to a multiple of 8, then add N(0, sigma/255) noise drawn
    after ``torch.manual_seed(2454)`` for the padded shape. Returns the padded noisy image."""
    h, w = img.shape[-2:]
    ph, pw = (-h) % 8, (-w) % 8
    if ph or pw:
        img = F.pad(img[None], (0, pw, 0, ph), mode="reflect")[0]
    gen = torch.Generator().manual_seed(TEST_NOISE_SEED)
    noise = torch.randn(img.shape, generator=gen) * (torch.tensor([float(sigma)]) / 255.0)
    return img + noise


def _denoise(root: Path, sigma: float, **_) -> list[Sample]:
    files = _need_images(root, "clean test images directly in the root, e.g. CBSD68/*.png")
    return [Sample(p.stem, lambda p=p: read_image(p), lambda p=p: add_test_noise(read_image(p), sigma)) for p in files]


def _paired_folders(lq_dir: Path, gt_dir: Path, mode: str = "RGB") -> list[Sample]:
    lq = {p.stem: p for p in _need_images(lq_dir, "degraded inputs")}
    gt = {p.stem: p for p in _need_images(gt_dir, "ground truths")}
    missing = sorted(set(lq) - set(gt))
    if missing:
        raise DatasetError(f"{gt_dir}: no ground truth for {len(missing)} input(s), e.g. {missing[0]}")
    return [Sample(k, lambda p=gt[k]: read_image(p, mode), lambda p=lq[k]: read_image(p, mode)) for k in sorted(lq)]


def _input_target(root: Path, **_) -> list[Sample]:
    return _paired_folders(root / "input", root / "target")


def _sots(root: Path, **_) -> list[Sample]:
    hazy = _need_images(root / "hazy", "hazy images named <id>_<k>.png")
    gt = {p.stem: p for p in _need_images(root / "gt", "clear images named <id>.png")}
    samples = []
    for p in hazy:
        key = p.stem.split("_")[0]
        if key not in gt:
            raise DatasetError(f"{root / 'gt'}: no clear image {key}.* for hazy {p.name}")
        samples.append(Sample(p.stem, lambda g=gt[key]: read_image(g), lambda p=p: read_image(p)))
    return samples


def _dpdd(root: Path, dual: bool = False, **_) -> list[Sample]:
    if not dual:
        return _paired_folders(root / "inputC", root / "target")
    left = {p.stem: p for p in _need_images(root / "inputL", "left dual-pixel views")}
    right = {p.stem: p for p in _need_images(root / "inputR", "right dual-pixel views")}
    gt = {p.stem: p for p in _need_images(root / "target", "ground truths")}
    for k in left:
        if k not in right or k not in gt:
            raise DatasetError(f"{root}: {k} lacks its inputR or target image")
    return [Sample(k, lambda k=k: read_image(gt[k]),
                   lambda k=k: torch.cat([read_image(left[k]), read_image(right[k])])) for k in sorted(left)]


def _realsr(root: Path, scale: int, **_) -> list[Sample]:
    samples = []
    for camera in ("Canon", "Nikon"):
        folder = root / camera / "Test" / str(scale)
        if not folder.is_dir():
            continue
        for hr in sorted(folder.glob("*_HR.png")):
            lr = hr.with_name(hr.name.replace("_HR.png", f"_LR{scale}.png"))
            if not lr.is_file():
                raise DatasetError(f"{lr}: missing low-resolution partner of {hr.name}")
            samples.append(Sample(f"{camera}_{hr.stem[:-3]}", lambda p=hr: read_image(p), lambda p=lr: read_image(p)))
    if not samples:
        raise DatasetError(f"{root}: expected {{Canon,Nikon}}/Test/{scale}/*_HR.png with *_LR{scale}.png partners")
    return samples


def _classic_sr(root: Path, scale: int, **_) -> list[Sample]:
    hr_files = _need_images(root / "HR", "high-resolution ground truths")
    lr_dir = _need_dir(root / "LR_bicubic" / f"X{scale}", f"bicubic inputs named <stem>x{scale}.png")
    samples = []
    for hr in hr_files:
        lr = lr_dir / f"{hr.stem}x{scale}{hr.suffix}"
        if not lr.is_file():
            raise DatasetError(f"{lr}: missing bicubic x{scale} input of {hr.name}")

        def gt(hr=hr, lr=lr):  # crop the ground truth to scale x the input size ("modcrop")
            img, small = read_image(hr), read_image(lr)
            return img[:, : small.shape[1] * scale, : small.shape[2] * scale]

        samples.append(Sample(hr.stem, gt, lambda p=lr: read_image(p)))
    return samples


def jpeg_compress(gray: torch.Tensor, quality: int) -> torch.Tensor:
    """Encode a (1, H, W) [0, 1] image as 8-bit JPEG at ``quality`` (libjpeg via Pillow) and decode it."""
    import numpy as np
    from PIL import Image

    from ssmir.data.io import to_uint8

    buf = _io.BytesIO()
    Image.fromarray(to_uint8(gray)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    arr = np.asarray(Image.open(buf).convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr)[None]


def _jpeg(root: Path, quality: int, **_) -> list[Sample]:
    files = _need_images(root, "test images directly in the root (converted to grayscale)")

    def gt(p):  # the 8-bit grayscale image that is compressed
        return torch.round(read_image(p, "L") * 255) / 255

    return [Sample(p.stem, lambda p=p: gt(p), lambda p=p: jpeg_compress(gt(p), quality)) for p in files]


def _sidd(root: Path, **_) -> list[Sample]:
    noisy, clean = load_sidd_blocks(root, "ValidationNoisyBlocksSrgb"), load_sidd_blocks(root, "ValidationGtBlocksSrgb")
    if noisy.shape != clean.shape:
        raise DatasetError(f"{root}: noisy blocks {noisy.shape} and ground truth blocks {clean.shape} differ")
    n, k = noisy.shape[:2]

    def block(arr, i, j):
        return torch.from_numpy(arr[i, j].astype("float32") / 255.0).permute(2, 0, 1).contiguous()

    return [Sample(f"{i + 1:04d}_{j + 1:02d}", lambda i=i, j=j: block(clean, i, j), lambda i=i, j=j: block(noisy, i, j))
            for i in range(n) for j in range(k)]


def load_sidd_blocks(root: Path, key: str):
    """The (N, K, H, W, 3) uint8 array ``key`` from ``root/<key>.mat`` (SIDD's benchmark files)."""
    path = Path(root) / f"{key}.mat"
    if not path.is_file():
        raise DatasetError(f"{path}: missing (SIDD validation needs ValidationNoisyBlocksSrgb.mat and "
                           "ValidationGtBlocksSrgb.mat)")
    try:
        import scipy.io
    except ImportError:
        raise DatasetError("reading SIDD .mat files needs scipy (pip install scipy)") from None
    try:
        arr = scipy.io.loadmat(str(path))[key]
    except Exception as e:
        raise DatasetError(f"{path}: cannot read key {key!r} ({e})") from None
    if arr.ndim != 5 or arr.shape[-1] != 3:
        raise DatasetError(f"{path}: expected (N, K, H, W, 3) blocks, found {arr.shape}")
    return arr


def _event_pairs(root: Path, inputs: str = "blur", targets: str = "sharp", **_) -> list[Sample]:
    from ssmir.data.events import events_to_voxel, read_events

    blur = _need_images(root / inputs, f"input frames ({inputs}/)")
    sharp = {p.stem: p for p in _need_images(root / targets, f"target frames ({targets}/), same names")}
    ev_dir = _need_dir(root / "events", "one event file per frame: <stem>.npz|.h5|.txt")
    samples = []
    for p in blur:
        if p.stem not in sharp:
            raise DatasetError(f"{root / targets}: no target frame for {p.name}")
        files = [f for f in ev_dir.glob(f"{p.stem}.*") if f.suffix.lower() in (".npz", ".h5", ".hdf5", ".txt", ".csv")]
        if not files:
            raise DatasetError(f"{ev_dir}: no event file {p.stem}.npz|.h5|.txt for {p.name}")

        def voxels(bins, p=p, f=files[0]):
            h, w = read_image(p).shape[-2:]
            return events_to_voxel(read_events(f, height=h, width=w), bins, h, w)

        samples.append(Sample(p.stem, lambda s=sharp[p.stem]: read_image(s), lambda p=p: read_image(p), voxels))
    return samples


@dataclass(frozen=True)
class Definition:
    task: str
    build: Callable[..., list[Sample]]
    layout: str
    needs: str | None = None  # "sigma", "scale" or "quality"
    y_only: bool = False
    crop_scale: bool = False
    extra: dict = field(default_factory=dict)
    quadrants: int | None = None  # the official test config's eval_crop_size


_DN = "Gaussian colour denoising"
DEFINITIONS: dict[str, Definition] = {
    **{n: Definition(_DN, _denoise, "ROOT/*.png (clean images)", "sigma")
       for n in ("cbsd68", "kodak24", "mcmaster", "urban100-dn", "set5-dn", "set14-dn", "b100-dn")},
    "sidd": Definition("real denoising (SIDD validation)", _sidd,
                       "ROOT/ValidationNoisyBlocksSrgb.mat, ROOT/ValidationGtBlocksSrgb.mat"),
    **{n: Definition("motion deblurring", _input_target, "ROOT/input/*.png, ROOT/target/*.png (same names)")
       for n in ("gopro", "hide")},
    "dpdd": Definition("defocus deblurring (single image)", _dpdd, "ROOT/inputC/*.png, ROOT/target/*.png"),
    "dpdd-dual": Definition("defocus deblurring (dual pixel, 6-channel input)", _dpdd,
                            "ROOT/inputL, ROOT/inputR, ROOT/target (same names)", extra={"dual": True}),
    **{n: Definition("dehazing", _sots, "ROOT/hazy/<id>_<k>.png, ROOT/gt/<id>.png")
       for n in ("sots-indoor", "sots-outdoor")},
    **{n: Definition("deraining", _input_target, "ROOT/input/*.png, ROOT/target/*.png (same names)", y_only=True)
       for n in ("rain100l", "rain100h", "test100", "test1200", "test2800")},
    "realsr": Definition("real-world SR (pre-upsampled input)", _realsr,
                         "ROOT/{Canon,Nikon}/Test/<scale>/<name>_HR.png and <name>_LR<scale>.png", "scale",
                         y_only=True, quadrants=2048),
    **{n: Definition("classic SR", _classic_sr, "ROOT/HR/<stem>.png, ROOT/LR_bicubic/X<scale>/<stem>x<scale>.png",
                     "scale", y_only=True, crop_scale=True)
       for n in ("set5", "set14", "b100", "urban100", "manga109")},
    "event-deblur": Definition("event-guided deblurring (frame + event voxel grid)", _event_pairs,
                               "ROOT/blur/*.png, ROOT/sharp/*.png, ROOT/events/<stem>.npz|h5|txt (exposure events)"),
    "event-derain": Definition("event-guided deraining (frame + event voxel grid)", _event_pairs,
                               "ROOT/input/*.png (rainy), ROOT/target/*.png (clean), ROOT/events/<stem>.npz|h5|txt",
                               extra={"inputs": "input", "targets": "target"}),
    "event-hdr": Definition("event-guided HDR enhancement (frame + event voxel grid)", _event_pairs,
                            "ROOT/input/*.png (badly exposed), ROOT/target/*.png (well exposed), "
                            "ROOT/events/<stem>.npz|h5|txt", extra={"inputs": "input", "targets": "target"}),
    **{n: Definition("JPEG artefact removal (grayscale)", _jpeg, "ROOT/*.png|bmp (converted to 8-bit gray)",
                     "quality") for n in ("classic5", "live1")},
}


def describe_layouts() -> str:
    width = max(map(len, DEFINITIONS))
    lines = []
    for name, d in DEFINITIONS.items():
        need = f" --{d.needs} N" if d.needs else ""
        lines.append(f"{name:{width}s}  {d.task}{need}: {d.layout}")
    return "\n".join(lines)


def load_benchmark(name: str, root: str | Path, sigma: float | None = None, scale: int | None = None,
                   quality: int | None = None) -> Benchmark:
    """The samples of benchmark ``name`` under ``root`` (see ``describe_layouts``)."""
    key = name.lower()
    if key not in DEFINITIONS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DEFINITIONS)}")
    d = DEFINITIONS[key]
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"--root {root}: no such folder (expected for {key}: {d.layout})")
    params = {"sigma": sigma, "scale": scale, "quality": quality}
    if d.needs and params[d.needs] is None:
        raise DatasetError(f"dataset {key} needs --{d.needs}")
    given = {k: v for k, v in params.items() if v is not None and k == d.needs}
    samples = d.build(root, **given, **d.extra)
    crop = int(scale) if d.crop_scale else 0
    return Benchmark(key, d.task, Convention(d.y_only, crop), samples, given, d.quadrants)


def read_list_file(path: str | Path, base: Path) -> list[Path]:
    """The image paths of a list file (one per line, relative to ``base`` unless absolute), all present."""
    p = Path(path)
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise DatasetError(f"{p}: list file not found")
    files = [Path(line.strip()) for line in p.read_text().splitlines() if line.strip()]
    if not files:
        raise DatasetError(f"{p}: empty list file")
    files = [f if f.is_absolute() else base / f for f in files]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DatasetError(f"{p}: {len(missing)} listed file(s) missing, e.g. {missing[0]}")
    return files


def benchmark_from_config(cfg: dict, base: str | Path = ".", scale: int | None = None) -> Benchmark:
    """A benchmark from an official EAMamba test config (``test_dataset.dataset: {name, args}``, list files).

    Relative list-file paths and the paths inside them are taken relative to ``base``. ``eval_y_only`` sets
    the Y-channel convention; ``scale`` (the official script's SR scale) sets the border crop.
    """
    base = Path(base)
    try:
        spec = cfg["test_dataset"]["dataset"]
        kind, args = spec["name"], spec.get("args", {})
    except (KeyError, TypeError):
        raise DatasetError("test config: expected test_dataset: {dataset: {name, args}}") from None
    if kind == "denoising-color-dataset":
        if args.get("sigma_type", "constant") != "constant":
            raise DatasetError("test config: only sigma_type: constant is reproducible at test time")
        sigma = float(args["sigma_range"])
        gts = read_list_file(args["gt_data_file"], base)
        samples = [Sample(p.stem, lambda p=p: read_image(p), lambda p=p: add_test_noise(read_image(p), sigma))
                   for p in gts]
        task, params = _DN, {"sigma": sigma}
    elif kind in ("paired-dataset", "sr-paired-dataset"):
        gts, lqs = read_list_file(args["gt_data_file"], base), read_list_file(args["lq_data_file"], base)
        if len(gts) != len(lqs):
            raise DatasetError(f"test config: {len(gts)} ground truths but {len(lqs)} inputs")
        if args.get("resize_back"):
            raise DatasetError("test config: resize_back (bicubic upsampling of the input) is not supported")
        read = _official_y if args.get("y_only") else read_image
        if kind == "sr-paired-dataset":
            samples = [Sample(g.stem, partial(_sr_ground_truth, g, q, read), partial(read, q))
                       for g, q in zip(gts, lqs, strict=True)]
        else:
            samples = [Sample(g.stem, partial(read, g), partial(read, q)) for g, q in zip(gts, lqs, strict=True)]
        task, params = kind, {}
    else:
        raise DatasetError(f"test config: dataset {kind!r} is not one of denoising-color-dataset, paired-dataset, "
                           "sr-paired-dataset")
    if scale:
        params["scale"] = scale
    conv = Convention(bool(cfg.get("eval_y_only", False)), int(scale) if scale and scale > 1 else 0)
    quadrants = int(cfg["eval_crop_size"]) if cfg.get("eval_crop_size") else None
    return Benchmark(Path(str(args.get("gt_data_file", kind))).stem, task, conv, samples, params, quadrants)


def _official_y(path: Path) -> torch.Tensor:
    """The official datasets' ``y_only`` reading: BT.601 Y of the 8-bit RGB image, rounded to 8 bits, (1, H, W)."""
    rgb = torch.round(read_image(path) * 255) / 255
    y = (65.481 * rgb[0] + 128.553 * rgb[1] + 24.966 * rgb[2] + 16.0) / 255
    return (torch.round(y * 255) / 255)[None]


def _sr_ground_truth(gt: Path, lq: Path, read) -> torch.Tensor:
    """The official SRPairedDataset at test time: the ground truth cropped to (input size) x (its scale),
    the scale being the ratio of the heights (integer division), as ``img_gt[:h_lr*s, :w_lr*s]``."""
    img, small = read(gt), read(lq)
    s = img.shape[1] // small.shape[1]
    return img[:, : small.shape[1] * s, : small.shape[2] * s]
