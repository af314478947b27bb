import os
from pathlib import Path

import pytest
import torch

GOLDEN = Path(os.environ.get("SSMIR_GOLDEN", Path(__file__).resolve().parents[2] / "shared" / "golden"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def golden_dir(family: str) -> Path:
    path = GOLDEN / family
    if not path.is_dir():
        pytest.skip(f"golden cases not found at {path} (set SSMIR_GOLDEN)")
    return path
