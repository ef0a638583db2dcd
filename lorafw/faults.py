"""Fault injection for the test suite: make a run die or misbehave at an exact point.

`LORAFW_FAULT` holds `point:n[,point:n]`, e.g. `kill_in_save:3` (SIGKILL between writing the 3rd file
and renaming it into place; `kill_in_save:toy-02.safetensors` names the file instead, and
`kill_in_save:state.pt#2` its 2nd write), `kill_at_step:5`
(SIGKILL right after optimizer step 5), `nan_at_step:4` (the loss of step 4 becomes NaN).
Unset, this costs one environment lookup per check. `LORAFW_TRACE` (see trace()) records events.
"""

from __future__ import annotations

import os
import signal

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
