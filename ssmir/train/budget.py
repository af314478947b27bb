"""Fit a training run into a wall-clock budget (``ssmir train --time-budget``).

A leased GPU, a queue slot or a night on a workstation gives a fixed time, not a fixed iteration count, and a
cosine schedule cut off early ends at a high learning rate. So: time a short probe of the config as given (the
same model, data loading, EMA and logging), then scale the iteration counts of the whole recipe — ``total_iter``,
the scheduler's cycles or milestones, the progressive stages and the warm-up — by one factor, so that the run,
estimated from the probe's rate, ends inside the budget and its schedule still decays to its end. Progressive
stages with other batch or crop sizes are costed by their pixels per step relative to the probed first stage.
"""

from __future__ import annotations

import copy
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class BudgetError(ValueError):
    """A time budget that cannot be parsed, or a run that cannot fit it."""


def parse_duration(text: str) -> float:
    """Seconds in '600', '600s', '45m', '1.5h', '1h30m' or '2d'."""
    s = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", s)
    if not parts or "".join(n + u for n, u in parts) != s:
        raise BudgetError(f"--time-budget {text!r}: expected a duration such as 600, 600s, 45m, 1.5h or 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise BudgetError(f"--time-budget {text!r}: must be more than zero")
    return seconds


def _split(counts: list[int], n: int) -> list[int]:
    """``counts`` scaled to sum to ``n`` (each at least 1), rounding so that the total is exact."""
    total = sum(counts)
    ends = [round(n * sum(counts[: i + 1]) / total) for i in range(len(counts))]
    out, prev = [], 0
    for e in ends:
        e = max(e, prev + 1)
        out.append(e - prev)
        prev = e
    out[-1] += n - sum(out)
    if out[-1] < 1:
        raise BudgetError(f"cannot split {n} iterations into {len(counts)} schedule cycles")
    return out


def step_cost(cfg: dict) -> list[tuple[int, float]]:
    """(iterations, cost of one step relative to the first stage's) for each stage of ``cfg`` that runs, as the
    trainer's ``stage_at`` assigns iterations (the last listed progressive stage goes on to ``total_iter``)."""
    total = int(cfg["total_iter"])
    pt = cfg.get("progressive_train")
    if not pt or not pt.get("iters"):
        return [(total, 1.0)]
    stages, done, last = [], 0, len(pt["iters"]) - 1
    for k, iters in enumerate(pt["iters"]):
        iters = total - done if k == last else min(int(iters), total - done)
        stages.append((iters, pt["batch_sizes"][k] * pt["crop_sizes"][k] ** 2))
        done += iters
        if done >= total:
            break
    return [(iters, pixels / stages[0][1]) for iters, pixels in stages]


def scale_schedule(cfg: dict, n: int) -> dict:
    """A copy of ``cfg`` whose recipe runs ``n`` iterations: total_iter, scheduler cycles (periods) or
    milestones, progressive stages and warm-up scaled by n / total_iter."""
    if n < 1:
        raise BudgetError("the budget leaves no iteration to train")
    out = copy.deepcopy(cfg)
    total = int(cfg["total_iter"])
    f = n / total
    out["total_iter"] = n
    sched = out.get("lr_scheduler") or {}
    args = sched.get("args") or {}
    if "periods" in args and n < len(args["periods"]):  # fewer iterations than cycles: the first cycle only
        args["periods"] = [n]
        for key in ("restart_weights", "eta_mins"):
            if key in args:
                args[key] = list(args[key])[:1]
    elif "periods" in args:
        args["periods"] = _split([int(p) for p in args["periods"]], n)
    elif "milestones" in args:
        args["milestones"] = [max(1, round(m * f)) for m in args["milestones"]]
    elif sched:
        raise BudgetError(f"--time-budget: cannot rescale the schedule {sched.get('name')!r} "
                          "(it has neither periods nor milestones)")
    pt = out.get("progressive_train")
    if pt and pt.get("iters"):
        counts = [c for c, _ in step_cost(cfg)]
        iters = _split(counts, n) if n >= len(counts) else [n]
        pt["iters"] = iters + [int(i) for i in pt["iters"][len(iters):]]  # stages past the end stay unreached
    if int(out.get("warmup_iter", -1)) > 0:
        out["warmup_iter"] = max(1, round(int(cfg["warmup_iter"]) * f))
    return out


def iterations_for(cfg: dict, seconds: float, rate: float, margin: float = 0.9) -> int:
    """How many iterations of ``cfg``'s recipe fit in ``margin`` x ``seconds`` at ``rate`` seconds per step of
    the first stage (later stages costed by their pixels per step)."""
    stages = step_cost(cfg)
    total = sum(c for c, _ in stages)
    mean_cost = sum(c * w for c, w in stages) / total  # per iteration, in first-stage steps
    return int(margin * seconds / (rate * mean_cost))


def probe_rate(cfg: dict, folder, base, cpu: bool = False, workers: int = 0, warmup: int = 5,
               count: int = 40) -> float:
    """Seconds per iteration of ``cfg``'s first stage: ``warmup`` iterations, then ``count`` timed ones, of the
    real trainer (data loading, EMA, logging; no validation) in ``folder``, which is removed afterwards."""
    import shutil
    import time
    from pathlib import Path

    from ssmir.train.trainer import Trainer

    folder = Path(folder)
    probe = copy.deepcopy(cfg)
    probe["valid_dataset"] = None
    probe["total_iter"] = max(int(cfg["total_iter"]), warmup + count)
    try:
        trainer = Trainer(probe, folder, base=base, cpu=cpu, workers=workers, stop_after=warmup, progress=False)
        trainer.fit()
        start = time.perf_counter()
        trainer.stop_after = warmup + count
        trainer.fit()
        return (time.perf_counter() - start) / count
    finally:
        shutil.rmtree(folder, ignore_errors=True)
