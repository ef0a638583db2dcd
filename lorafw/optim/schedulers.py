"""Learning-rate schedules: the library schedulers kohya sd-scripts runs, REX, and their curve for `lorafw plan`.

A run builds each schedule with the call kohya's get_scheduler_fix makes: transformers' scheduler functions
(constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial, cosine_with_min_lr,
warmup_stable_decay — kohya passes num_cycles / 2 to the last two) and diffusers' piecewise_constant
(`library_kwargs` holds the arguments). `adafactor` is transformers' AdafactorSchedule: Adafactor with
relative_step computes its own lr. `scheduler.type` (kohya's lr_scheduler_type) builds any scheduler class with
`scheduler.args` instead. REX, which neither library has, is ours (`rex_lr`).

`factor` states every formula once more as a pure function, for `lorafw plan` (`key_points`), which reads
configs only and must start without importing torch (transformers' schedulers import it); tests/test_optim.py
checks that it and the library give the same floats at every step, so the curve a user is shown is the one
the run follows.

Every schedule is driven per optimizer step with total = the run's optimizer steps. The warmup is
`warmup_steps`, or int(warmup_ratio × total) as kohya computes it from a ratio. REX follows the GUI
trainer's RexAnnealingWarmRestarts: warmup from min_lr to the group's lr, then
    lr = min_lr + (max_lr − min_lr) · (1 − p) / ((1 − d) + d · (1 − p)),  p = (s − w) / (L − w),
cycles of L = total // num_cycles steps each with its own warmup (round(total · ratio) // num_cycles),
max_lr × gamma per restart, and a group whose lr is not above min_lr decays to 0 instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from lorafw.config.catalog import POLY_LR_END, parse_step_rules
from lorafw.config.spec import SchedulerSpec
from lorafw.errors import ConfigError


def warmup_steps(spec: SchedulerSpec, total: int) -> int:
    """Warmup length in optimizer steps: warmup_steps, or a ratio floored as kohya does."""
    if spec.warmup_steps is not None:
        return min(int(spec.warmup_steps), total)
    if spec.name == "rex":
        return round(total * (spec.warmup_ratio or 0.0))
    return int((spec.warmup_ratio or 0.0) * total)


def rex_lr(step: int, max_lr: float, min_lr: float, total: int, warmup_ratio: float, d: float = 0.9,
           gamma: float = 1.0, num_cycles: int = 1, warmup: int | None = None) -> float:
    """The REX learning rate at optimizer step `step` (0-based) for a group whose lr is `max_lr`."""
    cycle_len = max(1, total // max(1, num_cycles))
    warm = (round(total * warmup_ratio) if warmup is None else warmup) // max(1, num_cycles)
    if warm >= cycle_len:
        warm = cycle_len - 1
    floor = min_lr if min_lr < max_lr else 0.0
    cycle, s = divmod(step, cycle_len)
    peak = max_lr * gamma**cycle
    if peak <= floor:
        return floor
    span = peak - floor
    if s < warm:
        return floor + span * s / warm
    p = (s - warm) / (cycle_len - warm)
    return floor + span * (1 - p) / ((1 - d) + d * (1 - p))


def factor(spec: SchedulerSpec, step: int, total: int, base_lr: float, default_lr: float | None = None) -> float:
    """The multiplier of a group's lr (`base_lr`) at optimizer step `step`, as the run applies it (without torch).

    `default_lr` is the optimizer's own lr (polynomial decays relative to it, as transformers does)."""
    name = spec.name
    w = warmup_steps(spec, total)
    if name == "constant" or name == "adafactor":
        return 1.0
    if name == "rex":
        lr = rex_lr(step, base_lr, spec.min_lr or 0.0, total, spec.warmup_ratio or 0.0, spec.d or 0.9,
                    spec.gamma or 1.0, spec.num_cycles or 1, warmup=w)
        return lr / base_lr if base_lr else 0.0
    if name == "piecewise_constant":
        rules, last = parse_step_rules(spec.step_rules or "")
        for s in sorted(rules):
            if step < s:
                return rules[s]
        return last
    if name == "warmup_stable_decay":
        decay = int((spec.decay_ratio or 0.0) * total)
        stable = total - w - decay
        ratio = spec.min_lr_ratio or 0.0
        cycles = (spec.num_cycles or 1) / 2
        if step < w:
            return max(0.0, (step / max(1, w)) * (1 - ratio) + ratio)
        if step < w + stable:
            return 1.0
        if step < w + stable + decay:
            p = (step - w - stable) / max(1, decay)
            return max(0.0, 0.5 * (1 + math.cos(math.pi * cycles * 2 * p)) * (1 - ratio) + ratio)
        return ratio
    if step < w:
        return step / max(1, w)
    if name == "constant_with_warmup":
        return 1.0
    p = (step - w) / max(1, total - w)
    if name == "linear":
        return max(0.0, (total - step) / max(1, total - w))
    if name == "cosine":
        return max(0.0, 0.5 * (1 + math.cos(math.pi * p)))
    if name == "cosine_with_restarts":
        if p >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1 + math.cos(math.pi * ((float(spec.num_cycles or 1) * p) % 1.0))))
    if name == "cosine_with_min_lr":
        ratio = spec.min_lr_ratio or 0.0
        f = 0.5 * (1 + math.cos(math.pi * (spec.num_cycles or 1) / 2 * 2 * p))
        return max(0.0, f * (1 - ratio) + ratio)
    if name == "polynomial":
        lr_init = default_lr if default_lr is not None else base_lr
        lr_end = POLY_LR_END if spec.min_lr is None else spec.min_lr
        if step > total:
            return lr_end / lr_init
        remaining = 1 - (step - w) / (total - w) if total > w else 0.0
        return ((lr_init - lr_end) * remaining ** (spec.power or 1.0) + lr_end) / lr_init
    raise ValueError(f"unknown scheduler {name!r}")  # validation refuses it first


def key_points(spec: SchedulerSpec, total: int, lr: float) -> list[tuple[int, float]]:
    """The lr curve's corners for `lorafw plan`: (optimizer step, lr) at the start, the warmup's end, each
    restart or rule change, the decay's start, the middle and the last step, plus the lowest point.
    `adafactor` and `scheduler.type` return [] (the optimizer or the class decides the lr)."""
    if total < 1 or spec.type or spec.name == "adafactor":
        return []
    w = warmup_steps(spec, total)
    steps = {0, total - 1, min(w, total - 1), total // 2}
    if spec.name in ("cosine_with_restarts", "rex") and (spec.num_cycles or 1) > 1:
        n = spec.num_cycles or 1
        length = (total - w) / n if spec.name == "cosine_with_restarts" else total // n
        starts = [w + round(i * length) if spec.name == "cosine_with_restarts" else i * int(length)
                  for i in range(1, n)]
        for s in starts:
            steps |= {s - 1, s}
    if spec.name == "piecewise_constant":
        for s in parse_step_rules(spec.step_rules or "")[0]:
            steps |= {s - 1, s}
    if spec.name == "warmup_stable_decay":
        steps.add(total - int((spec.decay_ratio or 0.0) * total))
    pts = sorted(s for s in steps if 0 <= s < total)
    curve = [(s, lr * factor(spec, s, total, lr, lr)) for s in pts]
    low = min(range(total), key=lambda s: factor(spec, s, total, lr, lr)) if total <= 100_000 else None
    if low is not None and low not in pts:
        curve = sorted(curve + [(low, lr * factor(spec, low, total, lr, lr))])
    return curve


def library_kwargs(spec: SchedulerSpec, total: int) -> dict[str, Any]:
    """The keyword arguments kohya's get_scheduler_fix gives transformers' scheduler function for `spec.name`
    (the optimizer aside); piecewise_constant's are diffusers'."""
    name, w, cycles = spec.name, warmup_steps(spec, total), spec.num_cycles or 1
    if name == "constant":
        return {}
    if name == "constant_with_warmup":
        return {"num_warmup_steps": w}
    if name == "piecewise_constant":
        return {"step_rules": ",".join(p.strip() for p in (spec.step_rules or "").split(",") if p.strip())}
    if name == "warmup_stable_decay":
        decay = int((spec.decay_ratio or 0.0) * total)
        return {"num_warmup_steps": w, "num_stable_steps": total - w - decay, "num_decay_steps": decay,
                "num_cycles": cycles / 2, "min_lr_ratio": spec.min_lr_ratio or 0.0}
    steps = {"num_warmup_steps": w, "num_training_steps": total}
    if name in ("linear", "cosine"):
        return steps
    if name == "cosine_with_restarts":
        return {**steps, "num_cycles": cycles}
    if name == "cosine_with_min_lr":
        return {**steps, "num_cycles": cycles / 2, "min_lr_rate": spec.min_lr_ratio or 0.0}
    if name == "polynomial":
        return {**steps, "power": spec.power or 1.0, "lr_end": POLY_LR_END if spec.min_lr is None else spec.min_lr}
    raise ValueError(f"{name!r} is not a library scheduler")


def build_scheduler(spec: SchedulerSpec, optimizer: Any, total: int, initial_lr: float | None = None) -> Any:
    """A torch LR scheduler for `optimizer`, stepped once per optimizer step for `total` steps.

    `initial_lr`: what the adafactor scheduler reports before Adafactor has computed an lr (kohya: the lr)."""
    from torch.optim.lr_scheduler import LambdaLR

    if spec.type:
        return _custom(spec, optimizer)
    if spec.name == "adafactor":
        return _adafactor_schedule(optimizer, initial_lr or optimizer.defaults.get("lr") or 0.0)
    default_lr = optimizer.defaults.get("lr")
    # REX is ours. So is polynomial when its warmup fills the run: transformers then divides by
    # total − warmup = 0 at the step after the last (kohya's run fails there); `factor` gives lr_end.
    if spec.name == "rex" or (spec.name == "polynomial" and warmup_steps(spec, total) >= total):
        return LambdaLR(optimizer, [_ours(spec, total, g["lr"], default_lr) for g in optimizer.param_groups])
    kwargs = library_kwargs(spec, total)
    if spec.name == "piecewise_constant":
        from diffusers.optimization import get_piecewise_constant_schedule

        return get_piecewise_constant_schedule(optimizer, **kwargs)
    from transformers.optimization import TYPE_TO_SCHEDULER_FUNCTION, SchedulerType

    return TYPE_TO_SCHEDULER_FUNCTION[SchedulerType(spec.name)](optimizer, **kwargs)


def _ours(spec: SchedulerSpec, total: int, base_lr: float, default_lr: float | None) -> Callable[[int], float]:
    return lambda step: factor(spec, step, total, base_lr, default_lr)


def _custom(spec: SchedulerSpec, optimizer: Any) -> Any:
    """kohya's lr_scheduler_type: a class from torch.optim.lr_scheduler (bare name) or module.Class."""
    import importlib

    import torch

    path = spec.type or ""
    module_name, _, cls_name = path.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else torch.optim.lr_scheduler
        cls = getattr(module, cls_name)
    except (ImportError, AttributeError):
        raise ConfigError([f"scheduler.type: cannot import {path!r}; give module.Class of an installed package, or a "
                           "class of torch.optim.lr_scheduler such as CosineAnnealingLR"]) from None
    try:
        return cls(optimizer, **dict(spec.args))
    except TypeError as e:
        raise ConfigError([f"scheduler.args: {path} does not take {dict(spec.args)}: {e}"]) from None


def _adafactor_schedule(optimizer: Any, initial_lr: float) -> Any:
    """transformers' AdafactorSchedule, reading the lr Adafactor computed from its state rather than only while
    gradients exist (the trainer steps the schedule after zero_grad, and logs what it reports)."""
    from transformers.optimization import AdafactorSchedule

    class State(AdafactorSchedule):
        def get_lr(self) -> list[float]:
            opt = self.optimizer
            out = []
            for group, base in zip(opt.param_groups, self.base_lrs):
                st = opt.state.get(group["params"][0], {})
                out.append(opt._get_lr(group, st) if "step" in st else base)
            return out

    return State(optimizer, initial_lr)
