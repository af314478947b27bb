"""Time of ``restore --wiener``'s collaborative Wiener refinement, against the network pass and BM3D run alike.

For each photo (scikit-image's astronaut resized to each size, Gaussian noise sigma 25, seeded), the table shows
the best of ``--repeat`` wall times of: the default model's pass (``restore_tensor``, untiled), the refinement
(``collaborative_wiener`` with the noise estimated, as ``--wiener`` runs it) split into its block matching and
the rest, and once, when the ``bm3d`` package is installed (``pip install bm3d``), the package's CBM3D. The
ratios are to the network pass timed in the same run.

    python benchmarks/bench_wiener.py                      # 512x512 and 1000x750, 2 threads
    python benchmarks/bench_wiener.py --sizes 256x256 --no-bm3d
"""

from __future__ import annotations

import argparse
import inspect
import time


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["512x512", "1000x750"], help="WIDTHxHEIGHT")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-bm3d", action="store_true", help="skip the bm3d package's CBM3D")
    a = p.parse_args(argv)

    import numpy as np
    import skimage.data
    import torch
    from PIL import Image

    import ssmir.eval.wiener as wiener
    from ssmir.eval.tester import restore_tensor
    from ssmir.restoration import resolve_model

    torch.set_num_threads(a.threads)
    bm3d = None
    if not a.no_bm3d:
        try:
            import bm3d
        except ImportError:
            print("(bm3d not installed: its column is left out; pip install bm3d)")
    net = resolve_model(None, None)
    defaults = inspect.signature(wiener.collaborative_wiener).parameters    # the matching --wiener runs
    match_kw = {k: defaults[k].default for k in ("patch", "step", "search", "group")}

    print(f"{a.threads} threads, best of {a.repeat}; ratios to the network pass")
    print(f"{'size':>10} {'network':>9} {'matching':>9} {'wiener':>9} {'w / net':>8} {'net+w':>8} {'bm3d':>8}")
    for size in a.sizes:
        try:
            width, height = (int(v) for v in size.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--sizes: expected WIDTHxHEIGHT, got {size!r}") from None
        clean = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((width, height),
                                                                          Image.Resampling.BICUBIC), np.float32) / 255
        rng = np.random.default_rng(0)
        noisy = torch.from_numpy(clean + rng.normal(0, 25 / 255, clean.shape).astype(np.float32)).permute(2, 0, 1)
        with torch.inference_mode():
            pilot = restore_tensor(net, noisy[None])[0].clamp(0, 1)
            t_net = _best(lambda x=noisy: restore_tensor(net, x[None]), a.repeat)
            t_wiener = _best(lambda x=noisy, y=pilot: wiener.collaborative_wiener(x, y), a.repeat)
            luma = torch.einsum("j,jhw->hw", wiener._OPP[0], pilot)
            t_match = _best(lambda y=luma: wiener._match(y, **match_kw), a.repeat)
        t_bm3d = None
        if bm3d is not None:
            z = noisy.permute(1, 2, 0).double().numpy()
            t_bm3d = _best(lambda x=z: bm3d.bm3d_rgb(x, 25 / 255), 1)
        bm = f"{t_bm3d:7.2f}s" if t_bm3d is not None else f"{'-':>8}"
        print(f"{size:>10} {t_net:8.2f}s {t_match:8.2f}s {t_wiener:8.2f}s {t_wiener / t_net:7.2f}x "
              f"{t_net + t_wiener:7.2f}s {bm}", flush=True)


if __name__ == "__main__":
    main()
