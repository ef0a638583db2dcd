"""Run a spec: fill in the run folder and file name, pick the trainer from the registry, train.

The CLI and the Python API both end here, so a notebook run and a command-line run of the same
spec are the same run.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from lorafw.config.compose import default_run_dir, run_name
from lorafw.config.spec import RunSpec
from lorafw.registry import get_trainer

log = logging.getLogger("lorafw")


def resolve_outputs(spec: RunSpec, run_dir: str | Path | None = None) -> RunSpec:
    """The spec with output.name and output.dir filled in (what the saved config records)."""
    name = run_name(spec.output.name, spec.dataset.root or (spec.dataset.folders[0].path if spec.dataset.folders else None))
    out_dir = str(run_dir) if run_dir is not None else default_run_dir(spec.output.dir, name, spec.dataset.root)
    return dataclasses.replace(spec, output=dataclasses.replace(spec.output, name=name, dir=out_dir))


def train(spec: RunSpec, run_dir: str | Path | None = None):
    """Train `spec`; returns a RunResult (run_dir, lora_files, loss_history, epoch_losses, ...)."""
    _ensure_logging()
    spec = resolve_outputs(spec, run_dir)
    trainer_cls = get_trainer(spec.base_model.arch)
    trainer = trainer_cls(spec, Path(spec.output.dir))
    return trainer.run()


def _ensure_logging() -> None:
    """Notebook callers get lorafw's progress lines without configuring logging themselves."""
    lg = logging.getLogger("lorafw")
    if not logging.getLogger().handlers and not lg.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("[lorafw] %(message)s"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO)
