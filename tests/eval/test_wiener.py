"""Collaborative Wiener refinement: against a loop-by-loop reference, its noise estimate, restore's options."""

import math

import numpy as np
import pytest
import torch
from scipy.fft import dctn, idctn
from scipy.linalg import hadamard
from typer.testing import CliRunner

from ssmir.cli import app
from ssmir.eval.metrics import psnr
from ssmir.eval.wiener import _box_sums, _grid, collaborative_wiener, estimate_sigma


def reference_wiener(z, y, sigma, patch, step, search, group):
    """BM3D's Wiener stage written plainly (one grey channel, one reference patch at a time, SciPy's DCT)."""
    h, w = z.shape
    grid = lambda n: sorted(set(range(0, n - patch + 1, step)) | {n - patch})  # noqa: E731
    had = hadamard(group) / math.sqrt(group)
    win = np.outer(np.kaiser(patch, 2.0), np.kaiser(patch, 2.0))
    num, den = np.zeros((h, w)), np.zeros((h, w))
    for i in grid(h):
        for j in grid(w):
            ref = y[i:i + patch, j:j + patch]
            cands = []
            for a in range(max(0, i - search), min(h - patch, i + search) + 1):
                for b in range(max(0, j - search), min(w - patch, j + search) + 1):
                    d = -1.0 if (a, b) == (i, j) else ((y[a:a + patch, b:b + patch] - ref) ** 2).sum()
                    cands.append((d, a, b))
            cands.sort()
            pos = [(a, b) for _, a, b in cands[:group]]
            zs = had @ np.stack([dctn(z[a:a + patch, b:b + patch], norm="ortho") for a, b in pos]).reshape(group, -1)
            ys = had @ np.stack([dctn(y[a:a + patch, b:b + patch], norm="ortho") for a, b in pos]).reshape(group, -1)
            gain = ys ** 2 / (ys ** 2 + sigma ** 2)
            est = (had.T @ (gain * zs)).reshape(group, patch, patch)
            weight = 1 / (sigma ** 2 * (gain ** 2).sum())
            for (a, b), e in zip(pos, est, strict=True):
                num[a:a + patch, b:b + patch] += weight * win * idctn(e, norm="ortho")
                den[a:a + patch, b:b + patch] += weight * win
    return num / den


# (19, 17): a last column off the stride of 3; (20, 22): a last row; (20, 20): both
@pytest.mark.parametrize("shape", [(19, 17), (20, 22), (20, 20)])
def test_matches_the_plain_reference_on_a_grey_image(shape):
    rng = np.random.default_rng(0)
    clean = rng.random(shape)
    z = clean + 0.1 * rng.standard_normal(clean.shape)
    y = clean + 0.03 * rng.standard_normal(clean.shape)  # a pilot: no two patch distances tie
    kw = dict(patch=4, step=3, search=3, group=4)
    ours = collaborative_wiener(torch.from_numpy(z)[None].float(), torch.from_numpy(y)[None].float(), 0.1, **kw)
    ref = reference_wiener(z.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64), 0.1, **kw)
    np.testing.assert_allclose(ours[0].numpy(), ref, atol=1e-5)


@pytest.mark.parametrize(("patch", "step"), [(4, 3), (3, 2), (5, 5), (8, 3)])
def test_box_sums_at_the_reference_corners_match_plain_sums(patch, step):
    x = torch.rand(2, 13, 17, dtype=torch.float64)
    for dim in (1, 2):
        starts = _grid(x.shape[dim], patch, step)
        assert starts[0] == 0 and starts[-1] == x.shape[dim] - patch
        assert max(b - a for a, b in zip(starts[:-1], starts[1:], strict=True)) <= step
        expected = torch.stack([x.narrow(dim, s, patch).sum(dim) for s in starts], dim)
        torch.testing.assert_close(_box_sums(x, patch, step, dim), expected)


def test_refines_a_colour_image_and_estimates_the_noise():
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 72), indexing="ij")
    clean = torch.stack([0.5 + 0.3 * torch.sin(6 * xx), 0.2 + 0.6 * yy, 0.4 + 0.2 * torch.cos(5 * (xx + yy))])
    g = torch.Generator().manual_seed(0)
    noisy = clean + (25 / 255) * torch.randn(clean.shape, generator=g)
    assert estimate_sigma(noisy) == pytest.approx(25 / 255, rel=0.05)
    pilot = (clean + (8 / 255) * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    out = collaborative_wiener(noisy, pilot)  # sigma estimated
    assert out.shape == clean.shape and out.dtype == torch.float32
    assert psnr(out.clamp(0, 1), clean) > psnr(pilot, clean) + 1.0
    assert torch.equal(collaborative_wiener(noisy, pilot, 0.0), pilot)  # no noise: the pilot stands


def test_bad_inputs_are_refused():
    x = torch.rand(3, 16, 16)
    with pytest.raises(ValueError, match="pilot's shape"):
        collaborative_wiener(x, x[:1])
    with pytest.raises(ValueError, match="power of two"):
        collaborative_wiener(x, x, 0.1, group=12)
    with pytest.raises(ValueError, match="smaller than one 8x8 patch"):
        collaborative_wiener(x[:, :5], x[:, :5], 0.1)
    with pytest.raises(ValueError, match="1 or 3 channels"):
        collaborative_wiener(torch.rand(2, 16, 16), torch.rand(2, 16, 16), 0.1)


def test_restore_wiener_options(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    Image.fromarray((rng.random((24, 20, 3)) * 255).astype(np.uint8)).save(tmp_path / "a.png")
    runner = CliRunner()
    r = runner.invoke(app, ["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--sigma", "25"])
    assert r.exit_code != 0 and "--sigma is the noise level of the --wiener refinement" in r.output
    r = runner.invoke(app, ["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--wiener",
                            "--sigma", "300"])
    assert r.exit_code != 0 and "--sigma 300: expected a noise level in [0, 255]" in r.output
    for flag in ([], ["--wiener", "--sigma", "25"]):
        out = tmp_path / ("w" if flag else "plain")
        r = runner.invoke(app, ["restore", str(tmp_path / "a.png"), "-o", str(out), *flag])
        assert r.exit_code == 0, r.output
    plain = np.asarray(Image.open(tmp_path / "plain" / "a.png"))
    refined = np.asarray(Image.open(tmp_path / "w" / "a.png"))
    assert plain.shape == refined.shape and not np.array_equal(plain, refined)
