"""Training timesteps: uniform over [min_timestep, max_timestep), as kohya's get_timesteps.

Unset bounds are 0 and the schedule's length (1000). Equal bounds train that one timestep (kohya: a
constant batch of max_timestep), which therefore must be a real timestep (≤ 999; validate.py checks it).
"""

from __future__ import annotations

import torch

from lorafw.objective.schedule import NUM_TRAIN_TIMESTEPS


def bounds(min_timestep: int | None, max_timestep: int | None, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[int, int]:
    lo = 0 if min_timestep is None else int(min_timestep)
    hi = num_train_timesteps if max_timestep is None else int(max_timestep)
    return lo, hi


def sample_timesteps(batch: int, min_timestep: int | None, max_timestep: int | None, gen: torch.Generator | None,
                     device: torch.device, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """(batch,) int64 timesteps. With no bounds set this draws exactly what `randint(0, T)` draws."""
    lo, hi = bounds(min_timestep, max_timestep, num_train_timesteps)
    if lo < hi:
        return torch.randint(lo, hi, (batch,), generator=gen, device=device)
    return torch.full((batch,), hi, dtype=torch.long, device=device)
