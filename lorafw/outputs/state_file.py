"""Training state for `lorafw resume`: one file, written atomically, read back with weights-only unpickling.

Holds what a run cannot recompute: adapter weights (and full_bf16's fp32 masters), optimizer, scheduler
and loss-scaler state, the counters, the position in the data, and the losses so far. No RNG state:
every random draw derives from (seed, step), so a resumed run redraws exactly what it would have drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorafw.errors import LorafwError
from lorafw.outputs.atomic import atomic_write
from lorafw.run_folder import STATE

FORMAT = 1


def save_state(run_dir: Path, state: dict[str, Any]) -> Path:
    import torch

    return atomic_write(Path(run_dir) / STATE, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_state(run_dir: Path) -> dict[str, Any]:
    import torch

    p = Path(run_dir) / STATE
    if not p.is_file():
        raise LorafwError(f"{run_dir} has no saved training state ({STATE}); it cannot be resumed")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged file, or something that is not ours
        raise LorafwError(f"{p} cannot be read ({str(e).splitlines()[0]}); the run cannot be resumed from it") from None
    if state.get("format") != FORMAT:
        raise LorafwError(f"{p} was written by another lorafw version (state format {state.get('format')}, expected {FORMAT})")
    return state
