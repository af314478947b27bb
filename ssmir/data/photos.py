"""Users' photos in and out at full fidelity: bit depth, grayscale/RGB, alpha, EXIF orientation.

``load_photo`` returns the colour channels as float32 (H, W, C) in [0, 1] (C = 1 or 3), the alpha channel
untouched (or None), and the bit depth (8 or 16). ``save_photo`` writes them back: 16-bit images stay 16-bit
(PNG through pypng, TIFF through tifffile), everything is written to a temporary file and renamed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ssmir.data.io import ImageError, atomic_write

FORMATS = ("png", "tif", "jpg")


@dataclass
class Photo:
    color: np.ndarray  # (H, W, C) float32 in [0, 1], C = 1 or 3
    alpha: np.ndarray | None  # (H, W) in [0, 1], carried through untouched
    bits: int = 8


def split_channels(arr: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(colour (H, W, 1|3) float32 in [0, 1], alpha (H, W) or None) of an (H, W[, 1-4]) array of full scale
    ``scale``: gray, gray + alpha, RGB or RGBA."""
    arr = arr.astype(np.float32) / scale
    if arr.ndim == 2:
        return arr[..., None], None
    if arr.shape[2] == 2:  # gray + alpha
        return arr[..., :1], arr[..., 1]
    if arr.shape[2] == 4:
        return arr[..., :3], arr[..., 3]
    return arr[..., :3], None


def load_photo(path: str | Path) -> Photo:
    """Read a PNG/JPEG/TIFF/BMP photo; EXIF orientation applied; 16-bit PNG/TIFF kept at 16 bits."""
    from PIL import Image, ImageOps

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    try:
        suffix = path.suffix.lower()
        if suffix == ".png":  # Pillow reads 16-bit RGB PNG as 8-bit; pypng keeps every bit
            import png

            w, h, rows, info = png.Reader(filename=str(path)).asDirect()
            if info["bitdepth"] == 16:
                planes = info["planes"]
                arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(h, w, planes)
                color, alpha = split_channels(arr[..., 0] if planes == 1 else arr, 65535.0)
                return Photo(color, alpha, 16)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(path)
            if arr.dtype == np.uint16:
                color, alpha = split_channels(arr, 65535.0)
                return Photo(color, alpha, 16)
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode not in ("L", "LA", "RGB", "RGBA"):
                im = im.convert("RGB")
            color, alpha = split_channels(np.asarray(im), 255.0)
            return Photo(color, alpha, 8)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"{path}: cannot read image ({e})") from None


def _quantise(a: np.ndarray, bits: int) -> np.ndarray:
    top = 65535 if bits == 16 else 255
    return np.rint(np.clip(a, 0, 1) * top).astype(np.uint16 if bits == 16 else np.uint8)


def save_photo(photo: Photo, path: str | Path) -> Path:
    """Write ``photo`` (format from the suffix: .png, .tif/.tiff, .jpg/.jpeg) atomically."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".")
    bits = photo.bits if fmt in ("png", "tif", "tiff") else 8
    planes = [photo.color] + ([photo.alpha[..., None]] if photo.alpha is not None and fmt != "jpg" else [])
    arr = _quantise(np.concatenate(planes, axis=2), bits)
    if arr.shape[2] == 1:
        arr = arr[..., 0]

    def write(tmp):
        if bits == 16 and fmt == "png":
            import png

            h, w = arr.shape[:2]
            channels = 1 if arr.ndim == 2 else arr.shape[2]
            writer = png.Writer(w, h, bitdepth=16, greyscale=channels <= 2, alpha=channels in (2, 4))
            with open(tmp, "wb") as f:
                writer.write(f, arr.reshape(h, -1).tolist())
        elif fmt in ("tif", "tiff"):
            import tifffile

            tifffile.imwrite(tmp, arr)
        else:
            from PIL import Image

            Image.fromarray(arr).save(tmp, format={"jpg": "JPEG", "jpeg": "JPEG"}.get(fmt, fmt.upper()), quality=95)

    return atomic_write(path, write)
