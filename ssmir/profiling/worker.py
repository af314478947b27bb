"""Child process of ``ssmir.profiling.measure``: read a job as JSON on stdin, print a Timing as JSON."""

from __future__ import annotations

import json
import sys

import torch


def main() -> None:
    job = json.loads(sys.stdin.read())
    from ssmir.runtime import apply_from_environment

    apply_from_environment()  # as the ssmir command that started this process
    from ssmir.models.loading import load_model
    from ssmir.models.registry import create
    from ssmir.profiling.flops import example_inputs
    from ssmir.profiling.measure import time_forward

    spec = job["spec"]
    if "weights" in spec:
        model = load_model(spec["weights"], name=spec.get("name"), args=spec.get("args"),
                           trust_pickle=spec.get("trust", False))
    else:
        model = create(spec["name"], **spec["args"])
    device = torch.device(job["device"])
    model = model.eval().to(device)
    inputs = example_inputs(model, job["h"], job["w"], device=device)
    t = time_forward(model, inputs, repeat=job["repeat"])
    print(json.dumps({"latency_ms": t.latency_ms, "peak_memory_bytes": t.peak_memory_bytes}))


if __name__ == "__main__":
    main()
