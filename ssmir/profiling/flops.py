"""FLOP counting in the convention of the papers' tables.

Counter: ``torch.utils.flop_counter.FlopCounterMode`` (PyTorch's maintained counter) for every aten op it
knows (matmul, linear, conv, bmm/einsum, attention), halved to count one per multiply-add as fvcore does
(the EAMamba profiler, and the papers, report fvcore's numbers as "FLOPs"). The selective scan is not an
aten op: each call adds the official profiler's formula 9*B*L*D*N + B*D*L (``ssmir.ops.selective_scan.
scan_flops``). Element-wise ops (norms, activations, softmax) count zero in both counters.

Counting runs the model on the *meta* device: no memory, no arithmetic, any input size.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ssmir.ops.selective_scan import FLOP_RECORDER


@dataclass
class FlopReport:
    """Multiply-adds of one forward pass: ``total``, the part in selective scans, and per module."""

    total: int
    scan: int
    by_module: dict[str, int] = field(default_factory=dict)


def example_inputs(model: nn.Module, h: int, w: int, batch: int = 1, device="cpu") -> tuple[torch.Tensor, ...]:
    """Random inputs of the shapes ``model`` takes (EmambaIR: a frame and its event voxel grid)."""
    channels = getattr(model, "input_channels", (3,))
    return tuple(torch.rand(batch, c, h, w, device=device) for c in channels)


def meta_copy(model: nn.Module) -> nn.Module:
    """The same architecture on the meta device (rebuilt from its args when ssmir built it)."""
    cfg = getattr(model, "ssmir_config", None)
    if cfg is not None:
        from ssmir.models.registry import create

        with torch.device("meta"):
            return create(cfg["name"], **copy.deepcopy(cfg["args"])).eval()
    return copy.deepcopy(model).to("meta").eval()


def count_flops(model: nn.Module, h: int, w: int, batch: int = 1) -> FlopReport:
    """Multiply-adds of ``model`` on a (batch, C, h, w) input, in total, in scans, and per module name."""
    meta = meta_copy(model)
    names = {m: n for n, m in meta.named_modules()}
    stack: list[str] = []
    called: set[str] = set()
    scan_by_module: dict[str, int] = {}

    def record(flops: int):
        for name in stack:
            scan_by_module[name] = scan_by_module.get(name, 0) + flops

    def enter(name):
        def hook(module, args):
            called.add(name)
            stack.append(name)  # returns None: the inputs are left alone

        return hook

    def leave(module, args, output):
        stack.pop()  # returns None: the output is left alone

    hooks = []
    for module, name in names.items():
        hooks.append(module.register_forward_pre_hook(enter(name)))
        hooks.append(module.register_forward_hook(leave))
    counter = FlopCounterMode(display=False, depth=None)
    token = FLOP_RECORDER.set(record)
    try:
        with counter, torch.no_grad():
            meta(*example_inputs(meta, h, w, batch, device="meta"))
    finally:
        FLOP_RECORDER.reset(token)
        for hook in hooks:
            hook.remove()
    aten: dict[str, int] = {}
    root = type(meta).__name__
    for key, ops in counter.get_flop_counts().items():
        if key == "Global":
            continue
        name = "" if key == root else key[len(root) + 1:] if key.startswith(root + ".") else None
        if name is not None:
            aten[name] = sum(ops.values()) // 2  # FlopCounterMode counts 2 per multiply-add
    by_module = {name: aten.get(name, 0) + scan_by_module.get(name, 0) for name in names.values()}
    # containers that are never called themselves (ModuleList) hold what their children did
    for name in sorted(by_module, key=lambda n: -n.count(".")):
        if name and name not in called:
            prefix = name + "."
            by_module[name] = sum(v for k, v in by_module.items()
                                  if k.startswith(prefix) and "." not in k[len(prefix):])
    return FlopReport(total=by_module[""], scan=scan_by_module.get("", 0), by_module=by_module)


def module_table(model: nn.Module, report: FlopReport, depth: int = 2) -> str:
    """Markdown table of parameters and GMACs for the modules up to ``depth`` levels below the root."""
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in model.named_modules()}
    rows = ["| module | parameters | GMACs | share |", "|---|---:|---:|---:|"]
    for name, macs in report.by_module.items():
        level = 0 if name == "" else name.count(".") + 1
        if level > depth or (level and not macs and not params.get(name)):
            continue
        share = 100.0 * macs / report.total if report.total else 0.0
        label = ("  " * level + (name.rsplit(".", 1)[-1] if name else type(model).__name__))
        rows.append(f"| {label} | {params.get(name, 0):,} | {macs / 1e9:.3f} | {share:.1f}% |")
    return "\n".join(rows)
