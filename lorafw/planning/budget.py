"""How long a run is: epochs and optimizer steps from train.epochs / train.max_steps, as sd-scripts counts them.
Pure; `lorafw plan`, the trainer's preflight and its epoch loop all read the same `Budget`.

sd-scripts (train_network.py): with max_train_epochs, max_train_steps = epochs × ceil(batches / processes /
accumulation); otherwise max_train_steps (default 1600) is the run, and num_train_epochs = ceil(max_train_steps /
ceil(batches per process / accumulation)), the loop leaving the last epoch once global_step reaches
max_train_steps. One optimizer step takes `batches_per_step` = accumulation × processes batches, so both
counts are ceil(batches / batches_per_step) steps per epoch (ceil(ceil(b / W) / A) = ceil(b / (W·A))).

Which file names kohya gives what it saves, and which of them its retention options remove, is here too
(train_util.get_step_ckpt_name, get_remove_epoch_no, get_remove_step_no), so the trainer only decides when.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

KOHYA_DEFAULT_STEPS = 1600  # sd-scripts' --max_train_steps default, trained when neither count is given


@dataclass(frozen=True)
class Budget:
    steps_per_epoch: int
    epochs: int
    total_steps: int
    by: Literal["epochs", "steps"] = "epochs"  # what decided: train.epochs, or train.max_steps (or kohya's 1600)

    def steps_in_epoch(self, epoch: int) -> int:
        """Optimizer steps epoch `epoch` (from 1) trains: a full epoch, or what is left of the budget."""
        return max(0, min(self.steps_per_epoch, self.total_steps - (epoch - 1) * self.steps_per_epoch))

    @property
    def last_epoch_steps(self) -> int:
        return self.steps_in_epoch(self.epochs)

    @property
    def partial(self) -> bool:
        """The last epoch stops before its end."""
        return self.epochs > 0 and self.last_epoch_steps < self.steps_per_epoch


def budget(batches_per_epoch: int, batches_per_step: int, epochs: int | None, max_steps: int | None) -> Budget:
    """The run's length. `epochs` wins when both are given (kohya's max_train_epochs overrides max_train_steps);
    neither: kohya's 1600 steps."""
    if batches_per_step < 1:
        raise ValueError(f"batches_per_step must be at least 1, got {batches_per_step}")
    spe = math.ceil(batches_per_epoch / batches_per_step)
    if epochs is not None:
        return Budget(spe, epochs, spe * epochs, "epochs")
    total = max_steps if max_steps is not None else KOHYA_DEFAULT_STEPS
    return Budget(spe, math.ceil(total / spe) if spe else 0, total if spe else 0, "steps")


def step_file_name(name: str, step: int) -> str:
    """kohya's per-step file (train_util.STEP_FILE_NAME "{}-step{:08d}"), so tools that look for it find it."""
    return f"{name}-step{step:08d}.safetensors"


def epoch_to_remove(epoch: int, save_every_n_epochs: int, save_last_n_epochs: int | None) -> int | None:
    """Saving epoch `epoch`: the epoch whose file kohya removes (train_util.get_remove_epoch_no), or None."""
    if save_last_n_epochs is None:
        return None
    remove = epoch - save_every_n_epochs * save_last_n_epochs
    return remove if remove >= 0 else None


def step_to_remove(step: int, save_every_n_steps: int, save_last_n_steps: int | None) -> int | None:
    """Saving step `step`: the step whose file kohya removes (train_util.get_remove_step_no: the newest saved step
    that is more than `save_last_n_steps` steps old), or None."""
    if save_last_n_steps is None:
        return None
    remove = step - save_last_n_steps - 1
    remove -= remove % save_every_n_steps
    return remove if remove >= 0 else None
