import json
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():
    # the Triton kernels are tested on CPU through Triton's interpreter, which must be chosen before anything
    # (torch.compile's tests, for one) imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

GOLDEN = Path(os.environ.get("SSMIR_GOLDEN", Path(__file__).resolve().parents[2] / "shared" / "golden"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def golden_dir(family: str) -> Path:
    path = GOLDEN / family
    if not path.is_dir():
        pytest.skip(f"golden cases not found at {path} (set SSMIR_GOLDEN)")
    return path


def golden_cases(family: str) -> list[Path]:
    """The family's golden .pt files, or none when the folder is absent (their tests then do not run)."""
    path = GOLDEN / family
    return sorted(path.glob("*.pt")) if path.is_dir() else []


def released_configs(family: str) -> dict:
    """``full_configs.json`` of a family: config name -> {name, args, params}; empty when absent."""
    path = GOLDEN / family / "full_configs.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def check_golden(path: Path) -> None:
    """Build the case's model from its official args and weights; its eval output must match the official one.

    The tolerance is the golden README's: max abs error <= 1e-4 * max|output - input| (or * max|output|
    when the shapes differ).
    """
    import ssmir.models as M

    g = torch.load(path, weights_only=False)
    model = M.create(g["name"], **g["args"])
    model.load_state_dict(g["state_dict"], strict=True)
    model.eval()
    inputs = (g["input"], g["event"]) if "event" in g else (g["input"],)
    with torch.no_grad():
        out = model(*inputs)
    ref = g["output"]
    scale = (ref - g["input"]).abs().max() if ref.shape == g["input"].shape else ref.abs().max()
    assert out.shape == ref.shape
    err = (out - ref).abs().max()
    assert err <= 1e-4 * scale, f"{path.name}: max error {err:.3g} > {1e-4 * scale:.3g}"
