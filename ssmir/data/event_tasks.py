"""The event-guided tasks simulated from sharp frame sequences: deblurring, deraining, HDR enhancement.

``event_sample(frames, task, rng)`` takes N sharp frames (N, 3, H, W) in [0, 1] (sRGB) spanning one exposure
and returns (input frame, events, target):

- ``deblur``: the input is the mean of the frames (the blurry exposure), the events are simulated from their
  luma, the target is the middle frame.
- ``derain``: rain streaks are drawn over every frame (``rain_layers``: a random density, angle, length and
  brightness per sequence; each streak falls along its angle between frames), the events are simulated from
  the *rainy* frames (rain is what an event camera sees most), the input is the rainy middle frame and the
  target the clean one.
- ``hdr``: the frames are taken as scene radiance (sRGB decoded to linear light). The frame camera sees the
  middle frame's radiance under- or over-exposed (a gain of 2**-3..2**-1.5 or 2**1.5..2**3), clipped to its
  range, sRGB-encoded and quantised to 8 bits; the event camera sees the true log radiance (its range is far
  wider). The target is the well-exposed frame: the radiance at gain 1 with the sRGB curve as tone-mapping
  operator, i.e. the middle frame itself.
"""

from __future__ import annotations

import numpy as np
import torch

TASKS = ("deblur", "derain", "hdr")


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(min=0)
    return torch.where(x <= 0.0031308, 12.92 * x, 1.055 * x.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)


def rain_layers(n: int, h: int, w: int, rng) -> tuple[torch.Tensor, float]:
    """(n, 1, h, w) streak opacity for n frames, and the rain's brightness.

    One sequence's rain: density (streaks per pixel) in [0.002, 0.012], angle within 30 degrees of vertical,
    length 6-20 pixels, brightness 0.55-0.95, opacity 0.35-0.85; every streak falls along its direction by
    0.6-1.2 of its length per frame (wrapping at the borders), so it moves between frames.
    """
    density = rng.uniform(0.002, 0.012)
    count = max(1, int(density * h * w))
    angle = np.deg2rad(rng.uniform(-30, 30))
    length = rng.uniform(6, 20)
    bright, opacity = rng.uniform(0.55, 0.95), rng.uniform(0.35, 0.85)
    dy, dx = np.cos(angle), np.sin(angle)
    speed = rng.uniform(0.6, 1.2) * length
    y0, x0 = rng.uniform(0, h, count), rng.uniform(0, w, count)
    weights = rng.uniform(0.5, 1.0, count)
    steps = np.linspace(0, length, int(np.ceil(length * 2)) + 1)
    layers = np.zeros((n, h * w))
    for k in range(n):
        ys = (y0[:, None] + dy * (steps[None] + speed * k)) % h
        xs = (x0[:, None] + dx * (steps[None] + speed * k)) % w
        idx = ys.astype(np.int64) * w + xs.astype(np.int64)
        np.maximum.at(layers[k], idx.ravel(), np.repeat(weights, len(steps)))
    layers = torch.from_numpy(layers.reshape(n, 1, h, w)).float() * opacity
    # a little softness across the streak (a 3-tap blur), as real streaks are out of focus
    kernel = torch.tensor([0.25, 0.5, 0.25])
    layers = torch.nn.functional.conv2d(layers, (kernel[:, None] * kernel[None])[None, None], padding=1)
    return layers.clamp(0, 1), float(bright)


def event_sample(frames: torch.Tensor, task: str, rng, threshold: float = 0.2, threshold_sigma: float = 0.03):
    """(input (3, H, W), events, target (3, H, W)) of one simulated exposure; see the module docstring."""
    from ssmir.data.events import blur_from_frames, simulate_events
    from ssmir.data.io import luma

    if task not in TASKS:
        raise ValueError(f"event task {task!r} is not one of {', '.join(TASKS)}")
    n = frames.shape[0]
    middle = frames[n // 2]
    times = np.linspace(0.0, 1.0, n)
    seed = int(rng.integers(2**31))
    if task == "deblur":
        seen = frames
        inp = torch.from_numpy(blur_from_frames(frames.numpy()).astype(np.float32))
        target = middle
    elif task == "derain":
        alpha, bright = rain_layers(n, frames.shape[-2], frames.shape[-1], rng)
        seen = frames * (1 - alpha) + bright * alpha
        inp, target = seen[n // 2], middle
    else:
        radiance = srgb_to_linear(frames)
        gain = 2.0 ** (rng.uniform(1.5, 3.0) * (1 if rng.random() < 0.5 else -1))
        ldr = linear_to_srgb((radiance[n // 2] * gain).clamp(0, 1))
        inp = torch.round(ldr * 255) / 255
        seen, target = radiance, middle
        events = simulate_events(luma(seen, axis=1)[:, 0].numpy(), times, threshold, threshold_sigma, eps=1e-4,
                                 seed=seed)
        return inp.contiguous(), events, target.contiguous()
    events = simulate_events(luma(seen, axis=1)[:, 0].numpy(), times, threshold, threshold_sigma, seed=seed)
    return inp.contiguous(), events, target.contiguous()
