"""The LoRA trainer: one run spec in, LoRA files and a run record out. Read it top to bottom.

    Trainer(spec, run_dir)   fails fast (checkpoint header, dataset folders, output folder) before any
                             weights load                                              (here)
    run()                    setup → (restore state) → train, the run record around it  (lifecycle.py)
    setup()                  device → models → caches → adapters → optimizer            (lifecycle.py)
    train()                  epochs of optimizer steps; saves, samples, validation      (loop.py)
    _loss(batch, micro)      one micro-batch: its inputs (inputs.py), then the step math (step.py)
    save / save_state        LoRA files, state.pt, run_summary.json                     (state.py)
    fixed_loss / sample      evaluation                                                 (evaluation.py)

Architectures differ only in their `Arch` (arch.py: conditioning and layer names): SD15Trainer and
SDXLTrainer are this class with another `architecture`. Randomness is derived from (seed, step), never
from a running generator, so any step can be replayed on its own: the same seed gives the same files.
Fault injection for the tests attaches at one seam, `faults.install`, and is absent otherwise.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from lorafw import faults, speed
from lorafw.config.spec import RunSpec
from lorafw.data import dataset as dataset_mod
from lorafw.data.folders import scan
from lorafw.data.prefetch import Lookahead
from lorafw.errors import LorafwError
from lorafw.outputs.background import Writer
from lorafw.models.load import check_arch, inspect_base_model
from lorafw.optim.optimizers import evaluation_weights
from lorafw.paths import expand
from lorafw.trainers import evaluation, inputs, lifecycle, loop, state
from lorafw.trainers.arch import SD15, Arch
from lorafw.logs import log
from lorafw.outputs.result import RunResult
from lorafw.placement import resolve_device
from lorafw.run_folder import check_disk, ensure_writable, prepare_run_dir
from lorafw.trainers.distributed import Comm, World, init_process_group
from lorafw.trainers.signals import StopRequests
from lorafw.objective.prediction import resolve as resolve_objective, warnings_for as objective_warnings
from lorafw.trainers.step import StepConfig, diffusion_step


class Trainer:
    architecture: Arch = SD15

    @property
    def arch(self) -> str:
        return self.architecture.name

    def __init__(self, spec: RunSpec, run_dir: str | Path) -> None:
        # Fail fast, before any weights are read: wrong checkpoint, unusable dataset, unwritable folder.
        self.spec, self.run_dir = spec, Path(run_dir)
        self.world = World.from_env()  # data parallel: this process's rank among `size` (1 without a launcher)
        self.comm = Comm(self.world)
        self.main = self.world.is_main  # only the main process writes files and logs
        if self.world.size > 1 and spec.train.num_processes not in (1, self.world.size):
            raise LorafwError(f"train.num_processes={spec.train.num_processes} but {self.world.size} processes were "
                              f"launched; set train.num_processes={self.world.size} or launch that many")
        if not self.main:
            log.setLevel("ERROR")
        self.model_path = expand(spec.base_model.path)
        self.model_info = inspect_base_model(self.model_path)  # header only
        check_arch(self.model_info, spec.base_model.arch, spec.base_model.path)
        # ε or v, ZTSNR: what the checkpoint declares, checked against the spec (a contradiction stops here)
        self.objective = resolve_objective(spec.train, self.model_info.prediction, f"base_model.path={spec.base_model.path}")
        if spec.train.compile:
            from lorafw.trainers.compile import compile_problem

            problem = compile_problem(spec.train.compile_backend, resolve_device(spec.train.device))
            if problem:
                raise LorafwError(f"{problem}; or train it uncompiled: train.compile=false")
        folders, self.dataset_warnings = scan(spec.dataset)
        folders, self.lint_report = lifecycle.lint_folders(spec, folders, self.dataset_warnings)
        folders, self.val_data = lifecycle.hold_out(spec, folders)
        self.data = dataset_mod.build(folders, spec.dataset)
        t = spec.train
        # one optimizer step takes accumulation × processes batches (global batch = B × W × A)
        self.batches_per_step = t.gradient_accumulation_steps * self.world.size
        self.steps_per_epoch = self.data.steps_per_epoch(t.batch_size, self.batches_per_step)
        self.total_steps = self.steps_per_epoch * t.epochs
        self.train_te = spec.optimizer.text_encoder_lr > 0
        self.name = spec.output.name or "lora"
        self.resuming = spec.resume is not None
        if self.resuming:
            state.check_resumable(self.run_dir, self.world.size)
        init_process_group(self.world, cpu=resolve_device(t.device).type == "cpu")
        if self.main:
            prepare_run_dir(self.run_dir, spec.output.overwrite or self.resuming)
        self.comm.barrier()  # the folder exists (or the main process failed, and the launcher stops us all)
        if spec.dataset.cache_latents_to_disk:
            from lorafw.data.latents import default_cache_dir, latent_bytes

            cache_dir = expand(spec.dataset.cache_dir) if spec.dataset.cache_dir else default_cache_dir()
            ensure_writable(cache_dir, "the latent cache folder (dataset.cache_dir)")
            check_disk(cache_dir, latent_bytes(self.data), "the latent cache (dataset.cache_dir)")
        for w in self.dataset_warnings:
            log.warning(w)
        for w in objective_warnings(self.objective):
            log.warning(w)
        self.step_config = StepConfig.from_spec(t, self.objective.prediction)
        self.eval_config = StepConfig(prediction=self.objective.prediction)  # validation: plain noise, unweighted MSE
        # where the run stands (saved in state.pt, restored on resume)
        self.started_at = time.time()
        self.session_id = str(uuid.uuid4().int % 2**32)  # kohya's ss_session_id: a random integer below 2**32
        self.lora_files: list[Path] = []
        self.loss_history: list[float] = []
        self.epoch_losses: list[float] = []
        self.epoch_partial: list[float] = []  # this epoch's step losses so far
        self.global_step = 0  # optimizer steps done
        self.micro = 0  # micro-batches done: with the seed, it fixes every random draw of a step
        self.epoch, self.next_group = 1, 0  # where the data stands: epoch, next optimizer step within it
        self.skipped_steps = 0
        self.val_losses: dict[int, float] = {}
        self.samples: list[str] = []
        # LoRA files, state.pt, run.json and the summary written by a background thread (lorafw/outputs/background.py)
        self.writer = Writer(background=speed.on("async_save"))
        # signals: Ctrl-C / SIGTERM end the run after the current step (loop.stop_here)
        self.stop = StopRequests()
        self.stop_all = False  # some process was asked to stop (all stop after the same step)
        # made by setup
        self.masters = None  # full_bf16/full_fp16: fp32 master copies of the half-precision adapter weights
        self.ema = None
        self.te_stop_step: int | None = None  # optimizer.stop_text_encoder_training, in optimizer steps
        self.metrics = None
        self.renderer = None  # sample images, made on first use
        self.latent_cache = None
        self.model_hashes = None  # the base model's kohya hashes, computed in a thread (lifecycle.load_models)
        self.val_cache = None
        self.pixels_ahead: Lookahead | None = None  # uncached latents: the epoch's images decoded ahead
        self.text_cache: dict[int, dict[str, torch.Tensor]] | None = None
        self.val_text_cache: dict[int, dict[str, torch.Tensor]] | None = None  # held-out captions, encoded with them
        self.record: dict[str, Any] = {
            "status": "created",
            "arch": self.arch,
            "plan": {
                "validation_images": len(self.val_data.images) if self.val_data else 0,
                "images": len(self.data.images),
                "items_per_epoch": self.data.n_items,
                "processes": self.world.size,
                "global_batch": t.batch_size * self.batches_per_step,
                "steps_per_epoch": self.steps_per_epoch,
                "total_steps": self.total_steps,
                "buckets": dataset_mod.bucket_histogram(self.data),
            },
            "objective": {"prediction_type": self.objective.prediction, "source": self.objective.source,
                          "zero_terminal_snr": self.objective.zero_terminal_snr, "ztsnr_source": self.objective.ztsnr_source},
        }
        faults.install(self)  # tests only (LORAFW_FAULT / LORAFW_TRACE); does nothing otherwise

    # -- lifecycle -------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        return lifecycle.run(self)

    def setup(self) -> None:
        lifecycle.setup(self)

    def train(self) -> None:
        loop.train(self)

    # -- one step --------------------------------------------------------------------------------------------
    def _optimizer_step(self, group: list[list[int]]) -> None:
        loop.optimizer_step(self, group)

    def _loss(self, batch: list[int], micro: int) -> torch.Tensor:
        """The loss of one batch; its randomness depends only on (seed, micro-step)."""
        seed = inputs.step_seed(self.spec.seed, micro)
        rng = random.Random(seed)
        flips = inputs.flips(self.data, batch, rng)
        captions = [self.data.caption(i, rng) for i in batch]
        latents = inputs.latents(self, batch, flips)
        gen = torch.Generator(device=self.device).manual_seed(seed % (2**63))  # noise and timesteps
        n = self.spec.network
        if n.dropout or n.rank_dropout or n.module_dropout:
            torch.manual_seed(seed % (2**63))  # adapter dropouts
        with self.amp.autocast():
            cond = inputs.conditioning(self, captions, batch, flips)
        mask = inputs.masks(self, batch, flips, tuple(latents.shape[-2:])) if self.spec.dataset.masked_loss else None
        weights = torch.tensor([self.data.loss_weight(i) for i in batch]) if self.data.n_reg_items else None
        return diffusion_step(self.unet, self.noise_scheduler, latents, cond, gen, self.step_config, mask=mask,
                              weights=weights, dtype=self.wdtype, autocast=self.amp.autocast).loss

    def _pixel_lookahead(self, groups: list[list[list[int]]]) -> Lookahead:
        return inputs.pixel_lookahead(self, groups)

    def _to_device(self, *models: torch.nn.Module) -> None:
        lifecycle.to_device(self, *models)

    # -- evaluation ------------------------------------------------------------------------------------------
    # A schedule-free optimizer is evaluated, sampled and saved at its averaged ("eval") weights and steps
    # from its "train" weights; evaluation_weights switches around each of these (a no-op otherwise).
    def fixed_loss(self, images: list[int] | None = None, seed: int = 0, draws: int = 4, data: Any = None,
                   cache: Any = None) -> float:
        with evaluation_weights(getattr(self, "optimizer", None)):
            return evaluation.fixed_loss(self, images, seed, draws, data, cache)

    def validation_loss(self) -> float:
        with evaluation_weights(getattr(self, "optimizer", None)):
            return evaluation.validation_loss(self)

    def sample(self, label: str) -> None:
        with evaluation_weights(getattr(self, "optimizer", None)):
            evaluation.sample(self, label)

    # -- files -----------------------------------------------------------------------------------------------
    def save(self, epoch: int, file_name: str | None = None) -> Path:
        with evaluation_weights(getattr(self, "optimizer", None)):
            return state.save(self, epoch, file_name)

    def save_state(self) -> None:
        state.save_state(self)

    def restore_state(self) -> None:
        state.restore_state(self)

    def write_summary(self) -> None:
        state.write_summary(self)
