"""What a finished run gives back to Python callers (and the CLI prints): lorafw.train's return value."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorafw.config.spec import RunSpec


@dataclass
class RunResult:
    """The run's folder, its LoRA files and the figures a caller (or a sweeper) looks at."""

    run_dir: Path
    spec: RunSpec
    lora_files: list[Path]
    loss_history: list[float]  # one value per optimizer step
    epoch_losses: list[float]  # mean training loss of each epoch
    steps: int
    wall_time_s: float
    notes: list[str] = field(default_factory=list)
    val_losses: dict[int, float] = field(default_factory=dict)  # epoch → validation loss

    @property
    def final_loss(self) -> float:
        return self.epoch_losses[-1] if self.epoch_losses else float("nan")

    @property
    def objective(self) -> float:
        """What a sweeper minimises: the best validation loss, or the best epoch's training loss without one."""
        if self.val_losses:
            return min(self.val_losses.values())
        return min(self.epoch_losses) if self.epoch_losses else float("nan")
