"""The typed pieces a run is made of, each created once, by the step that can create it:

    Plan        preflight: what the run will do, from the spec, the checkpoint's header and the dataset
    Session     the process's place in the run: rank, communication, run folder, writer, signals, run record
    Device      setup: where and in which precision it computes
    Caches      setup: latents and text states computed before training
    TrainState  setup: the network, optimizer, schedule, EMA, and the counters that say where the run stands

Functions in lorafw/trainers/ take the pieces they use, never a trainer object.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lorafw.outputs.background import Writer
from lorafw.trainers.distributed import Comm, World
from lorafw.trainers.signals import StopRequests

if TYPE_CHECKING:  # the types only: building the pieces is setup.py's job
    from lorafw.config.prediction import Resolved
    from lorafw.data.dataset import TrainData
    from lorafw.data.latents import LatentCache
    from lorafw.data.lint import Report
    from lorafw.data.prefetch import Lookahead
    from lorafw.network.adapter import Network
    from lorafw.optim.bf16 import MasterWeights
    from lorafw.optim.ema import EMA
    from lorafw.placement import Parking
    from lorafw.precision import Amp, PrecisionChoice
    from lorafw.trainers.step import StepConfig


@dataclass
class Plan:
    """Everything decided before any weights load (lorafw/trainers/preflight.py)."""

    model_path: Path
    model_info: Any  # the family's description of the checkpoint
    objective: Resolved  # objective.prediction.Resolved: what the run trains to predict, and why
    data: TrainData
    val_data: TrainData | None  # held-out images
    lint_report: Report
    dataset_warnings: list[str]
    batches_per_step: int  # accumulation × processes: one optimizer step's batches
    steps_per_epoch: int
    total_steps: int  # the step budget: the run stops here, mid-epoch if need be (planning/budget.py)
    step_config: StepConfig  # for training
    eval_config: StepConfig  # and for validation (plain noise, unweighted MSE)
    name: str  # the LoRA files' stem
    resuming: bool
    epochs: int = 0  # epochs the run trains (the last one partial when train.max_steps decides)


@dataclass
class Session:
    """This process's place in the run, and what it writes through."""

    world: World
    comm: Comm
    run_dir: Path
    writer: Writer
    stop: StopRequests = field(default_factory=StopRequests)
    record: dict[str, Any] = field(default_factory=dict)  # run.json
    started_at: float = field(default_factory=time.time)
    session_id: str = field(default_factory=lambda: str(uuid.uuid4().int % 2**32))  # kohya's ss_session_id

    @property
    def main(self) -> bool:
        """Only the main process writes files and logs."""
        return self.world.is_main


@dataclass
class Device:
    """Where the run computes and in which precision (lorafw.precision.choose)."""

    device: torch.device
    choice: PrecisionChoice
    amp: Amp  # autocast and the fp16 loss scaler
    wdtype: torch.dtype  # the frozen weights' dtype
    parking: Parking  # where frozen parts wait when the device does not need them
    loader_workers: int

    @property
    def precision(self) -> str:
        return self.choice.precision


@dataclass
class Caches:
    """What setup computed once: latents (training, held-out) and text states; None where not cached."""

    latents: LatentCache | None = None
    val_latents: LatentCache | None = None
    text: dict[int, dict[str, torch.Tensor]] | None = None
    val_text: dict[int, dict[str, torch.Tensor]] | None = None
    pixels_ahead: Lookahead | None = None  # uncached latents: this epoch's images decoded ahead


@dataclass
class TrainState:
    """The network, its optimizer and what rides with it, and where the run stands. state.pt saves exactly this
    (trainers/checkpoint.py), so a resumed run continues as if it never stopped."""

    network: Network
    trainable: list[torch.Tensor]
    optimizer: Any
    lr_scheduler: Any
    masters: MasterWeights | None = None  # full_bf16/full_fp16: fp32 master copies (optim/bf16.py)
    ema: EMA | None = None
    train_te: bool = False
    te_stop_step: int | None = None  # optimizer.stop_text_encoder_training, in optimizer steps
    warmup_steps: int = 0
    optimizer_desc: str = ""
    # where the run stands
    global_step: int = 0  # optimizer steps done
    micro: int = 0  # micro-batches done: with the seed, it fixes every random draw of a step
    epoch: int = 1
    next_group: int = 0  # the next optimizer step within the epoch
    skipped_steps: int = 0
    loss_history: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    epoch_partial: list[float] = field(default_factory=list)  # this epoch's step losses so far
    val_losses: dict[int, float] = field(default_factory=dict)
    lora_files: list[Path] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)
    stop_all: bool = False  # some process was asked to stop: all stop after the same step

    @property
    def stepped_params(self) -> list[torch.Tensor]:
        """What the optimizer steps: the fp32 masters under full_bf16/full_fp16, else the adapters."""
        return [m for _, m in self.masters.pairs] if self.masters is not None else self.trainable
