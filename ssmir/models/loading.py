"""Load and save model weights: official EAMamba checkpoints, plain state_dicts, ssmir safetensors.

Loading never runs code from the file: ``.safetensors`` files hold tensors only, and ``.pth``
files are read with ``torch.load(weights_only=True)``. An official file that needs full unpickling
is refused unless the caller passes ``trust_pickle=True`` (CLI: ``--trust-checkpoint``), which
should only be done for files from a trusted source.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import torch
from torch import nn

from ssmir.data.io import atomic_write
from ssmir.models.registry import create, detect, get
from ssmir.models.registry import list as list_architectures


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the architecture."""


# ssmir's .safetensors carry the architecture twice: in the file's metadata, and as this uint8 tensor of JSON,
# so that tools that read the tensors only (spandrel, hence chaiNNer and ComfyUI) can rebuild the model too
CONFIG_TENSOR = "__ssmir_config__"


def config_to_tensor(spec: dict) -> torch.Tensor:
    """``{"name", "args"}`` as a uint8 tensor of its JSON text."""
    return torch.tensor(list(json.dumps({"name": spec["name"], "args": spec["args"]}).encode()), dtype=torch.uint8)


def config_from_tensor(tensor: torch.Tensor) -> dict:
    """The ``{"name", "args"}`` written by ``config_to_tensor``."""
    spec = json.loads(bytes(tensor.to(torch.uint8).tolist()).decode())
    return {"name": spec["name"], "args": spec.get("args") or {}}


def read_pth(path: Path, trust_pickle: bool) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as e:  # corrupt, truncated, or a pickle that weights_only refuses
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ""
        if not trust_pickle and "weights_only" in str(e):
            hint = (" (it needs full unpickling: pass trust_pickle=True / --trust-checkpoint"
                    " only if you trust its source)")
        raise CheckpointError(f"{path}: cannot read checkpoint: {msg}{hint}") from None


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:
        raise CheckpointError(f"{path}: cannot read safetensors file: {e}") from None
    return sd, meta


def _sidecar_config(path: Path) -> dict | None:
    for suffix in (".json", ".yaml", ".yml"):
        side = path.with_suffix(suffix)
        if side.is_file():
            text = side.read_text()
            if suffix == ".json":
                return json.loads(text)
            import yaml

            return yaml.safe_load(text)
    return None


def _strip_prefix(sd: dict, prefix: str) -> dict:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def read_checkpoint(path: str | os.PathLike, ema: bool = True, trust_pickle: bool = False) -> tuple[dict, dict | None]:
    """Return ``(state_dict, {"name", "args"} or None)`` from any supported checkpoint file.

    Understood layouts: official EAMamba (``{"model": {"name", "args", "sd", "sd_e"}, ...}``; the EMA
    weights ``sd_e`` unless ``ema=False``), BasicSR (``params_ema`` / ``params``), ``{"state_dict": ...}``,
    a bare state_dict, and ssmir's safetensors (name and args in its metadata or a sidecar .json/.yaml).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        sd, meta = _read_safetensors(path)
        embedded = sd.pop(CONFIG_TENSOR, None)
        spec = None
        if "ssmir_name" in meta:
            spec = {"name": meta["ssmir_name"], "args": json.loads(meta.get("ssmir_args", "{}"))}
        elif embedded is not None:
            spec = config_from_tensor(embedded)
        spec = spec or _sidecar_config(path)
        return sd, spec
    obj = read_pth(path, trust_pickle)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    spec = None
    if isinstance(obj.get("model"), dict) and ("sd" in obj["model"] or "sd_e" in obj["model"]):
        m = obj["model"]
        key = "sd_e" if ema and m.get("sd_e") is not None else "sd"
        sd = m[key]
        spec = {"name": m.get("name"), "args": m.get("args") or {}} if m.get("name") else None
    elif "params_ema" in obj or "params" in obj:
        sd = obj["params_ema"] if ema and "params_ema" in obj else obj.get("params", obj.get("params_ema"))
    elif isinstance(obj.get("state_dict"), dict):
        sd = obj["state_dict"]
    else:
        sd = obj
    if not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: no state_dict of tensors found (top-level keys: {sorted(obj)[:8]})")
    sd = _strip_prefix(_strip_prefix(sd, "module."), "_orig_mod.")
    return sd, spec


def load_state_dict_strict(model: nn.Module, sd: dict, source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with an error that names the missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        name = getattr(model, "registry_name", type(model).__name__)

        def few(items):
            return ", ".join(items[:5]) + (f" ... (+{len(items) - 5})" if len(items) > 5 else "")

        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s): {few(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} key(s): {few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {few(shapes)}")
        raise CheckpointError(f"{source} does not fit architecture {name!r}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def load_model(path: str | os.PathLike, name: str | None = None, args: dict | None = None, ema: bool = True,
               trust_pickle: bool = False) -> nn.Module:
    """Build the architecture a checkpoint describes and load its weights (eval mode, CPU).

    ``name`` is an architecture (``ssmir.models.list()``) or a zoo entry (``ssmir models``), which also
    supplies the args. ``name``/``args`` are needed only for files that do not say what they are and whose
    keys do not tell (MambaIRv2 state_dicts are recognised); for a file that names its architecture
    they must agree with it.
    """
    sd, spec = read_checkpoint(path, ema=ema, trust_pickle=trust_pickle)
    if name is not None and name not in list_architectures():
        from ssmir.models.zoo import get_entry

        entry = get_entry(name)  # a zoo entry names the architecture and its args
        name, args = entry.arch, (args if args is not None else copy.deepcopy(entry.args))
    if spec is None and args is None:
        found = detect(sd)
        if found is not None and (name is None or name == found[0]):
            spec = {"name": found[0], "args": found[1]}
    if spec is None:
        if name is None:
            raise CheckpointError(f"{path}: the file does not name its architecture; pass name= and args= "
                                  f"(CLI: --arch NAME --config FILE.yaml)")
        spec = {"name": name, "args": args or {}}
    elif name is not None and name != spec["name"]:
        raise CheckpointError(f"{path}: holds a {spec['name']!r} model, not {name!r}")
    if args is not None:
        spec = {"name": spec["name"], "args": args}
    get(spec["name"])  # unknown names raise a clear error here
    model = create(spec["name"], **spec["args"])
    load_state_dict_strict(model, sd, source=str(path))
    return model.eval()


def save_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """Write weights as safetensors with the architecture in its metadata (and in ``CONFIG_TENSOR``); atomic
    (temp file, then rename)."""
    from safetensors.torch import save_file

    cfg = getattr(model, "ssmir_config", None)
    if cfg is None:
        raise ValueError("save_model: the model was not built by ssmir.models.create, so its args are unknown")
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    sd[CONFIG_TENSOR] = config_to_tensor(cfg)
    meta = {"ssmir_name": cfg["name"], "ssmir_args": json.dumps(cfg["args"]), "format": "pt"}
    return atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
