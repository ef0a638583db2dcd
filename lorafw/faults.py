"""Fault injection for the test suite: make a run die or misbehave at an exact point.

`LORAFW_FAULT` holds `point:n[,point:n]`, e.g. `kill_in_save:3` (SIGKILL between writing the 3rd file
and renaming it into place; `kill_in_save:toy-02.safetensors` names the file instead, and
`kill_in_save:state.pt#2` its 2nd write), `kill_at_step:5`
(SIGKILL right after optimizer step 5), `nan_at_step:4` (the loss of step 4 becomes NaN),
`kill_after_save:1` (SIGKILL after the 1st LoRA file is saved). `LORAFW_TRACE` (see trace()) records events.

A trainer meets faults at one seam, `install(trainer)`, called once when it is built: with neither variable
set it does nothing, and the step loop holds no fault code at all. Only the atomic file writer checks
`kill_in_save` itself (one environment lookup per file written).
"""

from __future__ import annotations

import os
import signal
from typing import Any

_counts: dict[str, int] = {}


def _plan() -> dict[str, str]:
    spec = os.environ.get("LORAFW_FAULT", "")
    out = {}
    for item in filter(None, spec.split(",")):
        point, _, n = item.partition(":")
        out[point.strip()] = n.strip() or "1"
    return out


def hit(point: str, at: int | None = None, name: str | None = None) -> bool:
    """True when the fault `point` is due now: at the given count `at`, on its n-th call, or for `name`."""
    plan = _plan()
    if point not in plan:
        return False
    want = plan[point]
    if not want.isdigit():
        target, _, nth = want.partition("#")
        if name != target:
            return False
        key = f"{point}:{target}"
        _counts[key] = _counts.get(key, 0) + 1
        return _counts[key] == int(nth or 1)
    if at is None:
        _counts[point] = _counts.get(point, 0) + 1
        at = _counts[point]
    return at == int(want)


def kill_if(point: str, at: int | None = None, name: str | None = None) -> None:
    if hit(point, at, name):
        os.kill(os.getpid(), signal.SIGKILL)


def trace(event: str, **data: object) -> None:
    """With `LORAFW_TRACE=FILE`, append one JSON line per event (which process trained which batch): the
    data-parallel tests check from it that every item of an epoch is seen once."""
    path = os.environ.get("LORAFW_TRACE")
    if not path:
        return
    import json

    with open(path, "a") as f:
        f.write(json.dumps({"event": event, "pid": os.getpid(), **data}) + "\n")


def install(trainer: Any) -> None:
    """Wrap the trainer's micro-batch loss, optimizer step and save with the planned faults and the trace
    (instance attributes, so the class and every run without LORAFW_FAULT/LORAFW_TRACE are untouched)."""
    if not (os.environ.get("LORAFW_FAULT") or os.environ.get("LORAFW_TRACE")):
        return
    loss, step, save = trainer._loss, trainer._optimizer_step, trainer.save

    def faulty_loss(batch: list[int], micro: int):
        value = loss(batch, micro)
        st = trainer.state
        trace("batch", rank=trainer.session.world.rank, epoch=st.epoch, step=st.global_step + 1, micro=micro, items=batch)
        if hit("nan_at_step", st.global_step + 1):
            value = value * float("nan")
        return value

    def faulty_step(group: list[list[int]]) -> None:
        step(group)
        kill_if("kill_at_step", trainer.state.global_step)

    def faulty_save(*args: Any, **kwargs: Any):
        path = save(*args, **kwargs)
        if trainer.session.main and hit("kill_after_save"):
            trainer.session.writer.wait()  # "after the file is saved": on disk, also when a background thread writes it
            os.kill(os.getpid(), signal.SIGKILL)
        return path

    trainer._loss, trainer._optimizer_step, trainer.save = faulty_loss, faulty_step, faulty_save
