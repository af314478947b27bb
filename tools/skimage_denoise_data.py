"""Write the training and held-out images of ssmir's bundled denoiser (scikit-image's colour samples).

    python tools/skimage_denoise_data.py --out datasets/skimage

writes ``OUT/train/*.png`` and ``OUT/heldout/*.png``. ``--extra`` also writes ``OUT/train-plus/``: the training
photos plus three natural photos shipped inside other installed packages (scikit-learn's ``china`` and
``flower``, matplotlib's ``grace_hopper``; no download), for the fine-tuning stage of the default model.
``--sample DIR`` also writes the demo sample shipped in the package (``ssmir/samples``): a 256x256 crop of the
held-out astronaut photo, clean and with Gaussian noise of sigma 25 (ssmir's seeded test noise, then 8-bit).
The split is fixed here and recorded in the model card
(docs/model-card-default-denoiser.md): the held-out photos are never seen in training.
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

# Every RGB photo shipped inside scikit-image (no download). Synthetic RGB charts (color, phantom,
# chessboard_RGB) and the RGBA silhouettes (horse, logo) are not photos and are left out.
TRAIN = ("chelsea", "hubble_deep_field", "immunohistochemistry", "motorcycle_left", "motorcycle_right", "retina")
HELDOUT = ("astronaut", "coffee", "rocket")
EXTRA = ("china", "flower", "grace_hopper")  # scikit-learn, scikit-learn, matplotlib: JPEG photos, stored as PNG
SAMPLE = ("astronaut", slice(20, 276), slice(120, 376), 25.0)  # image, rows, columns, sigma


@functools.cache  # --extra writes the training photos twice (train/, train-plus/): decode each once
def load(name: str):
    import skimage.data

    if name in ("china", "flower"):
        try:
            from sklearn.datasets import load_sample_image
        except ImportError:
            raise SystemExit(f"--extra: the photo {name!r} ships with scikit-learn, which is not installed "
                             "(pip install 'ssmir[tools]' or pip install scikit-learn)") from None

        return load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        import matplotlib.cbook
        import numpy as np
        from PIL import Image

        with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) as im:
            return np.asarray(im.convert("RGB"))

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        return left if name.endswith("left") else right
    return getattr(skimage.data, name)()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("datasets/skimage"))
    parser.add_argument("--extra", action="store_true", help="also write OUT/train-plus (needs scikit-learn)")
    parser.add_argument("--sample", type=Path, default=None, help="also write the demo sample here")
    args = parser.parse_args(argv)
    import torch

    from ssmir.data.benchmarks import add_test_noise
    from ssmir.data.io import save_image

    if args.sample is not None:
        name, rows, cols, sigma = SAMPLE
        clean = torch.from_numpy(load(name)[rows, cols]).permute(2, 0, 1).float() / 255.0
        noisy = add_test_noise(clean, sigma).clamp(0, 1)  # 256 is a multiple of 8: no padding
        for folder, image in (("clean", clean), ("noisy", noisy)):
            print(save_image(image, args.sample / folder / f"{name}.png"))

    splits = [("train", TRAIN), ("heldout", HELDOUT)] + ([("train-plus", TRAIN + EXTRA)] if args.extra else [])
    for split, names in splits:
        folder = args.out / split
        folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            image = load(name)
            save_image(torch.tensor(image).permute(2, 0, 1).float() / 255.0, folder / f"{name}.png")
            print(f"{folder / name}.png  {image.shape[1]}x{image.shape[0]}")


if __name__ == "__main__":
    main()
