"""ssmir: image restoration with visual state-space (Mamba-family) models."""

__version__ = "0.1.0"


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
