"""Training losses: a weighted list of pixel, perceptual (VGG) and temporal-consistency terms.

The config's ``loss`` is a name (``l1``, ``charbonnier``) or a list of terms::

    loss:
      - {type: l1, weight: 1.0}
      - {type: perceptual, weight: 0.01, network: vgg19, weights_file: vgg19-dcbb9e9d.pth,
         layers: {relu2_2: 1.0, relu3_4: 1.0}, criterion: l1}
      - {type: temporal, weight: 0.1}

``perceptual`` compares VGG-16/19 features (torchvision's layer layout, ImageNet normalisation) of the output
and the target; its weights are read from the torchvision ``.pth`` file ``weights_file`` (relative to the
current folder unless absolute) and nothing is downloaded. ``temporal`` needs batches of consecutive frames
(``event-sequence-dataset`` with ``consecutive: true``): it penalises the change between consecutive outputs
beyond the change between the consecutive targets, mean |(o[i+1] - o[i]) - (t[i+1] - t[i])|.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

VGG_LAYOUTS = {
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "vgg19": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
TERMS = ("l1", "charbonnier", "mse", "perceptual", "temporal")


class LossError(ValueError):
    """A loss term that is unknown or cannot be built (e.g. a missing weights file)."""


def vgg_layer_names(network: str) -> list[str]:
    """torchvision's ``features`` index order: conv1_1, relu1_1, conv1_2, relu1_2, pool1, conv2_1, ..."""
    names = []
    for block, widths in enumerate(VGG_LAYOUTS[network], start=1):
        for k in range(1, len(widths) + 1):
            names += [f"conv{block}_{k}", f"relu{block}_{k}"]
        names.append(f"pool{block}")
    return names


class VGGFeatures(nn.Module):
    """The ``features`` of torchvision's VGG-16/19 (no batch norm) up to the deepest requested layer, frozen;
    returns {layer name: feature map} of an input in [0, 1] (ImageNet-normalised inside; gray repeated)."""

    def __init__(self, network: str, layers: list[str], weights_file: str | Path):
        super().__init__()
        if network not in VGG_LAYOUTS:
            raise LossError(f"perceptual loss: network {network!r} is not one of {', '.join(VGG_LAYOUTS)}")
        names = vgg_layer_names(network)
        unknown = [name for name in layers if name not in names]
        if unknown or not layers:
            raise LossError(f"perceptual loss: layers {unknown or layers} are not {network} layers "
                            f"(e.g. relu1_2, relu2_2, relu3_3, relu4_3, conv5_1)")
        self.layers = list(layers)
        depth = max(names.index(name) for name in layers) + 1
        modules, channels = [], 3
        for name in names[:depth]:
            if name.startswith("conv"):
                block, k = (int(v) for v in name[4:].split("_"))
                width = VGG_LAYOUTS[network][block - 1][k - 1]
                modules.append(nn.Conv2d(channels, width, 3, padding=1))
                channels = width
            elif name.startswith("relu"):
                modules.append(nn.ReLU(inplace=False))
            else:
                modules.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*modules)
        self.names = names[:depth]
        self._load(Path(weights_file), network)
        self.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _load(self, path: Path, network: str) -> None:
        if not path.is_file():
            raise LossError(f"perceptual loss: weights_file {path} not found (a torchvision {network} .pth, e.g. "
                            f"{network}-*.pth from torchvision's model zoo; ssmir downloads nothing)")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise LossError(f"perceptual loss: cannot read weights_file {path} ({str(e).splitlines()[0]})") from None
        if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        own = self.features.state_dict()
        wanted = {f"features.{k}": v for k, v in own.items()}
        missing = [k for k in wanted if k not in sd]
        shapes = [k for k in wanted if k in sd and tuple(sd[k].shape) != tuple(wanted[k].shape)]
        if missing or shapes:
            raise LossError(f"perceptual loss: {path} is not a torchvision {network} state_dict (missing "
                            f"{missing[:3]}, mis-shaped {shapes[:3]})")
        self.features.load_state_dict({k: sd[f"features.{k}"] for k in own})

    def train(self, mode: bool = True):  # always in eval mode (the loss network is fixed)
        return super().train(False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = {}
        for name, module in zip(self.names, self.features, strict=True):
            x = module(x)
            if name in self.layers:
                out[name] = x
        return out


class PerceptualLoss(nn.Module):
    """Sum over layers of layer weight x criterion(VGG features of output, of target)."""

    def __init__(self, network: str, layers: dict[str, float], weights_file: str | Path, criterion: str = "l1"):
        super().__init__()
        if criterion not in ("l1", "mse"):
            raise LossError(f"perceptual loss: criterion {criterion!r} is not l1 or mse")
        self.layer_weights = {str(k): float(v) for k, v in layers.items()}
        self.vgg = VGGFeatures(network, list(self.layer_weights), weights_file)
        self.criterion = F.l1_loss if criterion == "l1" else F.mse_loss

    def forward(self, pred, gt):
        fp = self.vgg(pred)
        with torch.no_grad():
            fg = self.vgg(gt)
        return sum(w * self.criterion(fp[name], fg[name]) for name, w in self.layer_weights.items())


def temporal_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """mean |(o[i+1] - o[i]) - (t[i+1] - t[i])| over consecutive batch entries (consecutive frames)."""
    if pred.shape[0] < 2:
        raise LossError("temporal loss: a batch needs at least 2 consecutive frames")
    return ((pred[1:] - pred[:-1]) - (gt[1:] - gt[:-1])).abs().mean()


def charbonnier(pred, gt, eps=1e-3):
    return torch.sqrt((pred - gt) ** 2 + eps**2).mean()


PIXEL_LOSSES = {"l1": F.l1_loss, "charbonnier": charbonnier, "mse": F.mse_loss}  # the losses named by one word


def parse_terms(spec) -> list[dict]:
    """The config's ``loss`` as a list of ``{type, weight, ...}`` terms, checked (no files opened)."""
    if isinstance(spec, str):
        spec = [{"type": spec, "weight": 1.0}]
    if not isinstance(spec, list) or not spec:
        raise LossError("loss: expected a name (l1, charbonnier) or a list of {type, weight, ...} terms")
    terms = []
    for i, term in enumerate(spec):
        if not isinstance(term, dict) or term.get("type") not in TERMS:
            kind = term.get("type") if isinstance(term, dict) else term
            raise LossError(f"loss[{i}].type {kind!r} is not one of {', '.join(TERMS)}")
        allowed = {"type", "weight"} | ({"network", "weights_file", "layers", "criterion"}
                                        if term["type"] == "perceptual" else set())
        unknown = sorted(set(term) - allowed)
        if unknown:
            raise LossError(f"loss[{i}] ({term['type']}): unknown key(s) {unknown}")
        try:
            weight = float(term.get("weight", 1.0))
        except (TypeError, ValueError):
            raise LossError(f"loss[{i}].weight: expected a number, got {term.get('weight')!r}") from None
        if term["type"] == "perceptual":
            if not term.get("weights_file"):
                raise LossError(f"loss[{i}] (perceptual): weights_file (a torchvision VGG .pth) is required")
            layers = term.get("layers", {"relu2_2": 1.0, "relu3_3": 1.0})
            if isinstance(layers, list):
                layers = {name: 1.0 for name in layers}
            if not isinstance(layers, dict) or not layers:
                raise LossError(f"loss[{i}].layers: expected a list of layer names or {{name: weight}}")
            term = dict(term, layers=layers, network=term.get("network", "vgg19"))
        terms.append(dict(term, weight=weight))
    return terms


class CombinedLoss(nn.Module):
    """Σ weight x term; ``last`` keeps each term's value of the latest call (for logging)."""

    def __init__(self, spec, base: Path = Path(".")):
        super().__init__()
        self.terms = parse_terms(spec)
        self.perceptual = nn.ModuleList()
        for term in self.terms:
            if term["type"] == "perceptual":
                path = Path(str(term["weights_file"]))
                self.perceptual.append(PerceptualLoss(term["network"], term["layers"],
                                                      path if path.is_absolute() else Path(base) / path,
                                                      term.get("criterion", "l1")))
        self.needs_consecutive = any(t["type"] == "temporal" for t in self.terms)
        self.last: dict[str, torch.Tensor] = {}

    def forward(self, pred, gt):
        total, perceptual = 0.0, iter(self.perceptual)
        self.last = {}
        for term in self.terms:
            kind = term["type"]
            if kind in PIXEL_LOSSES:
                value = PIXEL_LOSSES[kind](pred, gt)
            elif kind == "perceptual":
                value = next(perceptual).to(pred.device)(pred, gt)
            else:
                value = temporal_loss(pred, gt)
            self.last[kind] = value.detach()  # a tensor: no device sync on the training step
            total = total + term["weight"] * value
        return total
