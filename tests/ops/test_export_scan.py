"""The exportable scan and the traced order/mask helpers against their eager twins."""

import pytest
import torch

from ssmir.ops import selective_scan_reference
from ssmir.ops.export_scan import CHUNK, selective_scan_export
from tests.ops.test_selective_scan import make_inputs


@pytest.mark.parametrize("length", [1, CHUNK - 1, CHUNK, 2 * CHUNK + 5])
@pytest.mark.parametrize("grouped,with_z", [(True, True), (False, False)])
def test_chunked_scan_equals_the_sequential_reference(length, grouped, with_z):
    u, delta, A, B, C, D, z, bias = make_inputs(2, 6, 3, length, 3 if grouped else 1, with_z=with_z,
                                                grouped=grouped)
    got = selective_scan_export(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    want = selective_scan_reference(u, delta, A, B, C, D, z, bias, True, return_last_state=True)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_traced_four_way_orders_and_window_mask_equal_the_cached_ones():
    from ssmir.layers.window_attention import shifted_window_mask, shifted_window_mask_traced
    from ssmir.ops.scan_orders import four_way_orders, four_way_orders_traced

    for h, w in ((8, 12), (8, 8), (12, 4)):
        assert torch.equal(four_way_orders_traced(h, w), four_way_orders(h, w))
        assert torch.equal(shifted_window_mask_traced(h, w, 4), shifted_window_mask(h, w, 4))
