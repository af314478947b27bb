"""Defocus-blur augmentation of denoising crops: the disk kernel, the blur, the samples and bad options."""

import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from ssmir.train.data import DataError, RestorationData, defocus, disk_kernel


def _photos(folder, n=3, size=64):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size + 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _data(tmp_path, **args):
    spec = {"name": "denoising-color-dataset", "args": {"gt_dir": str(_photos(tmp_path / "gt")), "augment": True,
                                                         "sigma_type": "constant", "sigma_range": 25, **args}}
    return RestorationData(spec, seed=3)


@pytest.mark.parametrize("radius", [0.7, 1.0, 2.5, 4.0, 6.0])
def test_disk_kernel_is_a_normalised_symmetric_disk_of_the_right_area(radius):
    k = disk_kernel(radius, supersample=8).double()
    half = math.ceil(radius)
    assert k.shape == (2 * half + 1, 2 * half + 1)
    torch.testing.assert_close(k.sum(), torch.tensor(1.0, dtype=torch.float64))
    for t in (k.flip(0), k.flip(1), k.T):  # the disk's symmetries
        torch.testing.assert_close(t, k)
    # an independent area estimate: the centre tap is a whole pixel inside the disk (radius > 0.5·√2), so the
    # kernel's total divided by it is the disk's area in pixels, π r²
    if radius > 0.71:
        fine = disk_kernel(radius, supersample=64).double()
        assert (fine.sum() / fine[half, half]).item() == pytest.approx(math.pi * radius**2, rel=0.005)
        assert (k.sum() / k[half, half]).item() == pytest.approx(math.pi * radius**2, rel=0.05)  # the default grid
    yy, xx = torch.meshgrid(torch.arange(-half, half + 1.0), torch.arange(-half, half + 1.0), indexing="ij")
    near = (yy.abs() - 0.5).clamp(min=0) ** 2 + (xx.abs() - 0.5).clamp(min=0) ** 2  # a pixel's nearest point
    assert (k[near > radius**2 + 1e-9] == 0).all() and (k[near < radius**2 - 0.2] > 0).all()


def test_defocus_equals_scipy_convolution_with_mirrored_edges():
    img = torch.rand(3, 30, 41)
    for radius in (1.0, 3.3):
        k = disk_kernel(radius).numpy()
        expected = np.stack([ndimage.convolve(c, k, mode="mirror") for c in img.numpy()])
        torch.testing.assert_close(defocus(img, radius), torch.from_numpy(expected), atol=1e-6, rtol=0)
    flat = torch.full((3, 20, 20), 0.3)
    torch.testing.assert_close(defocus(flat, 4.0), flat)


def test_blurred_samples_are_smooth_targets_with_the_same_noise_level(tmp_path):
    sharp, always = _data(tmp_path), _data(tmp_path, blur_probability=1.0, blur_radius=[3, 3])
    off = _data(tmp_path, blur_probability=0.0)
    for it in range(4):
        lq_s, gt_s = sharp.training_sample(it, 0, 32)
        lq_o, gt_o = off.training_sample(it, 0, 32)
        assert torch.equal(lq_s, lq_o) and torch.equal(gt_s, gt_o)  # probability 0: the samples are unchanged
        lq_b, gt_b = always.training_sample(it, 0, 32)
        grad = lambda t: (t[:, 1:] - t[:, :-1]).abs().mean().item()  # noqa: E731
        assert grad(gt_b) < 0.3 * grad(gt_s)  # random-pixel photos blurred by a radius-3 disk
        assert (lq_b - gt_b).std().item() == pytest.approx(25 / 255, rel=0.1)  # noise added after the blur
    # a share of them blurred, chosen per sample
    some = _data(tmp_path, blur_probability=0.5)
    blurred = [(lambda g: (g[:, 1:] - g[:, :-1]).abs().mean().item())(some.training_sample(it, 0, 32)[1]) < 0.2
               for it in range(40)]
    assert 8 < sum(blurred) < 32


def test_validation_samples_are_never_blurred(tmp_path):
    spec = {"name": "denoising-color-dataset", "args": {"gt_dir": str(_photos(tmp_path / "gt")),
                                                         "sigma_range": 25, "blur_probability": 1.0}}
    plain = {"name": "denoising-color-dataset", "args": {"gt_dir": str(tmp_path / "gt"), "sigma_range": 25}}
    a = RestorationData(spec, train=False).validation_sample(0, 32)
    b = RestorationData(plain, train=False).validation_sample(0, 32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("args, message", [
    ({"blur_probability": 1.5}, "blur_probability must be a number in"),
    ({"blur_probability": "often"}, "blur_probability must be a number in"),
    ({"blur_radius": [4, 2]}, "blur_radius must be"),
    ({"blur_radius": [0, 2]}, "blur_radius must be"),
    ({"blur_radius": 3}, "blur_radius must be"),
])
def test_bad_blur_options_are_one_line_errors(tmp_path, args, message):
    with pytest.raises(DataError, match=message):
        _data(tmp_path, **args)


def test_blur_options_are_refused_for_other_dataset_kinds(tmp_path):
    spec = {"name": "degraded-dataset", "args": {"gt_dir": str(_photos(tmp_path / "gt")),
                                                 "degradation": {"type": "jpeg", "quality": 40},
                                                 "blur_probability": 0.5}}
    with pytest.raises(DataError, match="are for denoising-color-dataset"):
        RestorationData(spec)
