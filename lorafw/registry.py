"""Trainers by architecture: `TRAINERS[spec.base_model.arch]` runs a spec.

Built-in trainers are named here as import paths (so listing them imports no torch);
other packages add architectures through the `lorafw.trainers` entry-point group:

    [project.entry-points."lorafw.trainers"]
    myarch = "mypkg.trainer:MyTrainer"

A trainer is a class constructed as `Trainer(spec, run_dir)` with a `run() -> RunResult` method
(lorafw.trainers.sd15.SD15Trainer is the reference).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from lorafw.errors import ConfigError

ENTRY_POINT_GROUP = "lorafw.trainers"

BUILTIN: dict[str, str] = {
    "sd15": "lorafw.trainers.sd15:SD15Trainer",
    "sdxl": "lorafw.trainers.sdxl:SDXLTrainer",
}


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_archs() -> list[str]:
    """Architecture names with a trainer, without importing any of them."""
    return sorted(set(BUILTIN) | set(_entry_points()))


def get_trainer(arch: str) -> type:
    """The trainer class for `arch` (imports it)."""
    if arch in BUILTIN:
        module, _, name = BUILTIN[arch].partition(":")
        return getattr(importlib.import_module(module), name)
    eps = _entry_points()
    if arch in eps:
        return eps[arch].load()
    raise ConfigError(
        [f"base_model.arch: no trainer is registered for {arch!r}; available: {', '.join(available_archs())}"]
    )
