"""ONNX export: every architecture's small config exported, checked and run by ONNX Runtime against PyTorch."""

import pytest
import torch

import ssmir.models as M

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from ssmir.deploy.onnx import TOLERANCE, ExportError, export_onnx  # noqa: E402

CFG = {"scan_type": "diagonal", "scan_count": 4, "scan_merge_method": "concate", "d_state": 4, "d_conv": 3,
       "expand": 1, "conv_2d": True}
V2 = dict(embed_dim=12, d_state=4, depths=[1], num_heads=[2], window_size=4, inner_rank=4, num_tokens=4, mlp_ratio=1.0)

MODELS = {
    "eamamba": (lambda: M.create("eamamba", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                                 mamba_cfg=dict(CFG, scan_type="hilbert")), (16, 24)),
    "eamambasr": (lambda: M.create("eamambasr", dim=8, num_blocks=[1], upscale=2, ffn_expansion_factor=1,
                                   mamba_cfg=CFG), (12, 20)),
    "mambair": (lambda: M.create("mambair", upscale=2, upsampler="pixelshuffle", embed_dim=30, d_state=4, depths=[1],
                                 mlp_ratio=1.2), (12, 10)),
    "mambairv2": (lambda: M.create("mambairv2", upscale=1, upsampler="", **V2), (12, 16)),
    "mambairv2light": (lambda: M.create("mambairv2light", upscale=2, upsampler="pixelshuffledirect", **V2), (8, 12)),
    "emambair": (lambda: M.create("emambair", wf=8, depth=2, num_heads=[1, 2]), (32, 32)),
}


def run_both(model, path, h, w, seed):
    """ONNX Runtime and PyTorch on fresh random inputs; the error as export_onnx defines it."""
    g = torch.Generator().manual_seed(seed)
    channels = getattr(model, "input_channels", (3,))
    inputs = [torch.rand(1, channels[0], h, w, generator=g)] + [torch.randn(1, c, h, w, generator=g)
                                                                 for c in channels[1:]]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    out = torch.from_numpy(session.run(None, feed)[0])
    with torch.no_grad():
        ref = model(*inputs)
    scale = (ref - inputs[0]).abs().max() if ref.shape == inputs[0].shape else ref.abs().max()
    assert out.shape == ref.shape
    return ((out - ref).abs().max() / scale).item()


@pytest.mark.parametrize("name", [pytest.param("eamamba", marks=pytest.mark.slow), "eamambasr", "mambair",
                                  "mambairv2", "mambairv2light", "emambair"])
def test_fixed_size_export_runs_in_onnxruntime_with_the_pytorch_result(name, tmp_path):
    build, (h, w) = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    report = export_onnx(model, tmp_path / f"{name}.onnx", h, w)
    onnx.checker.check_model(str(report.path))
    ops = {node.op_type for node in onnx.load(str(report.path)).graph.node}
    assert "Scan" in ops and all(o.domain in ("", "ai.onnx") for o in onnx.load(str(report.path)).opset_import)
    assert report.max_error <= TOLERANCE
    assert run_both(model, report.path, h, w, seed=7) <= TOLERANCE  # inputs the export never saw
    assert [i[0] for i in report.inputs] == ["image", "events"][: len(model.input_channels)]


@pytest.mark.parametrize("name", ["mambair", "mambairv2light", pytest.param("emambair", marks=pytest.mark.slow)])
def test_dynamic_export_is_one_graph_for_other_sizes(name, tmp_path):
    build, (h, w) = MODELS[name]
    model = build().eval()
    report = export_onnx(model, tmp_path / f"{name}.onnx", h, w, dynamic=True)
    assert report.inputs[0][1][2:] == ["height", "width"]
    for hh, ww in ((h + 16, w + 8), (h + 8, w + 24)):
        assert run_both(model, report.path, hh, ww, seed=hh) <= TOLERANCE


def test_size_and_dynamic_limits_are_clear_errors(tmp_path):
    unet = MODELS["eamamba"][0]()
    with pytest.raises(ExportError, match="multiples of 8.*--size 16x24"):
        export_onnx(unet, tmp_path / "x.onnx", 13, 20)
    with pytest.raises(ExportError, match="cannot be exported for every size"):
        export_onnx(unet, tmp_path / "x.onnx", 16, 24, dynamic=True)
    assert not (tmp_path / "x.onnx").exists()


def test_cli_reports_file_size_opset_inputs_and_outputs(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from ssmir.cli import app

    config = tmp_path / "sr.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "eamambasr", "args": dict(
        dim=8, num_blocks=[1], upscale=2, ffn_expansion_factor=1, mamba_cfg=CFG)}}))
    out = tmp_path / "sr.onnx"
    result = CliRunner().invoke(app, ["export", "onnx", "--config", str(config), "--size", "8x8", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "MiB, opset" in result.output and "image [1, 3, 8, 8]" in result.output
    assert "output [1, 3, 16, 16]" in result.output and out.is_file()
    bad = CliRunner().invoke(app, ["export", "onnx", "--config", str(config), "--size", "8x8", "-o",
                                   str(tmp_path / "sr.bin")])
    assert bad.exit_code == 2 and "expected a .onnx" in bad.output
