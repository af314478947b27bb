"""Tiled inference equals whole-image inference where it must; ensembles undo their transforms."""

import pytest
import torch
from torch import nn

from ssmir.eval.tiling import self_ensemble, tile_boxes, tiled_forward


def local_net(radius_convs=2):
    net = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(radius_convs)]).eval()
    return net


def test_tiles_cover_the_image():
    covered = torch.zeros(70, 53)
    for a, b, th, tw in tile_boxes(70, 53, 32, 8):
        covered[a:a + th, b:b + tw] += 1
    assert (covered >= 1).all()


@pytest.mark.parametrize("tile,overlap,tile_batch", [(32, 8, 1), (24, 12, 3), (40, 16, 2)])
def test_tiled_equals_whole_image_for_a_local_model(tile, overlap, tile_batch):
    # receptive field radius 2 (two 3x3 convs) <= overlap / 2: every pixel the blend uses is exact
    net = local_net()
    x = torch.rand(2, 3, 70, 53)
    with torch.no_grad():
        whole = net(x)
    tiled = tiled_forward(net, x, tile=tile, overlap=overlap, tile_batch=tile_batch)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-5)


def test_tiled_sr_and_extra_inputs():
    def fn(x, ev):
        return torch.nn.functional.interpolate(x + ev[:, :1], scale_factor=2, mode="nearest")

    x, ev = torch.rand(1, 3, 50, 41), torch.rand(1, 2, 50, 41)
    torch.testing.assert_close(tiled_forward(fn, x, ev, tile=16, overlap=4, scale=2), fn(x, ev))


def test_overlap_must_be_smaller_than_tile():
    with pytest.raises(ValueError, match="overlap"):
        tiled_forward(local_net(), torch.rand(1, 3, 64, 64), tile=16, overlap=16)


@pytest.mark.parametrize("mode", [1, 4, 8])
def test_self_ensemble_of_an_equivariant_function_is_the_function(mode):
    x = torch.rand(1, 3, 12, 12)
    torch.testing.assert_close(self_ensemble(lambda v: v * 2 + 1, x, mode=mode), x * 2 + 1)


def test_self_ensemble_averages_over_the_transforms():
    # a function that is not flip-equivariant: adds a horizontal ramp; the x4 ensemble averages ramp and mirror
    ramp = torch.linspace(0, 1, 8).view(1, 1, 1, 8)
    out = self_ensemble(lambda v: v + ramp, torch.zeros(1, 1, 8, 8), mode=4)
    torch.testing.assert_close(out, (ramp + ramp.flip(-1)).expand(1, 1, 8, 8) / 2)
    with pytest.raises(ValueError, match="1, 4 or 8"):
        self_ensemble(lambda v: v, torch.zeros(1, 1, 4, 4), mode=2)


# crop 40 recurses (the official recursion passes scale 1, so it is for same-size outputs)
@pytest.mark.parametrize("size,crop,scale", [((40, 56), 2048, 1), ((72, 48), 2048, 1), ((40, 56), 2048, 2),
                                             ((72, 48), 2048, 3), ((72, 88), 40, 1)])
def test_quadrant_split_of_a_pointwise_function_is_the_function(size, crop, scale):
    # a pointwise function gives the same value whichever quadrant computes a pixel: the quadrant
    # geometry (cut points, overlaps, the corner each output takes) must rebuild the whole image
    from ssmir.eval.tiling import quadrant_forward

    x = torch.rand(1, 2, *size)

    def fn(t):
        return torch.nn.functional.interpolate(t * 2 - 0.5, scale_factor=scale, mode="nearest")

    torch.testing.assert_close(quadrant_forward(fn, x, crop_size=crop, scale=scale), fn(x))


def test_quadrant_split_runs_each_quadrant_separately():
    from ssmir.eval.tiling import quadrant_forward

    calls = []

    def fn(t):
        calls.append(tuple(t.shape[-2:]))
        return t - t.mean()  # depends on the whole chop: the result differs from fn(x)

    x = torch.rand(1, 1, 40, 56)
    out = quadrant_forward(fn, x, crop_size=2048)
    # cut points as the official forward_patch: h//2 + 16 - (h//2 % 8) rows on top, the same from the bottom
    assert calls == [(32, 40)] * 4  # 40 rows: 20 + 16 - 20 % 8 = 32; 56 columns: 28 + 16 - 4 = 40
    assert out.shape == x.shape and not torch.allclose(out, fn(x))
