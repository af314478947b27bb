"""Reading and writing images as float tensors in [0, 1]; writes are atomic.

8- and 16-bit PNG/TIFF, JPEG and BMP through Pillow (EXIF orientation honoured). Tensors are (C, H, W)
float32; grayscale images have one channel, RGB three (alpha is dropped here; ``restore`` carries it).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageError(ValueError):
    """An image that cannot be read or written."""


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601


def luma(rgb, axis: int):
    """ITU-R 601 luma of the RGB channels along ``axis`` of a NumPy array or tensor; that axis kept, of size 1."""
    index = [slice(None)] * rgb.ndim
    total = 0
    for c, weight in enumerate(LUMA_WEIGHTS):
        index[axis] = slice(c, c + 1)
        total = total + weight * rgb[tuple(index)]
    return total


def read_image(path: str | Path, mode: str = "RGB") -> torch.Tensor:
    """(C, H, W) float32 in [0, 1]; ``mode`` "RGB" (3 channels) or "L" (1 channel, ITU-R 601 luma).

    16-bit PNG/TIFF keep their precision (divided by 65535).
    """
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    if path.suffix.lower() in (".png", ".tif", ".tiff"):
        from ssmir.data.photos import load_photo

        photo = load_photo(path)
        if photo.bits == 16:  # keep every bit; 8-bit files take Pillow's path below
            c = photo.color
            if mode == "L" and c.shape[2] == 3:
                c = luma(c, axis=-1)
            elif mode == "RGB" and c.shape[2] == 1:
                c = np.repeat(c, 3, axis=2)
            return torch.from_numpy(np.ascontiguousarray(c.transpose(2, 0, 1)))
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            arr = np.asarray(im)
            sixteen = arr.dtype == np.uint16 or im.mode.startswith("I;16")
            if sixteen and arr.ndim == 2:
                gray = arr.astype(np.float32) / 65535.0
                data = gray[None] if mode == "L" else np.repeat(gray[None], 3, axis=0)
            else:
                data = np.asarray(im.convert(mode), dtype=np.float32) / 255.0
                data = data[None] if mode == "L" else data.transpose(2, 0, 1)
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"{path}: cannot read image ({e})") from None
    return torch.from_numpy(np.ascontiguousarray(data))


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) float in [0, 1] -> (H, W[, C]) uint8, rounded to nearest."""
    arr = np.rint(img.detach().float().clamp(0, 1).cpu().numpy() * 255.0).astype(np.uint8)
    return arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0)


def atomic_write(path: str | Path, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make outputs private
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def save_image(img: torch.Tensor, path: str | Path) -> Path:
    """Write a (C, H, W) [0, 1] tensor as an 8-bit image (format from the suffix), atomically."""
    from PIL import Image

    arr = to_uint8(img)
    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF", "tiff": "TIFF"}.get(suffix, suffix.upper())
    return atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format=fmt))
