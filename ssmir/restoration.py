"""Restore users' images: the API behind ``ssmir restore`` and ``ssmir.restore``.

Images of any size go through the shared tiling/ensemble helper (``ssmir.eval.tiling``), so peak memory is
bounded by the tile, not the photo. Grayscale photos given to an RGB model are replicated to three channels
and brought back to one (BT.601 luma); RGB photos given to a one-channel model are restored channel by
channel; an alpha channel is carried through untouched.

Event models (EmambaIR) take the events recorded during the frame's exposure as well: ``event_voxel`` reads
them (any format of ``ssmir.data.events.read_events``), keeps the exposure window and voxelises them into the
model's number of bins at the frame's size; tiles and self-ensemble flips cut and flip the voxel grid with the
frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from ssmir.data.io import luma
from ssmir.data.photos import Photo, load_photo, split_channels
from ssmir.eval.tester import restore_tensor


def pick_device(device: str = "auto") -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; others are validated."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ValueError(f"--device {device!r}: expected auto, cpu, cuda or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available here")
    return torch.device(device)


def resolve_model(model: nn.Module | str | None = None, weights: str | Path | None = None,
                  trust_pickle: bool = False) -> nn.Module:
    """A model from an instance, a checkpoint file (``weights``, with ``model`` naming its architecture or zoo
    entry where the file does not), a zoo entry with bundled weights, or nothing: the bundled default
    (``ssmir.models.zoo.DEFAULT_MODEL``)."""
    from ssmir.models.loading import load_model

    if isinstance(model, nn.Module):
        return model.eval()
    if weights is not None:
        return load_model(weights, name=model, trust_pickle=trust_pickle)
    from ssmir.models.zoo import DEFAULT_MODEL, bundled_weights

    return load_model(bundled_weights(model or DEFAULT_MODEL)).eval()


def event_voxel(events, bins: int, height: int, width: int, exposure: tuple[float, float] | None = None,
                reader: str = "auto") -> torch.Tensor:
    """(bins, height, width) voxel grid from an event file path, an ``Events`` stream or a ready grid.

    ``exposure`` (start, end) in the stream's time unit keeps the events of the exposure window; by default
    the whole stream is the exposure.
    """
    from ssmir.data.events import EventError, Events, events_to_voxel, read_events

    if isinstance(events, torch.Tensor):
        if tuple(events.shape) != (bins, height, width):
            raise ValueError(f"event voxel grid is {tuple(events.shape)}, the model needs ({bins}, {height}, {width})")
        return events.float()
    if isinstance(events, (str, Path)):
        events = read_events(events, height, width, reader=reader)
    elif not isinstance(events, Events):
        raise TypeError(f"events: expected a file path, ssmir.data.events.Events or a voxel tensor, got "
                        f"{type(events).__name__}")
    start, end = exposure if exposure is not None else (None, None)
    if exposure is not None and not end > start:
        raise EventError(f"exposure window ({start}, {end}): the end must come after the start")
    return events_to_voxel(events, bins, height, width, t_start=start, t_end=end)


def restore_photo(model: nn.Module, photo: Photo, device: torch.device, tile: int | None = 512, overlap: int = 32,
                  tile_batch: int = 1, ensemble: int = 1, half: bool = False, progress: bool = False,
                  events=None, exposure: tuple[float, float] | None = None, event_reader: str = "auto",
                  wiener: bool = False, sigma: float | None = None) -> Photo:
    """Restore the colour channels of ``photo``; alpha and bit depth are kept.

    ``wiener`` (denoisers): refine the network's output by collaborative Wiener filtering of the noisy photo
    with the output as pilot (``ssmir.eval.wiener``), for the noise level ``sigma`` (on the 0-255 scale;
    ``None``: estimated from the photo).

    ``events``: what ``event_voxel`` takes (an event file, an ``Events`` stream or the (bins, H, W) voxel grid)
    for the exposure window ``exposure``; required by event models and refused by the others.
    """
    channels = getattr(model, "input_channels", (3,))
    if len(channels) > 1 and events is None:
        raise ValueError("this model takes the exposure's events as well: give them (--events FILE)")
    if len(channels) == 1 and events is not None:
        raise ValueError("events were given but this model takes images only")
    if wiener and sigma is not None and not 0 <= sigma <= 255:  # before the network's pass, not after it
        raise ValueError(f"sigma {sigma}: expected a noise level in [0, 255]")
    extra = []
    if events is not None:
        extra = [event_voxel(events, channels[1], *photo.color.shape[:2], exposure=exposure, reader=event_reader)]
    want = channels[0]
    x = torch.from_numpy(np.ascontiguousarray(photo.color.transpose(2, 0, 1)))[None]  # (1, C, H, W)
    gray_in = x.shape[1] == 1
    if want == 3 and gray_in:
        x = x.repeat(1, 3, 1, 1)
    elif want == 1 and not gray_in:
        x = x.transpose(0, 1)  # each colour channel as its own grayscale image
    elif want not in (1, 3):
        raise ValueError(f"the model takes {want}-channel inputs; photos have 1 or 3 colour channels")
    dtype = torch.float16 if half and device.type in ("cuda", "mps") else torch.float32
    model = model.to(device=device, dtype=dtype)
    extra = [e[None].expand(x.shape[0], -1, -1, -1).to(device=device, dtype=dtype) for e in extra]
    y = restore_tensor(model, x.to(device=device, dtype=dtype), *extra, ensemble=ensemble, tile=tile,
                       overlap=overlap, tile_batch=tile_batch, progress=progress).float().clamp(0, 1).cpu()
    if wiener:
        if extra or y.shape != x.shape:
            raise ValueError("the Wiener refinement is for denoising models (output the size of the input, "
                             f"no events); this model maps {tuple(x.shape[1:])} to {tuple(y.shape[1:])}")
        from ssmir.eval.wiener import collaborative_wiener

        noisy, pilot = x.to(device=device, dtype=torch.float32), y.to(device)  # on the model's device
        y = torch.stack([collaborative_wiener(noisy[b], pilot[b], None if sigma is None else sigma / 255)
                         for b in range(y.shape[0])]).clamp(0, 1).cpu()
    if want == 1 and not gray_in:
        y = y.transpose(0, 1)
    if want == 3 and gray_in:
        y = luma(y, axis=1)
    return Photo(y[0].numpy().transpose(1, 2, 0), photo.alpha, photo.bits)


def restore(image, model: nn.Module | str | None = None, weights: str | Path | None = None, *, tile: int | None = 512,
            overlap: int = 32, ensemble: int = 1, device: str = "auto", half: bool = False, events=None,
            exposure: tuple[float, float] | None = None, wiener: bool = False, sigma: float | None = None):
    """Restore ``image`` and return the result in the type it came in.

    ``image``: a path (returns an (H, W[, C]) float32 array in [0, 1]), a PIL image (returns a PIL image of the
    same mode), a NumPy array (H, W[, C]) of uint8/uint16/float in [0, 1] (same dtype back), or a tensor
    (C, H, W) / (B, C, H, W) in [0, 1] (same shape back).
    ``events`` (event models): an event file, an ``Events`` stream or a (bins, H, W) voxel grid, for the
    exposure window ``exposure`` (default: the whole stream).
    ``wiener``/``sigma``: the collaborative Wiener refinement of denoisers' outputs (see ``restore_photo``).
    """
    net = resolve_model(model, weights)
    dev = pick_device(device)

    def run(photo: Photo) -> Photo:
        return restore_photo(net, photo, dev, tile=tile, overlap=overlap, ensemble=ensemble, half=half,
                             events=events, exposure=exposure, wiener=wiener, sigma=sigma)

    if isinstance(image, (str, Path)):
        out = run(load_photo(image))
        return out.color[..., 0] if out.color.shape[2] == 1 else out.color
    if isinstance(image, torch.Tensor):
        batched = image if image.dim() == 4 else image[None]
        outs = [torch.from_numpy(run(Photo(b.permute(1, 2, 0).float().cpu().numpy(), None)).color).permute(2, 0, 1)
                for b in batched]
        result = torch.stack(outs).to(image.dtype)
        return result if image.dim() == 4 else result[0]
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is part of the tools extra
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGBA" if image.mode in ("RGBA", "LA", "P") else image.mode
                                       if image.mode in ("L", "RGB") else "RGB"))
        restored = restore(arr, net, tile=tile, overlap=overlap, ensemble=ensemble, device=device, half=half,
                           events=events, exposure=exposure, wiener=wiener, sigma=sigma)
        return Image.fromarray(restored)
    arr = np.asarray(image)
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 2, 3, 4))):
        raise ValueError(f"image array of shape {arr.shape}: expected (H, W) or (H, W, C) with C = 1 to 4")
    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(arr.dtype, 1.0)
    out = run(Photo(*split_channels(arr, scale)))
    res = out.color if out.alpha is None else np.concatenate([out.color, out.alpha[..., None]], axis=2)
    res = res[..., 0] if arr.ndim == 2 else res
    if scale != 1.0:
        return np.rint(np.clip(res, 0, 1) * scale).astype(arr.dtype)
    return res.astype(arr.dtype, copy=False)
