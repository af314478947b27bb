"""The resolution-sweep plot of ``ssmir profile --var``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def growth_exponent(pixels: list[float], values: list[float]) -> float | None:
    """Slope of log(value) against log(pixels): 1 means linear in the pixel count, 2 quadratic."""
    pts = [(math.log(p), math.log(v)) for p, v in zip(pixels, values, strict=True) if p > 0 and v and v > 0]
    if len(pts) < 2:
        return None
    x, y = np.array(pts).T
    return float(np.polyfit(x, y, 1)[0])


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or a clear error when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("plotting needs matplotlib (pip install 'ssmir[tools]')") from None
    return plt


def plot_sweep(rows: list[dict], title: str, path: str | Path) -> Path:
    """Log-log plots of GMACs, latency and peak memory against pixels."""
    plt = pyplot()
    pixels = [r["size"] ** 2 for r in rows]
    series = [("gmacs", "GMACs"), ("latency_ms", "latency (ms)"), ("memory_mib", "peak memory (MiB)")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (key, label) in zip(axes, series, strict=True):
        vals = [r.get(key) for r in rows]
        pts = [(p, v) for p, v in zip(pixels, vals, strict=True) if v]
        if pts:
            ax.loglog(*zip(*pts, strict=True), "o-")
            slope = growth_exponent(*zip(*pts, strict=True))
            if slope is not None:
                label += f"  (slope {slope:.2f})"
        ax.set_xlabel("pixels")
        ax.set_title(label, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
