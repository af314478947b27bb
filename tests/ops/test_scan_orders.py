"""Scan orders: permutations, inverses, known small cases, the Hilbert curve against a library."""

import numpy as np
import pytest
import torch

from ssmir.ops import scan_orders as so

SIZES = [(1, 1), (1, 7), (5, 1), (4, 4), (5, 7), (8, 3), (9, 13), (16, 16)]
ELEMENTARY = [so.row_major, so.column_major, so.diagonal, so.flipped_diagonal, so.morton, so.zorder, so.zigzag,
              so.hilbert]


@pytest.mark.parametrize("order_fn", ELEMENTARY, ids=lambda f: f.__name__)
@pytest.mark.parametrize("size", SIZES)
def test_scan_order_is_a_permutation_and_its_inverse_restores_input(order_fn, size):
    h, w = size
    for order in (order_fn(h, w), so.reversed_order(order_fn(h, w))):
        assert sorted(order.tolist()) == list(range(h * w))
        x = torch.randn(2, 3, h * w)
        assert torch.equal(x[..., order][..., so.inverse(order)], x)


@pytest.mark.parametrize("scan_type", so.SCAN_TYPES)
@pytest.mark.parametrize("count", so.SCAN_COUNTS)
@pytest.mark.parametrize("size", [(5, 7), (6, 6), (3, 10)])
def test_all_around_orders_are_inverted_by_all_around_inverses(scan_type, count, size):
    orders = so.all_around_orders(scan_type, count, *size)
    inverses = so.all_around_inverses(scan_type, count, *size)
    assert orders.shape == (count, size[0] * size[1])
    x = torch.randn(count, size[0] * size[1])
    scanned = torch.gather(x, 1, orders)
    assert torch.equal(torch.gather(scanned, 1, inverses), x)


def test_all_around_eight_heads_cover_eight_directions():
    orders = so.all_around_orders("diagonal", 8, 4, 5)
    assert len({tuple(o.tolist()) for o in orders}) == 8
    assert torch.equal(orders[4], so.row_major(4, 5))
    assert torch.equal(orders[5], so.row_major(4, 5).flip(0))
    assert torch.equal(orders[6], so.column_major(4, 5))
    assert torch.equal(orders[0], so.diagonal(4, 5))


def test_known_small_orders():
    # 3x3 grid:  0 1 2 / 3 4 5 / 6 7 8
    assert so.column_major(3, 3).tolist() == [0, 3, 6, 1, 4, 7, 2, 5, 8]
    assert so.diagonal(3, 3).tolist() == [0, 1, 3, 2, 4, 6, 5, 7, 8]
    assert so.zigzag(3, 3).tolist() == [0, 3, 1, 2, 4, 6, 7, 5, 8]  # starts downwards, as EAMamba
    assert so.morton(2, 4).tolist() == [0, 1, 4, 5, 2, 3, 6, 7]
    assert so.hilbert(2, 2).tolist() == [0, 1, 3, 2]  # (0,0) (0,1) (1,1) (1,0)


def test_hilbert_matches_numpy_hilbert_curve():
    hilbert = pytest.importorskip("hilbert")
    for h, w in [(4, 4), (5, 7), (8, 3), (16, 16), (9, 13), (32, 20)]:
        side = 1 << (max(h, w) - 1).bit_length()
        coords = np.array([[i, j] for i in range(side) for j in range(side)])
        codes = hilbert.encode(coords, 2, side.bit_length() - 1)
        ordered = coords[np.argsort(codes)]
        keep = (ordered[:, 0] < h) & (ordered[:, 1] < w)
        expected = ordered[keep][:, 0] * w + ordered[keep][:, 1]
        assert so.hilbert(h, w).tolist() == expected.tolist()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="scan_type"):
        so.all_around_orders("spiral", 4, 4, 4)
    with pytest.raises(ValueError, match="scan_count"):
        so.all_around_orders(None, 3, 4, 4)
    with pytest.raises(ValueError, match="positive"):
        so.row_major(0, 4)
