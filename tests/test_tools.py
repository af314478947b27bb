"""tools/skimage_denoise_data.py: the default model's data split and the shipped demo sample are reproducible."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("skimage_denoise_data", ROOT / "tools" / "skimage_denoise_data.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_keeps_the_heldout_photos_out_of_training_and_rebuilds_the_shipped_sample(tmp_path):
    pytest.importorskip("sklearn")
    tool = _tool()
    tool.main(["--out", str(tmp_path / "data"), "--extra", "--sample", str(tmp_path / "sample")])
    names = {split: sorted(p.stem for p in (tmp_path / "data" / split).glob("*.png"))
             for split in ("train", "heldout", "train-plus")}
    assert names["heldout"] == ["astronaut", "coffee", "rocket"]
    assert len(names["train"]) == 6 and len(names["train-plus"]) == 9
    assert set(names["train"]) < set(names["train-plus"])
    assert not set(names["heldout"]) & set(names["train-plus"])
    # no held-out photo hides in training under another name (pixel identity, not only file names)
    held = [np.asarray(Image.open(tmp_path / "data" / "heldout" / f"{n}.png")) for n in names["heldout"]]
    for n in names["train-plus"]:
        train = np.asarray(Image.open(tmp_path / "data" / "train-plus" / f"{n}.png"))
        assert all(h.shape != train.shape or not np.array_equal(h, train) for h in held), n
    for folder in ("clean", "noisy"):
        ours = np.asarray(Image.open(tmp_path / "sample" / folder / "astronaut.png"))
        shipped = np.asarray(Image.open(ROOT / "ssmir" / "samples" / folder / "astronaut.png"))
        np.testing.assert_array_equal(ours, shipped)
