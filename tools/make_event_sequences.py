"""Frame sequences of camera pans and zooms over still photos, for trying the event tasks without a dataset.

    python tools/make_event_sequences.py --out datasets/event-seq                 # train/ and heldout/
    python tools/make_event_sequences.py --out datasets/event-seq --per-photo 40 --size 128 --frames 9

Each sequence is ``OUT/<split>/<photo>-<k>/000.png, 001.png, ...``: a ``--size`` square window that moves
across the photo at a constant random velocity (1 to ``--max-speed`` pixels per frame, any direction) while
zooming slightly (a random 0.98-1.02 scale factor per frame), resampled bilinearly. ``event-sequence-dataset``
(``sequence_dir: OUT/train``) turns them into blurry, rainy or badly exposed frames with simulated events.

Photos (all shipped inside installed packages, nothing downloaded): training from scikit-image's
``chelsea`` and ``motorcycle_left``, scikit-learn's ``china`` and ``flower``, matplotlib's ``grace_hopper``;
held out (validation and test): scikit-image's ``astronaut``, ``coffee`` and ``rocket``, as for the bundled
denoiser. ``--export-test DIR --task deblur|derain|hdr`` also writes the held-out sequences as an
``ssmir test`` set (``event-deblur``: ``blur/ sharp/ events/``; ``event-derain`` and ``event-hdr``:
``input/ target/ events/``), one sample per sequence.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from skimage_denoise_data import load  # noqa: E402

TRAIN = ("chelsea", "motorcycle_left", "china", "flower", "grace_hopper")
HELDOUT = ("astronaut", "coffee", "rocket")


def pan(photo: np.ndarray, size: int, frames: int, max_speed: float, rng) -> np.ndarray:
    """(frames, size, size, 3) uint8: a window panning and zooming over ``photo`` (H, W, 3) uint8."""
    import torch
    import torch.nn.functional as F

    h, w = photo.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(1.0, max_speed)
    zoom = rng.uniform(0.98, 1.02)
    travel = speed * (frames - 1)
    scale_end = zoom ** (frames - 1)
    half = size / 2 * max(1.0, scale_end)
    lo_x, hi_x = half + max(0, -np.cos(angle) * travel), w - half - max(0, np.cos(angle) * travel)
    lo_y, hi_y = half + max(0, -np.sin(angle) * travel), h - half - max(0, np.sin(angle) * travel)
    if hi_x <= lo_x or hi_y <= lo_y:
        raise ValueError(f"photo {w}x{h} is too small for a {size} window moving {travel:.0f} pixels")
    cx, cy = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
    img = torch.from_numpy(np.array(photo)).permute(2, 0, 1)[None].float()
    out = []
    for k in range(frames):
        x, y, s = cx + np.cos(angle) * speed * k, cy + np.sin(angle) * speed * k, zoom**k
        lin = (torch.arange(size, dtype=torch.float32) - (size - 1) / 2) * s
        gx = ((x + lin) * 2 + 1) / w - 1  # align_corners=False pixel centres
        gy = ((y + lin) * 2 + 1) / h - 1
        grid = torch.stack(torch.meshgrid(gy, gx, indexing="ij")[::-1], dim=-1)[None]
        frame = F.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
        out.append(frame[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy())
    return np.stack(out)


def write_sequences(out: Path, names, per_photo: int, size: int, frames: int, max_speed: float, seed: int) -> int:
    from PIL import Image

    rng = np.random.default_rng(seed)
    count = 0
    for name in names:
        photo = load(name)
        photo = np.repeat(photo[..., None], 3, axis=2) if photo.ndim == 2 else photo[..., :3]
        for k in range(per_photo):
            folder = out / f"{name}-{k:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i, frame in enumerate(pan(photo, size, frames, max_speed, rng)):
                Image.fromarray(frame).save(folder / f"{i:03d}.png")
            count += 1
    return count


def export_test(sequences: Path, out: Path, task: str, frames_per_blur: int, seed: int) -> int:
    """One ``ssmir test`` sample per held-out sequence (the dataset's own simulation, fixed seeds)."""
    from ssmir.data.io import save_image
    from ssmir.train.data import EventSequenceData

    data = EventSequenceData({"sequence_dir": str(sequences), "frames_per_blur": frames_per_blur, "task": task},
                             Path("."), seed)
    names = ("blur", "sharp") if task == "deblur" else ("input", "target")
    (out / "events").mkdir(parents=True, exist_ok=True)
    for i in range(data.validation_count):
        frame, events, target = data.validation_events(i)
        save_image(frame.clamp(0, 1), out / names[0] / f"{i:04d}.png")
        save_image(target.clamp(0, 1), out / names[1] / f"{i:04d}.png")
        np.savez(out / "events" / f"{i:04d}.npz", x=events.x, y=events.y, t=events.t, p=events.p)
    return data.validation_count


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--per-photo", type=int, default=24, help="training sequences per photo")
    p.add_argument("--heldout-per-photo", type=int, default=4)
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--max-speed", type=float, default=3.0, help="pixels per frame")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--export-test", type=Path, help="also write the held-out sequences as an `ssmir test` set")
    p.add_argument("--task", choices=("deblur", "derain", "hdr"), default="deblur")
    p.add_argument("--frames-per-blur", type=int, default=7)
    a = p.parse_args()
    n = write_sequences(a.out / "train", TRAIN, a.per_photo, a.size, a.frames, a.max_speed, a.seed)
    m = write_sequences(a.out / "heldout", HELDOUT, a.heldout_per_photo, a.size, a.frames, a.max_speed, a.seed + 1)
    print(f"{n} training sequences in {a.out / 'train'}, {m} held-out sequences in {a.out / 'heldout'}")
    if a.export_test:
        k = export_test(a.out / "heldout", a.export_test, a.task, a.frames_per_blur, a.seed)
        print(f"{k} {a.task} test samples in {a.export_test}")


if __name__ == "__main__":
    main()
