"""ssmir: image restoration with visual state-space (Mamba-family) models."""

import os as _os

__version__ = "0.1.0"

# PyTorch's CPU allocator backs tensors of 2 MB and more with transparent huge pages when this is set (Linux):
# the scan orders and large feature maps then miss the TLB far less (EAMamba at 256x256: 1.2-1.3x faster on
# the 2-core benchmark machine, docs/benchmarks.md). It is read at the process's first large allocation, so
# it takes effect when ssmir is imported before any; set THP_MEM_ALLOC_ENABLE=0 to keep PyTorch's default.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def __getattr__(name):  # lazy, so that `import ssmir` stays cheap
    if name in ("load_model", "save_model", "read_checkpoint", "CheckpointError"):
        from ssmir.models import loading

        return getattr(loading, name)
    if name == "restore":
        from ssmir.restoration import restore

        return restore
    if name == "run_model":
        from ssmir.eval.inference import run_model

        return run_model
    if name == "models":
        import importlib

        return importlib.import_module("ssmir.models")
    raise AttributeError(f"module 'ssmir' has no attribute {name!r}")
