"""torch.compile traces the models through the scan operator without graph breaks, and agrees with eager."""

import pytest
import torch

import ssmir.models as M

torch_dynamo = pytest.importorskip("torch._dynamo")

CFG = {"scan_type": "diagonal", "scan_count": 4, "scan_merge_method": "concate", "d_state": 4, "d_conv": 3,
       "expand": 1, "conv_2d": True}


def small_models():
    return {
        "eamambasr": M.create("eamambasr", dim=8, num_blocks=[1], upscale=2, ffn_expansion_factor=1, mamba_cfg=CFG),
        "mambairv2light": M.create("mambairv2light", embed_dim=12, d_state=4, depths=[1], num_heads=[2],
                                   window_size=4, inner_rank=4, num_tokens=4, mlp_ratio=1.0, upscale=2,
                                   upsampler="pixelshuffledirect"),
    }


@pytest.mark.skipif(not hasattr(torch.library, "custom_op"), reason="torch.library.custom_op needs torch >= 2.4")
@pytest.mark.parametrize("name", ["eamambasr", "mambairv2light"])
def test_no_graph_break_and_compiled_forward_and_backward_match_eager(name):
    torch.manual_seed(0)
    model = small_models()[name]
    model.train(name != "mambairv2light")  # MambaIRv2 samples routes in training: compare in eval
    x = torch.rand(1, 3, 8, 8)
    torch_dynamo.reset()
    explain = torch_dynamo.explain(model)(x)
    assert explain.graph_break_count == 0, [str(r.reason)[:200] for r in explain.break_reasons]
    compiled = torch.compile(model, backend="aot_eager")  # traces the operator's fake and autograd; no C++ build
    y_eager = model(x)
    y_eager.square().mean().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    y = compiled(x)
    y.square().mean().backward()
    torch.testing.assert_close(y, y_eager, rtol=1e-5, atol=1e-6)
    for got, want in zip([p.grad for p in model.parameters() if p.grad is not None], grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
