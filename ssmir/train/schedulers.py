"""Learning-rate schedules of the official recipes, stepped once per iteration."""

from __future__ import annotations

import bisect
import math

import torch
from torch.optim.lr_scheduler import LambdaLR, MultiStepLR


def cosine_restart_cyclic(optimizer, periods, restart_weights=(1,), eta_mins=(0,), last_epoch=-1) -> LambdaLR:
    """BasicSR/EAMamba's CosineAnnealingRestartCyclicLR: in cycle k (of length periods[k]) the lr falls from
    restart_weights[k] * base_lr to eta_mins[k] along a half cosine."""
    if not (len(periods) == len(restart_weights) == len(eta_mins)):
        raise ValueError("CosineAnnealingRestartCyclicLR: periods, restart_weights, eta_mins differ in length")
    ends = [sum(periods[: i + 1]) for i in range(len(periods))]
    base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]

    def factor(group_index):
        def f(it):
            k = min(bisect.bisect_left(ends, it), len(periods) - 1)  # first cycle whose end >= it
            start = 0 if k == 0 else ends[k - 1]
            eta, b = eta_mins[k], base[group_index]
            lr = eta + restart_weights[k] * 0.5 * (b - eta) * (1 + math.cos(math.pi * (it - start) / periods[k]))
            return lr / b

        return f

    return LambdaLR(optimizer, [factor(i) for i in range(len(base))], last_epoch=last_epoch)


def make_scheduler(optimizer: torch.optim.Optimizer, spec: dict):
    name, args = spec["name"], dict(spec.get("args") or {})
    if name == "CosineAnnealingRestartCyclicLR":
        return cosine_restart_cyclic(optimizer, **args)
    if name == "MultiStepLR":
        return MultiStepLR(optimizer, **args)
    if name == "CosineAnnealingRestartLR":  # BasicSR's (one eta_min for every cycle)
        eta = args.pop("eta_min", 0.0)
        periods = args.pop("periods")
        return cosine_restart_cyclic(optimizer, periods, args.pop("restart_weights", [1] * len(periods)),
                                     [eta] * len(periods), **args)
    raise ValueError(f"lr_scheduler.name {name!r} is not CosineAnnealingRestartCyclicLR, CosineAnnealingRestartLR or "
                     "MultiStepLR")


def make_optimizer(params, spec: dict) -> torch.optim.Optimizer:
    name, args = spec["name"], dict(spec.get("args") or {})
    optimizers = {"AdamW": torch.optim.AdamW, "Adam": torch.optim.Adam}
    if name not in optimizers:
        raise ValueError(f"optimizer.name {name!r} is not one of {sorted(optimizers)}")
    if "betas" in args:
        args["betas"] = tuple(args["betas"])
    return optimizers[name](params, **args)
