"""Learning-rate schedules. REX is written out (no library has it); the others are diffusers'.

Every schedule is driven per optimizer step with total = the run's optimizer steps, and the
warmup is a ratio of that total. REX follows the GUI trainer's RexAnnealingWarmRestarts:
warmup from min_lr to the group's lr, then
    lr = min_lr + (max_lr − min_lr) · (1 − p) / ((1 − d) + d · (1 − p)),  p = (s − w) / (L − w),
cycles of L = total // num_cycles steps each with its own warmup (round(total · ratio) // num_cycles),
max_lr × gamma per restart, and a group whose lr is not above min_lr decays to 0 instead.
"""

from __future__ import annotations

from typing import Any

from lorafw.config.spec import SchedulerSpec


def warmup_steps(spec: SchedulerSpec, total: int) -> int:
    """Warmup length in optimizer steps, as kohya computes it from a ratio (floor)."""
    return int((spec.warmup_ratio or 0.0) * total)


def rex_lr(step: int, max_lr: float, min_lr: float, total: int, warmup_ratio: float, d: float = 0.9,
           gamma: float = 1.0, num_cycles: int = 1) -> float:
    """The REX learning rate at optimizer step `step` (0-based) for a group whose lr is `max_lr`."""
    cycle_len = max(1, total // max(1, num_cycles))
    warm = round(total * warmup_ratio) // max(1, num_cycles)
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


def build_scheduler(spec: SchedulerSpec, optimizer: Any, total: int) -> Any:
    """A torch LR scheduler for `optimizer`, stepped once per optimizer step for `total` steps."""
    from torch.optim.lr_scheduler import LambdaLR

    if spec.name == "rex":
        lambdas = []
        for group in optimizer.param_groups:
            base = group["lr"]
            lambdas.append(
                lambda s, base=base: rex_lr(
                    s, base, spec.min_lr or 0.0, total, spec.warmup_ratio or 0.0, spec.d or 0.9, spec.gamma or 1.0,
                    spec.num_cycles or 1,
                ) / base
            )
        return LambdaLR(optimizer, lambdas)
    from diffusers.optimization import get_scheduler

    kwargs: dict[str, Any] = {"num_warmup_steps": warmup_steps(spec, total), "num_training_steps": total}
    if spec.name == "cosine_with_restarts":
        kwargs["num_cycles"] = spec.num_cycles or 1
    return get_scheduler(spec.name, optimizer, **kwargs)
