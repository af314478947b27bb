"""The numbers of the default model's card: PSNR/SSIM and time on the held-out photos at sigma 15/25/50.

Compares, on the same noisy inputs: the noisy image itself, scikit-image's non-local means, BM3D (the
``bm3d`` package: ``pip install bm3d``) and a ssmir model (by default the bundled one). NLM and BM3D are
given the true sigma; the ssmir model is blind. The noise is ssmir's seeded test noise
(``ssmir.data.benchmarks.add_test_noise``, float, not clipped), as in the field's benchmark tables; every
output is clipped to [0, 1] before scoring with ``ssmir.eval.metrics`` (RGB, no border crop).

    python tools/skimage_denoise_data.py --out datasets/skimage
    python benchmarks/denoiser_card.py --heldout datasets/skimage/heldout --markdown docs/default-denoiser-results.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def _nlm(noisy: np.ndarray, sigma: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    # scikit-image's recommended setting for a known sigma: h = 0.8 sigma with fast_mode and sigma passed
    return denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5, patch_distance=6,
                            channel_axis=-1)


def _bm3d(noisy: np.ndarray, sigma: float) -> np.ndarray:
    import bm3d

    return bm3d.bm3d_rgb(noisy, sigma)


METHODS = ("noisy", "nlm", "bm3d", "ssmir", "ssmir-x4", "ssmir-x8", "ssmir-wiener")
ENSEMBLE = {"ssmir": 1, "ssmir-x4": 4, "ssmir-x8": 8, "ssmir-wiener": 1}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heldout", type=Path, default=Path("datasets/skimage/heldout"))
    p.add_argument("--model", default=None, help="zoo entry with bundled weights [the default model]")
    p.add_argument("--weights", type=Path, default=None, help="or a checkpoint to evaluate instead")
    p.add_argument("--sigmas", type=float, nargs="+", default=[15, 25, 50])
    p.add_argument("--methods", nargs="+", default=["noisy", "nlm", "bm3d", "ssmir"],
                   help=f"any of {', '.join(METHODS)} (ssmir-x4/-x8: the model with 4-flip/8-transform self-ensemble; "
                        "ssmir-wiener: the model refined by collaborative Wiener filtering, sigma estimated)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables here")
    p.add_argument("--json", type=Path, default=None, help="also write per-image rows here")
    a = p.parse_args(argv)
    unknown = sorted(set(a.methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown} (expected some of {', '.join(METHODS)})")
    torch.set_num_threads(a.threads)

    from ssmir.data.benchmarks import add_test_noise
    from ssmir.data.io import list_images, read_image
    from ssmir.eval.metrics import psnr, ssim
    from ssmir.eval.tester import restore_tensor
    from ssmir.eval.wiener import collaborative_wiener
    from ssmir.restoration import resolve_model

    files = list_images(a.heldout) if a.heldout.is_dir() else []
    if not files:
        raise SystemExit(f"{a.heldout}: no images (run tools/skimage_denoise_data.py first)")
    if "bm3d" in a.methods:
        try:
            import bm3d  # noqa: F401
        except ImportError:
            raise SystemExit("BM3D needs the bm3d package: pip install bm3d (or leave it out with --methods)") from None
    net = resolve_model(a.model, a.weights) if any(m.startswith("ssmir") for m in a.methods) else None

    clean = {path: read_image(path) for path in files}
    rows = []
    for sigma in a.sigmas:
        for path, gt in clean.items():
            h, w = gt.shape[1:]
            noisy = add_test_noise(gt, sigma)[:, :h, :w]
            noisy_np = noisy.permute(1, 2, 0).double().numpy()
            for method in a.methods:
                start = time.perf_counter()
                if method == "noisy":
                    out = noisy
                elif method == "nlm":
                    out = torch.from_numpy(_nlm(noisy_np, sigma / 255)).permute(2, 0, 1).float()
                elif method == "bm3d":
                    out = torch.from_numpy(_bm3d(noisy_np, sigma / 255)).permute(2, 0, 1).float()
                else:
                    out = restore_tensor(net, noisy[None], ensemble=ENSEMBLE[method])[0]
                    if method == "ssmir-wiener":  # blind: the noise level is estimated from the noisy image
                        out = collaborative_wiener(noisy, out.clamp(0, 1))
                seconds = time.perf_counter() - start
                out = out.float().clamp(0, 1)
                rows.append({"sigma": sigma, "image": path.stem, "method": method, "psnr": psnr(out, gt),
                             "ssim": ssim(out, gt), "seconds": 0.0 if method == "noisy" else seconds})
                r = rows[-1]
                print(f"sigma {sigma:g} {path.stem:12s} {method:6s} PSNR {r['psnr']:6.2f} SSIM {r['ssim']:.4f} "
                      f"{r['seconds']:7.2f} s", flush=True)

    ours = "ssmir default model" if a.weights is None and a.model is None else "ssmir model"
    names = {"noisy": "noisy input", "nlm": "non-local means (scikit-image)", "bm3d": "BM3D (bm3d package)",
             "ssmir": ours, "ssmir-x4": f"{ours}, self-ensemble x4", "ssmir-x8": f"{ours}, self-ensemble x8",
             "ssmir-wiener": f"{ours} + collaborative Wiener refinement"}
    lines = [f"Held-out images: {', '.join(f.stem for f in files)}; {a.threads} threads; PSNR (dB) / SSIM, "
             "RGB, mean over the images; seconds per image.", ""]
    header = "| method | " + " | ".join(f"sigma {s:g}" for s in a.sigmas) + " | seconds / image |"
    lines += [header, "|---|" + "---:|" * (len(a.sigmas) + 1)]
    for method in a.methods:
        cells, secs = [], []
        for sigma in a.sigmas:
            sel = [r for r in rows if r["method"] == method and r["sigma"] == sigma]
            cells.append(f"{np.mean([r['psnr'] for r in sel]):.2f} / {np.mean([r['ssim'] for r in sel]):.4f}")
            secs += [r["seconds"] for r in sel]
        lines.append(f"| {names[method]} | " + " | ".join(cells) + f" | {np.mean(secs):.2f} |")
    lines += ["", "Per image (PSNR dB):", "", "| sigma | image | " + " | ".join(a.methods) + " |",
              "|---:|---|" + "---:|" * len(a.methods)]
    for sigma in a.sigmas:
        for path in files:
            vals = [next(r["psnr"] for r in rows if r["sigma"] == sigma and r["image"] == path.stem
                         and r["method"] == m) for m in a.methods]
            lines.append(f"| {sigma:g} | {path.stem} | " + " | ".join(f"{v:.2f}" for v in vals) + " |")
    text = "\n".join(lines)
    print("\n" + text)
    if a.markdown:
        a.markdown.write_text(text + "\n")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
