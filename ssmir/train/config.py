"""The training config: EAMamba's YAML schema (every official config loads unchanged), validated.

Unknown keys and wrong types raise ``ConfigError`` naming the key. ssmir adds a few optional keys:
``seed``, ``loss`` (``l1``, ``charbonnier``, ``mse``, or a weighted list of terms: ``ssmir.train.losses``),
``loss_weight`` (a named loss's factor), ``mixed_precision`` (``no``, ``bf16``, ``fp16``). A BasicSR option
file (a ``network_g`` section) is translated by ``ssmir.train.basicsr.from_options``, which also sets
``loss_weight``, ``warmup_iter`` and ``basicsr`` (BasicSR's validation and checkpoint layout).
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A training config key that is missing, unknown or of the wrong type."""


_NUM = (int, float)
_DATASET = {"dataset": dict, "batch_size": int, "crop_size": int}
SCHEMA = {
    "train_dataset": _DATASET,
    "valid_dataset": _DATASET,
    "model": {"name": str, "args": dict},
    "e_decay": _NUM,
    "progressive_train": {"iters": list, "batch_sizes": list, "crop_sizes": list},
    "optimizer": {"name": str, "args": dict},
    "lr_scheduler": {"name": str, "args": dict},
    "total_iter": int,
    "use_grad_clip": bool,
    "print_freq": int,
    "val_freq": int,
    "val_img_save_freq_mult": int,
    "save_checkpoint_freq": int,
    "save_last_freq": int,
    "resume": (str, type(None)),
    "init_weights": (str, type(None)),
    "seed": int,
    "loss": (str, list),
    "mixed_precision": str,
    "loss_weight": _NUM,
    "warmup_iter": int,
    "basicsr": dict,
}
REQUIRED = ("train_dataset", "model", "optimizer", "lr_scheduler", "total_iter")
DEFAULTS = {"e_decay": 0.999, "use_grad_clip": True, "print_freq": 100, "val_freq": 1000, "val_img_save_freq_mult": 1,
            "save_checkpoint_freq": 10000, "save_last_freq": 100, "resume": None, "init_weights": None, "seed": 0,
            "loss": "l1",
            "mixed_precision": "no", "progressive_train": None, "valid_dataset": None, "loss_weight": 1.0,
            "warmup_iter": -1, "basicsr": None}


def _check(value, spec, key: str):
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected a mapping, got {type(value).__name__}")
        for k, v in value.items():
            if k not in spec:
                raise ConfigError(f"config key {key}.{k!r} is unknown; expected one of {sorted(spec)}")
            _check(v, spec[k], f"{key}.{k}")
        return
    ok = isinstance(value, spec) and not (spec is int and isinstance(value, bool))
    if spec == _NUM and isinstance(value, bool):
        ok = False
    if not ok:
        want = " or ".join(t.__name__ for t in (spec if isinstance(spec, tuple) else (spec,)))
        raise ConfigError(f"config key {key!r}: expected {want}, got {value!r}")


def validate(cfg: dict) -> dict:
    """Check ``cfg`` against the schema; returns a copy with defaults filled in."""
    if not isinstance(cfg, dict):
        raise ConfigError("config: expected a YAML mapping at the top level")
    for key, value in cfg.items():
        if key not in SCHEMA:
            raise ConfigError(f"config key {key!r} is unknown; expected one of {sorted(SCHEMA)}")
        if value is not None or key not in DEFAULTS:
            _check(value, SCHEMA[key], key)
    for key in REQUIRED:
        if key not in cfg:
            raise ConfigError(f"config key {key!r} is required")
    out = copy.deepcopy(DEFAULTS)
    out.update({k: v for k, v in copy.deepcopy(cfg).items() if v is not None or k == "resume"})
    pt = out.get("progressive_train")
    if pt:
        n = len(pt.get("iters", []))
        if len(pt.get("batch_sizes", [])) < n or len(pt.get("crop_sizes", [])) < n:
            # the official loop indexes batch_sizes/crop_sizes by stage; extra entries (sidd recipe) are unused
            raise ConfigError("config key 'progressive_train': batch_sizes and crop_sizes need an entry per stage "
                              f"of iters ({n})")
    losses = ("l1", "charbonnier", "mse", "charbonnier-basicsr")
    if isinstance(out["loss"], list):
        from ssmir.train.losses import LossError, parse_terms

        try:
            parse_terms(out["loss"])
        except LossError as e:
            raise ConfigError(f"config key {e}") from None
    elif out["loss"] not in losses:
        raise ConfigError(f"config key 'loss': expected one of {', '.join(losses)} or a list of terms, got "
                          f"{out['loss']!r}")
    if out["mixed_precision"] not in ("no", "bf16", "fp16"):
        raise ConfigError(f"config key 'mixed_precision': expected no, bf16 or fp16, got {out['mixed_precision']!r}")
    return out


def apply_overrides(cfg: dict, overrides: list[str]) -> dict:
    """``key.sub=value`` overrides (values parsed as YAML), e.g. ``total_iter=100``, ``optimizer.args.lr=1e-4``,
    ``loss.1.weights_file=vgg19.pth`` (list entries by index)."""
    cfg = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        node = cfg
        parts = key.split(".")

        def step(node, p, create, item=item):
            if isinstance(node, list):  # list entries by index, e.g. loss.1.weights_file
                if not p.isdigit() or int(p) >= len(node):
                    raise ConfigError(f"--set {item!r}: {p!r} is not an index of a list of {len(node)}")
                return int(p)
            if create and not isinstance(node.get(p), (dict, list)):
                node[p] = {}
            return p

        for p in parts[:-1]:
            node = node[step(node, p, True)]
        value = yaml.safe_load(raw)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string; numbers are meant
            try:
                value = float(value)
            except ValueError:
                pass
        node[step(node, parts[-1], False)] = value
    return cfg


def read_yaml(path: str | Path, what: str, error: type[Exception] = ConfigError):
    """The YAML document in ``path``; a missing or malformed file raises ``error`` naming ``what`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} {path}: no such file")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise error(f"{what} {path}: not valid YAML ({str(e).splitlines()[0]})") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    cfg = read_yaml(path, "--config", ConfigError)
    from ssmir.train.basicsr import from_options, is_option_file

    if is_option_file(cfg):  # a BasicSR option file (MambaIR, MambaIRv2)
        return from_options(apply_overrides(cfg, list(overrides)))
    return validate(apply_overrides(cfg, list(overrides)))
