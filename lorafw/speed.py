"""Speed levers that change nothing but speed: every file a run writes is byte-for-byte the same with a lever on
or off (tests/test_speed_levers.py trains with each one off and compares). They are on; the switch exists for
those tests and for benchmarks/step_profile.py, which measures each one:

    LORAFW_SPEED_OFF=async_save,te_layers lorafw train ...     # those two off (read at import)
    LORAFW_SPEED_OFF=all ...                                   # every lever off

In code, `with speed.off("async_save"): ...` switches levers off for a block (tests).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

LEVERS: dict[str, str] = {
    "async_save": "epoch-end LoRA files, state.pt, the run record and summary are written by a background thread "
                  "while the next step's forward and backward passes run (that step waits for it before its update; "
                  "so do a stop and the run's end)",
    "te_layers": "a text encoder runs only up to the layer its output is read from (clip_skip 2, SDXL's CLIP-L: "
                 "the last layer is skipped, its output being unused)",
    "adapter_unit_scalar": "adapters do not multiply lora_up by LyCORIS's scalar when it is the constant 1 (no use_scalar)",
    "heap_reuse": "training on a CPU keeps freed memory for the next step (glibc malloc: no mmap, no trimming) instead of "
                  "page-faulting the same activations back in every step (lorafw/heap.py)",
    "autocast_no_upcast": "under autocast on any device (the CPU's included), adapters hand the layer's input, "
                          "and DoRA's norm the frozen weight, to autocast as they are instead of copying them to "
                          "fp32 first, which autocast casts back to the same values (DoRA: two full-size copies of "
                          "each layer's weight per forward, one of them held for the backward pass)",
    "dora_norm_cache": "DoRA's norm term W·Dᵀ (one pass over each frozen weight) is computed once per step and "
                       "reused by gradient checkpointing's recompute, instead of twice",
}


def _from_env() -> frozenset[str]:
    raw = os.environ.get("LORAFW_SPEED_OFF", "")
    names = {n.strip() for n in raw.split(",") if n.strip()}
    if "all" in names:
        return frozenset(LEVERS)
    unknown = names - set(LEVERS)
    if unknown:
        raise ValueError(f"LORAFW_SPEED_OFF: unknown lever(s) {sorted(unknown)}; known: {sorted(LEVERS)} or all")
    return frozenset(names)


_off: frozenset[str] = _from_env()


def on(name: str) -> bool:
    """Whether lever `name` is on (a set lookup: cheap enough for a layer's forward)."""
    return name not in _off


@contextlib.contextmanager
def off(*names: str) -> Iterator[None]:
    """Switch levers off for the block (`off("all")`: every one)."""
    global _off
    chosen = set(LEVERS) if "all" in names else set(names)
    unknown = chosen - set(LEVERS)
    if unknown:
        raise ValueError(f"unknown speed lever(s) {sorted(unknown)}; known: {sorted(LEVERS)}")
    before = _off
    _off = frozenset(before | chosen)
    try:
        yield
    finally:
        _off = before
