"""ONNX export of ssmir's models, in standard operators only, checked against PyTorch with ONNX Runtime.

The model's forward is exported as it is (``model(image)``, or ``model(frame, events)`` for EmambaIR) with
``torch.onnx.export``'s dynamo exporter. While it traces, the selective scan takes its exportable form
(``ssmir.ops.export_scan``: an ONNX ``Scan`` over chunks, log-depth doubling within a chunk), the scan orders
become gathers with constant indices, MambaIRv2's window attention is written out (MatMul/Softmax) and its
routing is an argmax and a sort of distinct keys (TopK). The file is checked with ``onnx.checker``, run with
ONNX Runtime's CPU provider on random inputs and compared with the PyTorch forward; an export that does not
match is an error, not a file.

Needs the ``deploy`` extra: ``pip install 'ssmir[deploy]'`` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ssmir.data.io import atomic_write
from ssmir.eval.inference import min_size, size_multiple

TOLERANCE = 1e-4  # of max|output - input| (or of max|output| when the shapes differ)


class ExportError(RuntimeError):
    """An export that cannot be made or does not reproduce the PyTorch model."""


@dataclass
class ExportReport:
    path: Path
    size_bytes: int
    opset: int
    inputs: list[tuple[str, list, str]]  # name, shape (ints or dimension names), element type
    outputs: list[tuple[str, list, str]]
    max_error: float  # max |onnxruntime - pytorch| / scale
    seconds: float  # export time
    dynamic: bool
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        def io_line(items):
            return ", ".join(f"{n} {list(s)} {t}" for n, s, t in items)

        return (f"{self.path}: {self.size_bytes / 2**20:.1f} MiB, opset {self.opset}, "
                f"{'dynamic' if self.dynamic else 'fixed'} size\n"
                f"  inputs:  {io_line(self.inputs)}\n  outputs: {io_line(self.outputs)}\n"
                f"  ONNX Runtime vs PyTorch: max error {self.max_error:.2e} of the output range "
                f"(tolerance {TOLERANCE:g}); exported in {self.seconds:.0f} s")


def _require():
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ExportError(f"ONNX export needs the deploy extra: pip install 'ssmir[deploy]' ({e})") from None


def example_inputs(model: nn.Module, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the model's channels at ``height`` x ``width`` (frame and event voxels for EmambaIR)."""
    channels = getattr(model, "input_channels", (3,))
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, channels[0], height, width, generator=g)
    return (image,) + tuple(torch.randn(1, c, height, width, generator=g) for c in channels[1:])


def check_size(model: nn.Module, height: int, width: int) -> None:
    """The exported forward is the model's own: its size constraints apply (a clear error, with a size that works)."""
    m, lo = size_multiple(model), min_size(model)
    if height % m or width % m or height < lo or width < lo:
        def fit(v):
            return max(lo, -(-v // m) * m)

        raise ExportError(f"--size {height}x{width}: {type(model).__name__} takes multiples of {m} of at least {lo} "
                          f"pixels; for example --size {fit(height)}x{fit(width)} (pad inputs to it at run time)")


def _names(model: nn.Module) -> list[str]:
    return ["image", "events"][: len(getattr(model, "input_channels", (3,)))]


def _verify(session, inputs, reference, scale, where: str) -> float:
    """Max |ONNX Runtime - PyTorch| / scale on ``inputs``; an ExportError beyond ``TOLERANCE``."""
    feed = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs, strict=True)}
    try:
        out = torch.from_numpy(session.run(None, feed)[0])
    except Exception as e:
        raise ExportError(f"ONNX Runtime cannot run the exported graph{where} ({str(e).splitlines()[0][:200]}); "
                          "nothing written") from None
    if out.shape != reference.shape:
        raise ExportError(f"the exported graph gives {tuple(out.shape)}{where}, the model {tuple(reference.shape)}; "
                          "nothing written")
    error = ((out - reference).abs().max() / scale.clamp_min(1e-12)).item()
    if not error <= TOLERANCE:
        raise ExportError(f"the exported graph does not reproduce the model{where}: max error {error:.2e} of the "
                          f"output range (tolerance {TOLERANCE:g}); nothing written")
    return error


def export_onnx(model: nn.Module, path: str | os.PathLike, height: int, width: int, opset: int | None = None,
                dynamic: bool = False, threads: int | None = None) -> ExportReport:
    """Export ``model`` (eval) for ``height`` x ``width`` inputs to ``path``, check and verify it; atomic.

    ``dynamic`` marks height and width as dimensions of the graph (one file for any size the model takes);
    where the exporter cannot keep them symbolic (scan orders computed from the size), a clear error.
    The file is written only if ONNX Runtime reproduces the PyTorch forward within ``TOLERANCE``.
    """
    _require()
    import onnx
    import onnxruntime as ort

    path = Path(path)
    model = model.eval()
    check_size(model, height, width)
    if dynamic and getattr(model, "onnx_fixed_size", None):
        raise ExportError(f"--dynamic: {type(model).__name__} cannot be exported for every size "
                          f"({model.onnx_fixed_size}); export it at the size you need")
    inputs = example_inputs(model, height, width)
    names = _names(model)
    dynamic_shapes = None
    if dynamic:
        dims = {2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
        dynamic_shapes = tuple(dims for _ in inputs)
    with torch.no_grad():
        reference = model(*inputs).float()
    scale = (reference - inputs[0]).abs().max() if reference.shape == inputs[0].shape else reference.abs().max()
    result = {}

    def write(tmp):
        start = time.perf_counter()
        log = io.StringIO()
        try:
            with contextlib.redirect_stdout(log):
                torch.onnx.export(model, inputs, tmp, input_names=names, output_names=["output"],
                                  opset_version=opset, dynamo=True, external_data=False,
                                  dynamic_shapes=dynamic_shapes)
        except Exception as e:  # the exporter's messages are long: keep the first line of the cause
            what = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ExportError(f"{type(model).__name__} could not be exported{' with --dynamic' if dynamic else ''} "
                              f"({what})") from e
        result["seconds"] = time.perf_counter() - start
        onnx.checker.check_model(str(tmp))
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
        result["error"] = _verify(session, inputs, reference, scale, "")
        if dynamic:  # a dynamic graph must also reproduce the model at another size
            m = max(size_multiple(model), 8)
            other = example_inputs(model, height + 2 * m, width + m, seed=1)
            with torch.no_grad():
                ref = model(*other).float()
            sc = (ref - other[0]).abs().max() if ref.shape == other[0].shape else ref.abs().max()
            where = f" at {height + 2 * m}x{width + m}"
            result["error"] = max(result["error"], _verify(session, other, ref, sc, where))

    atomic_write(path, write)
    proto = onnx.load(str(path), load_external_data=False)

    def info(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            shape = [d.dim_param or d.dim_value for d in t.shape.dim]
            out.append((v.name, shape, onnx.TensorProto.DataType.Name(t.elem_type).lower()))
        return out

    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ExportReport(path, path.stat().st_size, opset_used, info(proto.graph.input), info(proto.graph.output),
                        result["error"], result["seconds"], dynamic)
