"""PSNR/SSIM against scikit-image on the same arrays, and against values known by construction."""

import math

import numpy as np
import pytest
import torch

from ssmir.eval.metrics import psnr, rgb_to_y, ssim

skm = pytest.importorskip("skimage.metrics")


def _pair(seed=0, shape=(3, 48, 40)):
    rng = np.random.default_rng(seed)
    gt = rng.random(shape)
    pred = np.clip(gt + rng.normal(0, 0.05, shape), 0, 1)
    return torch.from_numpy(pred), torch.from_numpy(gt)


def test_psnr_matches_scikit_image_and_a_constructed_value():
    pred, gt = _pair()
    want = skm.peak_signal_noise_ratio(gt.numpy(), pred.numpy(), data_range=1.0)
    assert psnr(pred, gt) == pytest.approx(want, abs=1e-10)
    gt = torch.zeros(1, 8, 8)
    assert psnr(gt + 0.1, gt) == pytest.approx(20.0)  # MSE 0.01 -> 20 dB
    assert psnr(gt, gt) == math.inf


def test_ssim_without_extra_crop_matches_scikit_image():
    pred, gt = _pair(1)
    want = skm.structural_similarity(gt.numpy() * 255, pred.numpy() * 255, channel_axis=0, gaussian_weights=True,
                                     sigma=1.5, use_sample_covariance=False, data_range=255)
    assert ssim(pred, gt, window_crop=0) == pytest.approx(want, abs=1e-8)


def test_official_ssim_is_the_scikit_image_map_cropped_ten_pixels():
    pred, gt = _pair(2)
    maps = [skm.structural_similarity(gt[c].numpy() * 255, pred[c].numpy() * 255, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False, data_range=255, full=True)[1] for c in range(3)]
    want = np.mean([m[10:-10, 10:-10].mean() for m in maps])
    assert ssim(pred, gt) == pytest.approx(want, abs=1e-8)
    assert ssim(gt, gt) == pytest.approx(1.0)


def test_y_channel_and_border_crop():
    pred, gt = _pair(3)
    y_pred = 16 / 255 + (65.481 * pred[0] + 128.553 * pred[1] + 24.966 * pred[2]) / 255
    y_gt = 16 / 255 + (65.481 * gt[0] + 128.553 * gt[1] + 24.966 * gt[2]) / 255
    want = skm.peak_signal_noise_ratio(y_gt[4:-4, 4:-4].numpy(), y_pred[4:-4, 4:-4].numpy(), data_range=1.0)
    assert psnr(pred, gt, crop=4, y_only=True) == pytest.approx(want, abs=1e-10)
    assert torch.allclose(rgb_to_y(torch.ones(1, 3, 1, 1)), torch.tensor(235 / 255, dtype=torch.float32))


def test_bad_inputs():
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))
    with pytest.raises(ValueError, match="too small"):
        ssim(torch.zeros(3, 12, 12), torch.zeros(3, 12, 12))
