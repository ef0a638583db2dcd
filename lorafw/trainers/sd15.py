"""The SD1.5-architecture LoRA trainer: one run spec in, LoRA files and a run record out.

Read it top to bottom: the constructor fails fast (checkpoint header, dataset folders, output
folder) before any weights load; `setup` loads models → caches latents → injects adapters →
builds the optimizer; `train` is the step loop; `save` writes NAME-NN.safetensors.
Randomness is derived from (seed, step), never from a running generator, so any step can be
replayed on its own: the same seed gives the same files.
"""

from __future__ import annotations

import json
import math
import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from lorafw.config.spec import RunSpec
from lorafw.paths import expand
from lorafw.data import dataset as dataset_mod
from lorafw.data.folders import fingerprint, scan
from lorafw.data.lint import lint, without
from lorafw.data.prefetch import Lookahead, resolve_workers
from lorafw import faults
from lorafw.errors import DatasetError, Interrupted, LorafwError, NonFiniteError
from lorafw.models.load import check_arch, inspect_base_model
from lorafw.outputs.metadata import TrainingFacts, build_metadata
from lorafw.outputs.metrics import Metrics
from lorafw.outputs.record import device_info, now_iso, read_record, versions, write_config, write_record
from lorafw.outputs.state import STATE, load_state, save_state
from lorafw.trainers.common import (
    RunResult,
    check_disk,
    diffusion_loss,
    ensure_writable,
    identity,
    log,
    prepare_run_dir,
    progress_bar,
    quiet,
    resolve_device,
    resolve_precision,
    to_device,
    weight_dtype,
)
from lorafw.trainers.distributed import Comm, World, init_process_group, main_first, shard, spans
from lorafw.trainers.signals import EXIT_CODES, StopRequests


class SD15Trainer:
    arch = "sd15"
    te_prefixes = ["lora_te"]

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
        if spec.train.compile:
            from lorafw.trainers.common import compile_problem

            problem = compile_problem(spec.train.compile_backend, resolve_device(spec.train.device))
            if problem:
                raise LorafwError(f"{problem}; or train it uncompiled: train.compile=false")
        folders, self.dataset_warnings = scan(spec.dataset)
        folders = self._lint(folders)
        folders, self.val_data = self._hold_out(folders)
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
            self._check_resumable()
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
        self.started_at = time.time()
        self.session_id = uuid.uuid4().hex[:16]
        self.lora_files: list[Path] = []
        self.loss_history: list[float] = []
        self.epoch_losses: list[float] = []
        self.epoch_partial: list[float] = []  # this epoch's step losses so far
        self.global_step = 0  # optimizer steps done
        self.micro = 0  # micro-batches done: with the seed, it fixes every random draw of a step
        self.epoch, self.next_group = 1, 0  # where the data stands: epoch, next optimizer step within it
        self.skipped_steps = 0
        self.stop = StopRequests()
        self.stop_all = False  # some process was asked to stop (all stop after the same step)
        self.masters = None
        self.ema = None
        self.metrics = None
        self.val_losses: dict[int, float] = {}
        self.samples: list[str] = []
        self.latent_cache = None
        self.val_cache = None
        self.pixels_ahead: Lookahead | None = None  # uncached latents: the epoch's images decoded ahead
        self.text_cache: dict[int, dict[str, torch.Tensor]] | None = None
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
        }

    def _check_resumable(self) -> None:
        """Before anything is written: the saved state must come from as many processes as this run has (the
        order of the data, batch by batch, depends on it)."""
        saved = (read_record(self.run_dir) or {}).get("state") or {}
        by = int(saved["processes"]) if "processes" in saved else int(load_state(self.run_dir).get("processes", 1))
        if by != self.world.size:
            raise LorafwError(f"{self.run_dir / STATE} was saved by {by} process(es), this run has {self.world.size}: the "
                              f"data order depends on it; resume with train.num_processes={by}")

    def _hold_out(self, folders: list) -> tuple[list, Any]:
        """Validation images: a held-out folder, or a fraction of the training images chosen by the seed."""
        import dataclasses

        v, ds = self.spec.validation, self.spec.dataset
        if v.root:
            vspec = dataclasses.replace(ds, root=v.root, folders=(), reg_root=None, default_repeats=1)
            vfolders, _ = scan(vspec)
            return folders, dataset_mod.build(vfolders, vspec)
        if not v.split:
            return folders, None
        images = [(fi, e) for fi, f in enumerate(folders) if not f.is_reg for e in f.images]
        k = max(1, round(len(images) * v.split))
        if k >= len(images):
            raise DatasetError(f"validation.split={v.split:g} would hold out all {len(images)} training images")
        chosen = set(random.Random(dataset_mod.derive_seed(self.spec.seed, "validation")).sample(range(len(images)), k))
        held = {images[i][1].path for i in chosen}
        train = [dataclasses.replace(f, images=tuple(e for e in f.images if e.path not in held)) for f in folders]
        val = [dataclasses.replace(f, images=tuple(e for e in f.images if e.path in held), repeats=1) for f in folders]
        return [f for f in train if f.images], dataset_mod.build([f for f in val if f.images], ds)

    def _lint(self, folders: list) -> list:
        """Decode every image once before training: damaged files stop the run here, not hours in."""
        report = lint(folders, self.spec.dataset, deep=True)
        self.lint_report = report
        self.dataset_warnings += report.lines() if report.warnings else []
        if report.errors:
            bad = sorted(report.bad_paths())
            if not self.spec.dataset.skip_bad_images:
                listing = "\n  ".join(f"{f.paths[0]} ({f.detail})" for f in report.errors)
                raise DatasetError(
                    f"{len(bad)} image(s) cannot be decoded:\n  {listing}\nremove or replace them, or set "
                    "dataset.skip_bad_images=true to train without them"
                )
            self.dataset_warnings.append(f"left out {len(bad)} image(s) that cannot be decoded: {', '.join(map(str, bad))}")
            folders = without(folders, set(bad))
            if not any(f.images for f in folders if not f.is_reg):
                raise DatasetError("no training image can be decoded")
        return folders

    # ---------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """setup → (restore state) → train, with the run record written before and after (also on failure)."""
        self.started_at = time.time()
        previous = read_record(self.run_dir) if self.resuming else None
        self.record.update(status="running", started_at=(previous or {}).get("started_at") or now_iso(),
                           versions=versions(), dataset=fingerprint(self.data.folders), lint=self.lint_report.to_json())
        if self.main:
            write_config(self.run_dir, self.spec)
            write_record(self.run_dir, self.record)
        try:
            with self.stop:
                self.setup()
                if self.resuming:
                    self._restore_state()
                if self.main:
                    self.metrics = Metrics(self.run_dir, self.spec.log, self.global_step if self.resuming else 0)
                self.train()
            self.record["status"] = "finished"
        except Interrupted:
            self.record["status"] = "interrupted"
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once; every file written so far is whole
            self.record["status"] = "interrupted"
            state = (self.run_dir / STATE).is_file()
            raise Interrupted(
                f"interrupted at step {self.global_step} of {self.total_steps}; complete files: "
                + (", ".join(p.name for p in self.lora_files) or "none")
                + (f"\ncontinue from the last saved state with: lorafw resume {self.run_dir}" if state else "")
            ) from None
        except BaseException as e:
            self.record["status"] = f"failed: {type(e).__name__}: {e}"
            raise
        finally:
            self.record.update(
                finished_at=now_iso(),
                wall_time_s=round(time.time() - self.started_at, 2),
                steps=self.global_step,
                skipped_steps=self.skipped_steps,
                epoch_losses=self.epoch_losses,
                final_loss=self.epoch_losses[-1] if self.epoch_losses else None,
                lora_files=[p.name for p in self.lora_files],
            )
            if self.main:
                write_record(self.run_dir, self.record)
            if self.metrics is not None:
                self.metrics.close()
            self.write_summary()
        return RunResult(self.run_dir, self.spec, list(self.lora_files), list(self.loss_history), list(self.epoch_losses),
                         self.global_step, time.time() - self.started_at, list(self.dataset_warnings), dict(self.val_losses))

    # ---------------------------------------------------------------------------------------
    def setup(self) -> None:
        self._setup_device()
        self._setup_models()
        self._setup_data()  # needs the VAE; runs before the adapters exist
        self._models_to_device()
        self._setup_network()  # after the weights are loaded, so adapters wrap the real layers
        self._setup_optim()

    def _setup_device(self) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed

        t = self.spec.train
        self.device = resolve_device(t.device)
        if self.world.size > 1:
            from accelerate import PartialState

            self.device = PartialState().device  # this process's GPU (cuda:LOCAL_RANK), or the CPU
        self.precision, note = resolve_precision(t, self.device)
        if note:
            log.info(note)
        # accelerate keeps one state per process; a notebook's second run may want another precision
        AcceleratorState._reset_state()
        # Accumulation is counted here, per epoch (see train()), not by accelerate: without a prepared
        # DataLoader accelerate cannot see an epoch end, and leftover batches would spill into the next epoch.
        self.accelerator = Accelerator(mixed_precision=self.precision, cpu=self.device.type == "cpu")
        set_seed(self.spec.seed)
        self.record["device"] = device_info(self.device) | {"precision": self.precision}
        log.info(f"device {self.device}, precision {self.precision}"
                 + (f", {self.world.size} data-parallel processes" if self.world.size > 1 else ""))

    def _setup_models(self) -> None:
        from lorafw.models.load import load_components

        bm = self.spec.base_model
        vae = expand(bm.vae) if bm.vae else None
        c = load_components(self.model_path, vae, expected_arch=self.arch)
        self.unet, self.vae, self.text_encoders, self.tokenizers = c.unet, c.vae, c.text_encoders, c.tokenizers
        self.noise_scheduler = c.noise_scheduler
        self.wdtype = weight_dtype(self.precision)
        vae_dtype = torch.float32 if self.spec.train.no_half_vae else self.wdtype
        self.vae.to(self.device)
        if self.vae.dtype != vae_dtype:
            with quiet("diffusers"):
                self.vae.to(dtype=vae_dtype)
        # The UNet and text encoders reach the device after the latents are cached (_to_device): while the
        # VAE encodes, it has the device to itself.
        if self.spec.train.attention == "xformers":
            try:
                self.unet.enable_xformers_memory_efficient_attention()
            except Exception as e:  # xformers missing or unusable on this device
                raise LorafwError(f"train.attention=xformers: {e}; use train.attention=sdpa") from None
        log.info(f"loaded {self.model_info.describe()} from {self.model_path.name}")

    def _models_to_device(self) -> None:
        """After caching: the UNet, and the text encoders unless their outputs are cached (the VAE stays off the
        device when latents are cached)."""
        self._to_device(self.unet, *([] if self.text_cache is not None else self.text_encoders))

    def _to_device(self, *models: torch.nn.Module) -> None:
        """Frozen weights onto the training device in the run's dtype (checkpoints ship fp16 or fp32; fp32 on CPU)."""
        with quiet("diffusers"):  # diffusers warns about casting even when nothing must stay fp32
            for m in models:
                m.to(self.device, dtype=self.wdtype)

    def _setup_data(self) -> None:
        from lorafw.data.latents import LatentCache, default_cache_dir

        ds = self.spec.dataset
        self.latent_cache = None
        self.loader_workers = resolve_workers(ds.workers, self.device.type)
        if ds.cache_latents:
            disk = (expand(ds.cache_dir) if ds.cache_dir else default_cache_dir()) if ds.cache_latents_to_disk else None
            cache = LatentCache(self.data, self.vae, self.vae.config.scaling_factor, self.device, self.vae.dtype, disk,
                                batch_size=ds.vae_batch_size, masks=ds.masked_loss, workers=self.loader_workers)
            # with a disk cache the main process encodes and writes; the others then read its files
            with main_first(self.comm if disk else Comm(World())), \
                    progress_bar(self.main, total=len(cache.wanted()), desc="caching latents", unit="img", leave=False) as bar:
                stats = cache.build(bar.update)
            self.latent_cache = cache
            log.info(f"latents: {stats.encoded} encoded, {stats.reused} reused from {disk}" if disk else f"latents: {stats.encoded} encoded")
        if self.val_data is not None:  # held-out latents, always in memory: the set is small
            self.val_cache = LatentCache(self.val_data, self.vae, self.vae.config.scaling_factor, self.device, self.vae.dtype,
                                         batch_size=ds.vae_batch_size, workers=self.loader_workers)
            self.val_cache.build()
            log.info(f"validation: {len(self.val_data.images)} held-out images")
        if ds.cache_latents:
            self.vae.to("cpu")  # not needed again during training: free the device memory
            self._place(self.latent_cache.latents, "latents")
            self._place(self.latent_cache.masks, "masks")
        self.text_cache: dict[int, dict[str, torch.Tensor]] | None = None
        if ds.cache_text_encoder_outputs:
            self._cache_text()
        log.info(
            f"{len(self.data.images)} images in {len(self.data.folders)} folder(s), {self.data.n_items} items per epoch, "
            f"{len(self.data.buckets)} bucket(s): {self.steps_per_epoch} steps/epoch, {self.total_steps} total"
        )

    @torch.no_grad()
    def _cache_text(self) -> None:
        """Encode every image's (unchanging) caption once; the frozen text encoders then leave the device."""
        idx = list(range(len(self.data.images)))
        cache: dict[int, dict[str, torch.Tensor]] = {}
        self._to_device(*self.text_encoders)
        with progress_bar(self.main, total=len(idx), desc="caching text", unit="img", leave=False) as bar:
            for start in range(0, len(idx), 16):
                chunk = idx[start : start + 16]
                with self.accelerator.autocast():
                    cond = self._encode_text([self.data.base_caption(i) for i in chunk])
                for j, i in enumerate(chunk):
                    cache[i] = {k: v[j].to("cpu") for k, v in cond.items()}
                bar.update(len(chunk))
        self.text_cache = cache
        flat = {(i, k): v for i, c in cache.items() for k, v in c.items()}
        self._place(flat, "text states")
        for (i, k), v in flat.items():
            cache[i][k] = v
        for te in self.text_encoders:
            te.to("cpu")
        log.info(f"text encoder outputs cached for {len(cache)} images")

    def _place(self, store: dict, what: str) -> None:
        """Cached tensors onto the GPU when they fit (no host-to-device copy per step), else pinned."""
        from lorafw.trainers.common import place_cache

        if not store:
            return
        keys = list(store)
        placed, where = place_cache([store[k] for k in keys], self.device)
        store.update(zip(keys, placed))
        if where != "host":
            log.info(f"cached {what} {where}")

    def _setup_network(self) -> None:
        from diffusers.training_utils import cast_training_params

        from lorafw.network.adapter import Network
        from lorafw.network.targets import unet_namer

        # peft creates adapters in their layer's dtype (half under mixed precision); they train in fp32,
        # which fp16 loss scaling requires and small updates need — or in bf16 with full_bf16, where the
        # optimizer keeps fp32 master copies (lorafw/optim/bf16.py).
        for m in (self.unet, *self.text_encoders):
            m.requires_grad_(False)
        self.network = Network(self.spec.network, self.unet, self.text_encoders, self.te_prefixes, self.train_te,
                               self._unet_namer(unet_namer))
        adapter_dtype = torch.bfloat16 if self.spec.train.full_bf16 else torch.float32
        cast_training_params([self.unet, *self.text_encoders], dtype=adapter_dtype)
        if self.spec.train.compile:
            from lorafw.trainers.common import compile_blocks

            n = compile_blocks(self.unet, self.spec.train.compile_backend)
            log.info(f"torch.compile ({self.spec.train.compile_backend}): {n} UNet blocks; the first steps of each "
                     "bucket size are slower while they compile")
        if self.spec.train.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
            if self.train_te:
                for te in self.text_encoders:
                    te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.unet.train()
        for te in self.text_encoders:
            te.train(self.train_te)
        log.info(f"{self.spec.network.algo}{' + DoRA' if self.spec.network.dora_wd else ''}: {len(self.network.entries)} "
                 f"adapted layers, {self.network.n_parameters() / 1e6:.2f}M trainable parameters")

    def _unet_namer(self, unet_namer):  # SD1.5 files name UNet layers the diffusers way
        return unet_namer(None)

    def _setup_optim(self) -> None:
        from lorafw.optim.optimizers import build_optimizer, describe
        from lorafw.optim.schedulers import build_scheduler, warmup_steps

        o = self.spec.optimizer
        groups = []
        if o.unet_lr > 0:
            groups.append({"params": list(self.network.parameters("unet")), "lr": o.unet_lr, "name": "unet"})
        else:
            for p in self.network.parameters("unet"):
                p.requires_grad_(False)
        if self.train_te:
            groups.append({"params": list(self.network.parameters("te")), "lr": o.text_encoder_lr, "name": "text_encoder"})
        self.trainable = [p for g in groups for p in g["params"]]
        self.comm.broadcast(self.trainable)  # every process starts from the main process's initial weights
        if self.spec.train.full_bf16:
            from lorafw.optim.bf16 import MasterWeights

            self.masters = MasterWeights(groups)
            groups = self.masters.groups
        optimizer = build_optimizer(o, groups)
        if self.spec.ema.enabled:
            from lorafw.optim.ema import EMA

            tracked = [m for _, m in self.masters.pairs] if self.masters is not None else self.trainable
            self.ema = EMA(tracked, self.spec.ema.decay, "cpu" if self.spec.ema.on_cpu else self.device)
        self.lr_scheduler = build_scheduler(self.spec.scheduler, optimizer, self.total_steps)
        self.optimizer = self.accelerator.prepare_optimizer(optimizer)  # fp16 loss scaling, accumulation
        self.warmup_steps = warmup_steps(self.spec.scheduler, self.total_steps) if self.spec.scheduler.name != "rex" else round(self.total_steps * (self.spec.scheduler.warmup_ratio or 0))
        self.optimizer_desc = describe(o)
        log.info(f"optimizer {self.optimizer_desc}, scheduler {self.spec.scheduler.name}")
        self._check_output_space()

    def _check_output_space(self) -> None:
        """Every LoRA file this run will write, plus the training state, must fit: checked before step 1."""
        n = self.network.n_parameters()
        per_file = n * {"fp16": 2, "bf16": 2, "fp32": 4}[self.spec.output.save_precision] + 200_000
        files = -(-self.spec.train.epochs // self.spec.output.save_every_n_epochs) + 1
        state = n * 4 * (4 if self.masters is None else 6) * 2  # weights, moments, masters; old + new copy
        check_disk(self.run_dir, files * per_file + state, "this run's LoRA files and training state (output.dir)")

    # ---------------------------------------------------------------------------------------
    def train(self) -> None:
        """The step loop: for each epoch, one optimizer step per `gradient_accumulation_steps × processes`
        batches (each data-parallel process trains its share of them)."""
        s, t, out = self.spec, self.spec.train, self.spec.output
        bar = progress_bar(self.main, total=self.total_steps, initial=self.global_step, desc="training", unit="step")
        while self.epoch <= t.epochs:
            epoch_start = time.time()
            bar.set_description(f"epoch {self.epoch}/{t.epochs}")
            batches = self.data.epoch_batches(s.seed, self.epoch, t.batch_size)
            groups = spans(batches, self.batches_per_step)
            self.pixels_ahead = self._pixel_lookahead(groups[self.next_group:]) if self.latent_cache is None else None
            try:
                while self.next_group < len(groups):
                    self._optimizer_step(groups[self.next_group])
                    self.next_group += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{self.loss_history[-1]:.4f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                    faults.kill_if("kill_at_step", self.global_step)
                    if self.stop_all or (not self.comm.active and self.stop.requested):
                        self._stop_here()
                    if out.save_state_every_n_steps and self.global_step % out.save_state_every_n_steps == 0:
                        self.save_state()
                    if s.sample.every_n_steps and self.global_step % s.sample.every_n_steps == 0:
                        self.sample(f"{self.name}-step{self.global_step:06d}")
            finally:
                if self.pixels_ahead is not None:
                    self.pixels_ahead.close()
                    self.pixels_ahead = None
            self.epoch_losses.append(sum(self.epoch_partial) / max(1, len(self.epoch_partial)))
            self.epoch_partial = []
            done = self.epoch
            val = None
            if self.val_data is not None and (done % s.validation.every_n_epochs == 0 or done == t.epochs):
                val = self.validation_loss()
                self.val_losses[done] = val
            log.info(f"epoch {done}/{t.epochs}: mean loss {self.epoch_losses[-1]:.4f}"
                     + (f", validation loss {val:.4f}" if val is not None else "")
                     + f", step {self.global_step}/{self.total_steps}, {time.time() - epoch_start:.1f}s")
            if self.metrics is not None:
                self.metrics.epoch(self.global_step, done, self.epoch_losses[-1], val)
            if done % out.save_every_n_epochs == 0 or done == t.epochs:
                self.save(done)
            if s.sample.every_n_epochs and (done % s.sample.every_n_epochs == 0 or done == t.epochs):
                self.sample(f"{self.name}-{done:02d}")
            self.write_summary()
            self.epoch, self.next_group = done + 1, 0
            if (out.save_state_every_n_epochs and done % out.save_state_every_n_epochs == 0) or done == t.epochs:
                self.save_state()
        bar.close()

    def _optimizer_step(self, group: list[list[int]]) -> None:
        """One optimizer step over `group` (its batches' gradients accumulated, and summed over the
        data-parallel processes, each taking its share of the batches), checked for NaN/inf.

        The losses stay on the device until the step's one host read (loss and gradient norm together,
        after the backward passes): the GPU is never stalled between micro-batches, and a NaN/inf is
        still caught before the optimizer lets it reach the weights."""
        t = self.spec.train
        first_micro, n = self.micro, len(group)
        local = torch.zeros((), device=self.device)
        for j in shard(n, self.world.rank, self.world.size):
            loss = self._loss(group[j], first_micro + j) / n  # batch j keeps its draws whatever process takes it
            faults.trace("batch", rank=self.world.rank, epoch=self.epoch, step=self.global_step + 1, micro=first_micro + j,
                         items=group[j])
            if faults.hit("nan_at_step", self.global_step + 1):
                loss = loss * float("nan")
            self.accelerator.backward(loss)
            local += loss.detach().float()
        self.comm.sum_grads(self.trainable)  # a NaN anywhere reaches every process's gradients
        scaler = self.accelerator.scaler  # fp16: inf gradients are the loss scaler's business (it skips the step)
        norm = self.accelerator.clip_grad_norm_(self.trainable, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
        norm_t = norm.detach().float().reshape(()) if isinstance(norm, torch.Tensor) else torch.tensor(
            float("nan") if norm is None else float(norm))
        value, norm_value = torch.stack([local, norm_t.to(local.device)]).tolist()  # the step's one host-device sync
        # one small all-reduce: the step's loss, whether any process saw NaN/inf, whether any was asked to stop
        step_loss, n_bad, n_stop = self.comm.sum([value, not math.isfinite(value), self.stop.requested])
        self.stop_all = n_stop > 0
        self.micro = first_micro + n
        if n_bad:
            return self._nonfinite("loss", value if not math.isfinite(value) else float("nan"), first_micro, n)
        if scaler is None and norm is not None and not math.isfinite(norm_value):
            return self._nonfinite("gradient norm", norm_value, first_micro, len(group))
        if self.masters is not None:  # full_bf16: step fp32 masters, round back stochastically
            self.masters.pull_grads()
            self.optimizer.step()
            seed = dataset_mod.derive_seed(self.spec.seed, "round", self.micro) % (2**63)
            self.masters.push(torch.Generator(device=self.device).manual_seed(seed))
            for p in self.trainable:
                p.grad = None
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        lrs = self._lrs()
        self.lr_scheduler.step()  # the schedule counts optimizer steps (what the guide's tables count)
        self.global_step += 1
        self.loss_history.append(step_loss)
        self.epoch_partial.append(step_loss)
        if self.metrics is not None:
            d = self.optimizer.param_groups[0].get("d")
            self.metrics.step(self.global_step, self.epoch, step_loss, lrs, float(d) if d is not None else None)

    def _lrs(self) -> dict[str, float]:
        return {g.get("name", f"group{i}"): float(g["lr"]) for i, g in enumerate(self.optimizer.param_groups)}

    def _nonfinite(self, what: str, value: float, first_micro: int, n: int) -> None:
        """A NaN/inf loss or gradient: stop with the weights of the last good step saved, or skip the step."""
        self.optimizer.zero_grad(set_to_none=True)
        for p in self.trainable:
            p.grad = None
        step = self.global_step + 1
        if self.spec.train.on_nonfinite == "skip":
            self.micro = first_micro + n  # later steps draw what they would have drawn
            self.skipped_steps += 1
            self.lr_scheduler.step()
            self.global_step += 1
            self.loss_history.append(float("nan"))
            log.warning(f"step {step}: the {what} is {value}; step skipped ({self.skipped_steps} so far)")
            return
        self.micro = first_micro
        self.save_state()  # the weights as they were after step {step - 1}: resumable with other settings
        raise NonFiniteError(
            f"step {step} (epoch {self.epoch}): the {what} is {value}. The weights are those after step {step - 1}; "
            f"every epoch saved so far is kept ({', '.join(p.name for p in self.lora_files) or 'none yet'}). "
            "Usual causes: the VAE overflowing in fp16 (train.no_half_vae=true), a learning rate too high "
            f"(optimizer.lr={self.spec.optimizer.lr:g}), fp16 where bf16 is needed (train.mixed_precision=bf16). "
            f"Continue with other settings: lorafw resume {self.run_dir} --force optimizer.lr=...; "
            "or skip such steps: train.on_nonfinite=skip"
        )

    def _stop_here(self) -> None:
        """After the current step, on Ctrl-C/SIGTERM: save state and a usable LoRA, then stop."""
        signum = self.stop.signum
        self.save_state()
        path = self.save(self.epoch, file_name=f"{self.name}-step{self.global_step:06d}.safetensors")
        err = Interrupted(
            f"stopped at step {self.global_step} of {self.total_steps} (epoch {self.epoch}) on "
            f"{signal.Signals(signum).name if signum else 'request'}; saved {path.name} and the training state.\n"
            f"continue with: lorafw resume {self.run_dir}"
        )
        err.exit_code = EXIT_CODES.get(signum, 130)  # type: ignore[arg-type]
        raise err

    @torch.no_grad()
    def sample(self, label: str) -> None:
        """Render the sample prompts with the weights as they are now: RUN_DIR/samples/LABEL_NN.png."""
        from lorafw.sampling.prompts import a1111_parameters, fallback_prompt, parse_line, read_prompts
        from lorafw.sampling.render import Renderer, save_png

        if not self.main:
            return
        s = self.spec
        prompts = read_prompts(s.sample, s.dataset.resolution)
        if not prompts:
            prompts = [parse_line(fallback_prompt(self.data.triggers(), self.data.tag_frequency()), s.sample, s.dataset.resolution)]
        if getattr(self, "_renderer", None) is None:
            self._renderer = Renderer(self.arch, self.unet, self.vae, self.text_encoders, self.tokenizers, self.noise_scheduler,
                                      s.train.max_token_length, s.train.clip_skip, self.device)
        modules = [self.unet, *self.text_encoders]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            for i, p in enumerate(prompts):
                with self.accelerator.autocast():
                    img = self._renderer.render(p, s.sample.sampler)
                path = self.run_dir / "samples" / f"{label}_{i:02d}.png"
                save_png(img, path, a1111_parameters(p, s.sample.sampler, {"Lora": label, "Step": str(self.global_step)}))
                self.samples.append(str(path.relative_to(self.run_dir)))
        finally:
            for m, mode in zip(modules, modes):
                m.train(mode)
        log.info(f"samples: {len(prompts)} image(s) for {label} in {self.run_dir / 'samples'}")

    # -- training state (lorafw resume) --------------------------------------------------------
    def save_state(self) -> None:
        if not self.main:  # every process holds the same weights and optimizer state
            return
        scaler = self.accelerator.scaler
        save_state(self.run_dir, {
            "processes": self.world.size,
            "spec": json.dumps(identity(self.spec), sort_keys=True),
            "epoch": self.epoch, "next_group": self.next_group, "global_step": self.global_step, "micro": self.micro,
            "skipped_steps": self.skipped_steps,
            "loss_history": torch.tensor(self.loss_history, dtype=torch.float64),
            "epoch_partial": torch.tensor(self.epoch_partial, dtype=torch.float64),
            "epoch_losses": torch.tensor(self.epoch_losses, dtype=torch.float64),
            "lora_files": [p.name for p in self.lora_files],
            "params": [p.detach().cpu().clone() for p in self.trainable],
            "masters": [m.detach().cpu().clone() for _, m in self.masters.pairs] if self.masters is not None else [],
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.lr_scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "val_losses": {str(k): v for k, v in self.val_losses.items()},
        })
        self.record["state"] = {"step": self.global_step, "epoch": self.epoch, "saved_at": now_iso(), "processes": self.world.size}
        write_record(self.run_dir, self.record)  # run.json says which state is on disk, even after a hard kill
        log.info(f"training state saved at step {self.global_step}")

    @torch.no_grad()
    def _restore_state(self) -> None:
        st = load_state(self.run_dir)
        saved_by = int(st.get("processes", 1))
        if saved_by != self.world.size:
            raise LorafwError(f"{self.run_dir / STATE} was saved by {saved_by} process(es), this run has {self.world.size}: "
                              f"the data order depends on it; resume with train.num_processes={saved_by}")
        params = st["params"]
        if len(params) != len(self.trainable) or any(a.shape != b.shape for a, b in zip(params, self.trainable)):
            raise LorafwError(f"{self.run_dir / STATE} does not fit this network (different network settings?)")
        for p, v in zip(self.trainable, params):
            p.copy_(v)
        if self.masters is not None:
            for (_, m), v in zip(self.masters.pairs, st["masters"]):
                m.copy_(v)
        self.optimizer.load_state_dict(st["optimizer"])
        self.lr_scheduler.load_state_dict(st["scheduler"])
        if st["scaler"] is not None and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(st["scaler"])
        self.epoch, self.next_group = int(st["epoch"]), int(st["next_group"])
        self.global_step, self.micro, self.skipped_steps = int(st["global_step"]), int(st["micro"]), int(st["skipped_steps"])
        self.loss_history = st["loss_history"].tolist()
        self.epoch_partial = st["epoch_partial"].tolist()
        self.epoch_losses = st["epoch_losses"].tolist()
        self.lora_files = [self.run_dir / n for n in st["lora_files"]]
        if self.ema is not None and st.get("ema") is not None:
            self.ema.load_state_dict(st["ema"])
        self.val_losses = {int(k): float(v) for k, v in (st.get("val_losses") or {}).items()}
        self.record.setdefault("resumes", []).append({"at_step": self.global_step, "at": now_iso()})
        log.info(f"resumed at step {self.global_step} of {self.total_steps} (epoch {self.epoch})")

    def _loss(self, batch: list[int], micro: int) -> torch.Tensor:
        """Noise-prediction loss of one batch; its randomness depends only on (seed, micro-step)."""
        s = self.spec
        seed = self._step_seed(micro)
        rng = random.Random(seed)
        flips = self._flips(batch, rng)
        captions = [self.data.caption(i, rng) for i in batch]
        latents = self._latents(batch, flips)
        gen = torch.Generator(device=self.device).manual_seed(seed % (2**63))
        if s.network.dropout > 0:
            torch.manual_seed(seed % (2**63))
        noise = torch.randn(latents.shape, generator=gen, device=self.device)
        if s.train.noise_offset:
            noise = noise + s.train.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=gen, device=self.device)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen, device=self.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        with self.accelerator.autocast():
            cond = self._conditioning(captions, batch, flips)
            pred = self.unet(noisy.to(self.wdtype), timesteps, **cond).sample
        mask = self._masks(batch, flips, tuple(latents.shape[-2:])) if s.dataset.masked_loss else None
        weights = torch.tensor([self.data.loss_weight(i) for i in batch]) if self.data.n_reg_items else None
        return diffusion_loss(pred, noise, timesteps, self.noise_scheduler, s.train.min_snr_gamma, mask, weights).mean()

    def _step_seed(self, micro: int) -> int:
        """Every random draw of micro-step `micro` (flips, captions, noise, timesteps) comes from this seed."""
        return dataset_mod.derive_seed(self.spec.seed, "step", micro)

    def _flips(self, batch: list[int], rng: random.Random) -> list[bool]:
        """The batch's flip draws: the first use of its (seed, micro-step) generator."""
        return [self.data.flip_allowed(i) and rng.random() < 0.5 for i in batch]

    def _pixel_lookahead(self, groups: list[list[list[int]]]) -> Lookahead:
        """Without cached latents: this process's batches of `groups` (with their flips, which depend only on
        the seed and micro-step) decoded on loader threads ahead of the step that encodes them."""
        keys, micro = [], self.micro
        for group in groups:
            for j in shard(len(group), self.world.rank, self.world.size):
                keys.append((tuple(group[j]), tuple(self._flips(group[j], random.Random(self._step_seed(micro + j))))))
            micro += len(group)
        return Lookahead(self._load_pixels, keys, self.loader_workers)

    def _load_pixels(self, key: tuple[tuple[int, ...], tuple[bool, ...]], data: Any = None) -> torch.Tensor:
        """A batch's pixels (pinned in host memory when they go to a GPU, so the copy can overlap)."""
        from lorafw.data.latents import load_pixels

        data = data if data is not None else self.data
        pixels = torch.stack([load_pixels(data.images[i], f) for i, f in zip(*key)])
        return pixels.pin_memory() if self.device.type == "cuda" else pixels

    def _masks(self, batch: list[int], flips: list[bool], size: tuple[int, int]) -> torch.Tensor:
        if self.latent_cache is not None:
            return to_device(torch.stack([self.latent_cache.get_mask(i, f) for i, f in zip(batch, flips)]), self.device)
        from lorafw.data.latents import load_mask

        return torch.stack([load_mask(self.data.images[i], f, self.data.folders[self.data.images[i].folder].mask_dir, size)
                            for i, f in zip(batch, flips)])

    def validation_loss(self) -> float:
        """The held-out images' loss, with noise and timesteps fixed: comparable across epochs and runs."""
        return self.fixed_loss(seed=0, draws=self.spec.validation.draws, data=self.val_data, cache=self.val_cache)

    @torch.no_grad()
    def fixed_loss(self, images: list[int] | None = None, seed: int = 0, draws: int = 4, data: Any = None,
                   cache: Any = None) -> float:
        """Mean loss over `images` of `data` (default: all training images) with captions unshuffled and noise
        and timesteps fixed by `seed`: the same weights always give the same number."""
        data, cache = (data, cache) if data is not None else (self.data, self.latent_cache)
        images = list(range(len(data.images))) if images is None else images
        modules = [self.unet, *self.text_encoders]
        modes = [m.training for m in modules]
        for m in modules:
            m.eval()
        total, n = 0.0, 0
        for i in [images[k] for k in shard(len(images), self.world.rank, self.world.size)]:
            z = self._latents([i], [False], data, cache)
            caption = [data.base_caption(i)]
            for d in range(draws):
                gen = torch.Generator(device=self.device).manual_seed(dataset_mod.derive_seed("eval", seed, i, d) % (2**63))
                noise = torch.randn(z.shape, generator=gen, device=self.device)
                t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (1,), generator=gen, device=self.device)
                with self.accelerator.autocast():
                    cond = self._conditioning(caption, [i], [False], data)
                    pred = self.unet(self.noise_scheduler.add_noise(z, noise, t).to(self.wdtype), t, **cond).sample
                total += diffusion_loss(pred, noise, t, self.noise_scheduler, None).item()
                n += 1
        for m, mode in zip(modules, modes):
            m.train(mode)
        total, n = self.comm.sum([total, n])
        return total / max(1, n)

    def _latents(self, batch: list[int], flips: list[bool], data: Any = None, cache: Any = None) -> torch.Tensor:
        data, cache = (data, cache) if data is not None else (self.data, self.latent_cache)
        if cache is not None:
            return to_device(torch.stack([cache.get(i, f) for i, f in zip(batch, flips)]), self.device)
        key = (tuple(batch), tuple(flips))
        pixels = self.pixels_ahead.take(key) if self.pixels_ahead is not None and data is self.data else None
        if pixels is None:
            pixels = self._load_pixels(key, data)
        with torch.no_grad():
            z = self.vae.encode(pixels.to(self.device, self.vae.dtype, non_blocking=True)).latent_dist.sample()
        return (z * self.vae.config.scaling_factor).float()

    def _conditioning(self, captions: list[str], batch: list[int], flips: list[bool], data: Any = None) -> dict[str, Any]:
        """UNet keyword arguments for a batch of `data` (default: the training set): its cached text states
        (or its captions encoded now)."""
        data = data if data is not None else self.data
        if self.text_cache is not None and data is self.data:
            cached = [self.text_cache[i] for i in batch]
            text = {k: to_device(torch.stack([c[k] for c in cached]), self.device) for k in cached[0]}
        else:
            with torch.set_grad_enabled(self.train_te):
                text = self._encode_text(captions)
        return self._unet_kwargs({k: v.to(self.wdtype) for k, v in text.items()}, batch, flips, data)

    def _unet_kwargs(self, text: dict[str, torch.Tensor], batch: list[int], flips: list[bool], data: Any) -> dict[str, Any]:
        return {"encoder_hidden_states": text["encoder_hidden_states"]}

    def _encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        """SD1.5: the (chunked, clip-skipped) CLIP-L states as `encoder_hidden_states`."""
        from lorafw.models.text import encode_sd15, tokenize

        t = self.spec.train
        ids = tokenize(self.tokenizers[0], captions, t.max_token_length)
        return {"encoder_hidden_states": encode_sd15(self.text_encoders[0], ids, t.clip_skip)}

    # ---------------------------------------------------------------------------------------
    def save(self, epoch: int, file_name: str | None = None) -> Path:
        from lorafw.outputs.lora_file import save_lora

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[self.spec.output.save_precision]
        facts = TrainingFacts(
            arch=self.arch, epoch=epoch, step=self.global_step, total_steps=self.total_steps,
            batches_per_epoch=self.data.batches_per_epoch(self.spec.train.batch_size), warmup_steps=self.warmup_steps,
            num_train_images=self.data.n_train_items, num_reg_images=self.data.n_reg_images, started_at=self.started_at, optimizer=self.optimizer_desc,
            mixed_precision=self.precision, tag_frequency=self.data.tag_frequency(),
            dataset_dirs=self.data.dataset_dirs(), bucket_info=self.data.bucket_info(), triggers=self.data.triggers(),
            session_id=self.session_id, processes=self.world.size,
        )
        path = self.run_dir / (file_name or f"{self.name}-{epoch:02d}.safetensors")
        if not self.main:  # the main process writes the (identical) weights
            if path not in self.lora_files:
                self.lora_files.append(path)
            return path
        exact = {id(p): m for p, m in self.masters.pairs} if self.masters is not None else None
        save_lora(path, self.network.kohya_state_dict(dtype, exact), build_metadata(self.spec, facts, self.name))
        faults.kill_if("kill_after_save")
        if path not in self.lora_files:
            self.lora_files.append(path)
        if self.ema is not None and file_name is None:
            tracked = [p for p, _ in self.masters.pairs] if self.masters is not None else self.trainable
            shadows = {id(p): sh for p, sh in zip(tracked, self.ema.shadows)}
            ema_path = path.with_name(f"{path.stem}-ema.safetensors")
            save_lora(ema_path, self.network.kohya_state_dict(dtype, shadows),
                      build_metadata(self.spec, facts, self.name) | {"ss_ema_decay": f"{self.spec.ema.decay:g}"})
        log.info(f"saved {path}")
        return path

    def write_summary(self) -> None:
        """run_summary.json: every saved epoch with its losses, and the best epochs (read by grid and compare)."""
        from lorafw.outputs.summary import write_summary

        if not self.main:
            return
        write_summary(self.run_dir, self.spec, self.arch, self.epoch_losses, self.val_losses, self.lora_files,
                      self.record.get("status", ""), self.global_step, time.time() - self.started_at, self.samples)
