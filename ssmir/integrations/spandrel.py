"""ssmir's architectures in spandrel, the model loader of chaiNNer, ComfyUI and other upscaling tools.

``install()`` adds EAMamba, EAMambaSR, MambaIR (v1), MambaIRv2 and MambaIRv2-Light to spandrel's ``MAIN_REGISTRY`` (or
the registry given), as ``spandrel-extra-arches`` does for its architectures. Afterwards
``spandrel.ModelLoader().load_from_file(path)`` recognises, by their contents:

- official EAMamba checkpoints (``{"model": {"name", "args", "sd", "sd_e"}}``; the EMA weights are loaded),
- BasicSR MambaIR / MambaIRv2 / MambaIRv2-Light checkpoints (``params_ema`` / ``params``; the args are rebuilt from
  the keys and shapes, as ``ssmir.load_model`` does),
- ssmir ``.safetensors`` files (their architecture is stored in a ``__ssmir_config__`` tensor),

and returns an ``ImageModelDescriptor`` whose model is ssmir's module. Detection claims nothing else:
EAMamba files are recognised by their stored architecture (its scan orders cannot be read from weights), and
MambaIR files by keys that only they have. EmambaIR (a frame plus events) is not an image-to-image model and
is not registered.

In ComfyUI or chaiNNer (with ssmir installed in their Python environment)::

    import ssmir.integrations.spandrel
    ssmir.integrations.spandrel.install()
"""

from __future__ import annotations

from ssmir.models.loading import CONFIG_TENSOR, config_from_tensor

# spandrel architecture id -> (ssmir registry name, display name)
ARCHITECTURES = {
    "EAMamba": ("eamamba", "EAMamba"),
    "EAMambaSR": ("eamambasr", "EAMamba-SR (lightweight)"),
    "MambaIR": ("mambair", "MambaIR"),
    "MambaIRv2": ("mambairv2", "MambaIRv2"),
    "MambaIRv2Light": ("mambairv2light", "MambaIRv2-Light"),
}


def _spandrel():
    try:
        import spandrel
    except ImportError as e:
        raise ImportError(f"ssmir.integrations.spandrel needs spandrel: pip install 'ssmir[spandrel]' ({e})") from None
    return spandrel


def resolve(state_dict: dict) -> tuple[str, dict, dict] | None:
    """``(ssmir name, args, weights)`` of a (canonicalized) spandrel state dict that ssmir can build, else None."""
    import torch

    if not isinstance(state_dict, dict):
        return None
    # an official EAMamba file, after spandrel unwrapped its "model" entry
    name, args = state_dict.get("name"), state_dict.get("args")
    if name in ("eamamba", "eamambasr") and isinstance(args, dict):
        weights = state_dict.get("sd_e") if isinstance(state_dict.get("sd_e"), dict) else state_dict.get("sd")
        if isinstance(weights, dict) and weights and all(isinstance(v, torch.Tensor) for v in weights.values()):
            return name, args, weights
        return None
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        return None
    if CONFIG_TENSOR in state_dict:  # an ssmir .safetensors file
        try:
            spec = config_from_tensor(state_dict[CONFIG_TENSOR])
        except (ValueError, KeyError, UnicodeDecodeError):
            return None
        weights = {k: v for k, v in state_dict.items() if k != CONFIG_TENSOR}
        return spec["name"], spec["args"], weights
    import ssmir.models  # noqa: F401  (registers the architectures and their detectors)
    from ssmir.models.registry import detect

    found = detect(state_dict)  # BasicSR MambaIR files: keys only these architectures have
    return (found[0], found[1], state_dict) if found is not None else None


def architectures():
    """The spandrel ``Architecture`` objects for ssmir's image-to-image models."""
    spandrel = _spandrel()

    class SsmirArchitecture(spandrel.Architecture):
        def __init__(self, arch_id: str, ssmir_name: str, display: str):
            self.ssmir_name = ssmir_name
            super().__init__(id=arch_id, name=display, detect=self._claims)

        def _claims(self, state_dict) -> bool:
            found = resolve(state_dict)
            return found is not None and found[0] == self.ssmir_name

        def load(self, state_dict):
            from ssmir.eval.inference import eval_pad_multiple, min_size, size_multiple, upscale_factor
            from ssmir.models.registry import create

            name, args, weights = resolve(state_dict)
            model = create(name, **args).eval()
            scale = upscale_factor(model)
            in_ch = int(getattr(model, "input_channels", (3,))[0])
            out_ch = int(args.get("out_channels", args.get("in_chans", in_ch)))
            multiple = max(size_multiple(model), eval_pad_multiple(model))
            tags = [f"{k}={args[k]}" for k in ("dim", "embed_dim", "upscale", "upsampler") if k in args]
            if "mamba_cfg" in args:
                tags.append(f"scan={args['mamba_cfg'].get('scan_type')}x{args['mamba_cfg'].get('scan_count')}")
            return spandrel.ImageModelDescriptor(
                model, weights, architecture=self, purpose="SR" if scale > 1 else "Restoration", tags=tags,
                supports_half=False, supports_bfloat16=False, scale=scale, input_channels=in_ch,
                output_channels=out_ch,
                size_requirements=spandrel.SizeRequirements(multiple_of=multiple, minimum=min_size(model)),
                # the selective scans see the whole image: tiles change the result (ssmir's own restore blends
                # overlapping tiles only to bound memory)
                tiling=spandrel.ModelTiling.DISCOURAGED,
            )

    return [SsmirArchitecture(arch_id, name, display) for arch_id, (name, display) in ARCHITECTURES.items()]


def install(registry=None, ignore_duplicates: bool = False) -> list:
    """Add ssmir's architectures to ``registry`` (spandrel's ``MAIN_REGISTRY`` by default); returns the added
    ``ArchSupport`` entries. They are detected before spandrel's own architectures, so that no other detector
    (e.g. a SwinIR-shaped one) takes a MambaIRv2 file; theirs never match ssmir's."""
    spandrel = _spandrel()
    registry = spandrel.MAIN_REGISTRY if registry is None else registry
    others = tuple(a.architecture.id for a in registry.architectures("insertion")
                   if a.architecture.id not in ARCHITECTURES)
    entries = [spandrel.ArchSupport.from_architecture(arch, before=others) for arch in architectures()]
    return registry.add(*entries, ignore_duplicates=ignore_duplicates)
