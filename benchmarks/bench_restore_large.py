"""Time and peak memory of ``ssmir restore`` (tiled) as the photo grows: memory bounded by the tile, not the image.

A noisy photo (scikit-image's astronaut resized, Gaussian noise sigma 25, 8-bit PNG) is written at each size and
restored by the CLI in a fresh process with the default model; the table shows wall time, peak resident memory of
that process, and both relative to the smallest size run in the same invocation.

    python benchmarks/bench_restore_large.py                              # 1000x750 and 4000x3000, tile 512
    python benchmarks/bench_restore_large.py --sizes 2000x1500 --tile 256 --model eamamba-small-denoise-blind
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _photo(width: int, height: int, path: Path) -> None:
    import numpy as np
    import skimage.data
    from PIL import Image

    clean = Image.fromarray(skimage.data.astronaut()).resize((width, height), Image.Resampling.BICUBIC)
    rng = np.random.default_rng(0)
    noisy = np.asarray(clean, dtype=np.float32) + rng.normal(0, 25, (height, width, 3))
    Image.fromarray(noisy.clip(0, 255).round().astype(np.uint8)).save(path)


def _restore(image: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Wall seconds and peak RSS (bytes) of one ``ssmir restore`` process."""
    cmd = [sys.executable, "-m", "ssmir", "restore", str(image), "-o", str(out), "--overwrite",
           "--tile", str(args.tile), "--overlap", str(args.overlap), "--model", args.model]
    code = (f"import resource, subprocess, sys; subprocess.run({cmd!r}, check=True, stdout=subprocess.DEVNULL); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return seconds, int(done.stdout.split()[-1]) * scale


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["1000x750", "4000x3000"], help="WIDTHxHEIGHT, smallest first")
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--model", default="eamamba-small-denoise-blind")
    args = p.parse_args()
    sizes = []
    for s in args.sizes:
        try:
            w, h = (int(v) for v in s.lower().split("x"))
        except ValueError:
            p.error(f"--sizes: {s!r} is not WIDTHxHEIGHT")
        sizes.append((w, h))
    print(f"ssmir restore --model {args.model} --tile {args.tile} --overlap {args.overlap}, fresh process per size\n")
    print("| photo | megapixels | seconds | peak memory (GiB) | time vs first | memory vs first |")
    print("|---|---:|---:|---:|---:|---:|")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        for w, h in sizes:
            image = Path(tmp) / f"noisy_{w}x{h}.png"
            _photo(w, h, image)
            seconds, peak = _restore(image, Path(tmp) / "out", args)
            first = first or (seconds, peak)
            print(f"| {w}x{h} | {w * h / 1e6:.2f} | {seconds:.1f} | {peak / 2**30:.2f} | "
                  f"{seconds / first[0]:.1f}x | {peak / first[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
