"""The trainer: one run spec in, LoRA files and a run record out, the same for every model family. Read it top
to bottom.

    prepare(spec, run_dir)  preflight (header, objective, dataset, disk: before any weights load), then the
                            session (run folder, process group, run record)                     (preflight.py)
    Trainer.run()           setup → (restore state) → train, the run record written around it
    setup()                 device → models → caches → network → TrainState                    (setup.py)
    train()                 epochs of optimizer steps; saves, samples, validation at epoch ends
    _optimizer_step(group)  its micro-batches' losses and gradients, then the update           (loop.py: policies)
    _loss(batch, micro)     one micro-batch: its inputs (batch.py), then the step math          (step.py)
    save / save_state       LoRA files, state.pt, run_summary.json                              (checkpoint.py)

What differs between families is the `Architecture` (lorafw/archs/). Every random draw is derived from
(seed, micro-step), never from a running generator, so any step can be replayed on its own: the same seed gives
the same files. Fault injection for the tests attaches at one seam, `faults.install`, and is absent otherwise.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from lorafw import families, faults, speed
from lorafw.archs.protocol import Architecture, Models
from lorafw.config.spec import RunSpec
from lorafw.data.dataset import TrainData
from lorafw.data.folders import fingerprint
from lorafw.errors import Interrupted
from lorafw.heap import reuse_freed_memory
from lorafw.logs import log, progress_bar
from lorafw.objective.maxnorm import apply_max_norm
from lorafw.optim.optimizers import evaluation_weights
from lorafw.outputs.metrics import Metrics
from lorafw.outputs.record import now_iso, read_record, versions, write_config, write_record
from lorafw.outputs.result import RunResult
from lorafw.planning.budget import Budget, epoch_to_remove, step_file_name, step_to_remove
from lorafw.trainers import batch, checkpoint, evaluation, loop
from lorafw.trainers import setup as steps
from lorafw.trainers.context import Caches, Device, Plan, Session, TrainState
from lorafw.trainers.distributed import World, shard, spans
from lorafw.trainers.preflight import open_session, preflight
from lorafw.trainers.step import training_step


def prepare(spec: RunSpec, run_dir: str | Path) -> Trainer:
    """The trainer for `spec`: its family from the registry, the preflight checks, then the session."""
    arch, world, run_dir = families.get(spec.base_model.arch), World.from_env(), Path(run_dir)
    plan = preflight(spec, arch, run_dir, world)
    trainer = Trainer(spec, arch, plan, open_session(spec, arch, plan, run_dir, world))
    faults.install(trainer)  # tests only (LORAFW_FAULT / LORAFW_TRACE); does nothing otherwise
    return trainer


class Trainer:
    """Holds the run's typed parts; `setup` makes the ones that need the weights (dev, models, caches, state)."""

    def __init__(self, spec: RunSpec, arch: Architecture, plan: Plan, session: Session) -> None:
        self.spec, self.arch, self.plan, self.session = spec, arch, plan, session
        self.run_dir, self.data, self.val_data = session.run_dir, plan.data, plan.val_data
        self.metrics: Metrics | None = None
        self._renderer: Any = None  # the family's sampler, made at the first sample (only the main process samples)

    # -- run -------------------------------------------------------------------------------------------------
    def run(self) -> RunResult:
        """setup → (restore state) → train, with the run record written before and after (also on failure)."""
        s = self.session
        s.started_at = time.time()
        previous = read_record(self.run_dir) if self.plan.resuming else None
        if previous and "init_weights" in previous:  # the file this run started from (network.init_weights)
            s.record["init_weights"] = previous["init_weights"]
        s.record.update(status="running", started_at=(previous or {}).get("started_at") or now_iso(),
                        versions=versions(), dataset=fingerprint(self.data.folders), lint=self.plan.lint_report.to_json())
        if s.main:
            write_config(self.run_dir, self.spec)
            write_record(self.run_dir, s.record)
        try:
            with s.stop:
                self.setup()
                if self.plan.resuming:
                    checkpoint.restore_state(s, self.state, self.dev.amp, self.plan.total_steps)
                if s.main:
                    self.metrics = Metrics(self.run_dir, self.spec.log, self.state.global_step)
                self.train()
            s.record["status"] = "finished"
        except Interrupted:
            s.record["status"] = "interrupted"
            raise
        except KeyboardInterrupt:  # a second Ctrl-C: stop at once; every file written so far is whole
            s.record["status"] = "interrupted"
            raise Interrupted(loop.interrupted_message(s, getattr(self, "state", None), self.plan.total_steps)) from None
        except BaseException as e:
            s.record["status"] = f"failed: {type(e).__name__}: {e}"
            raise
        finally:
            self.cleanup()
        st = self.state
        return RunResult(self.run_dir, self.spec, list(st.lora_files), list(st.loss_history), list(st.epoch_losses),
                         st.global_step, time.time() - s.started_at, list(self.plan.dataset_warnings),
                         dict(st.val_losses))

    def cleanup(self) -> None:
        """After a run, however it ended: the writes in flight finished, the run record's final figures, the
        metrics closed, the summary."""
        s, st = self.session, getattr(self, "state", None)  # no state: the run failed during setup
        try:
            s.writer.wait()  # a finished run waited in train(); here the run failed or was interrupted mid-write
        except Exception as e:  # noqa: BLE001 - the run is already ending with its own error
            log.error(f"a file could not be written: {e}")
        losses = st.epoch_losses if st is not None else []
        s.record.update(finished_at=now_iso(), wall_time_s=round(time.time() - s.started_at, 2),
                        steps=st.global_step if st is not None else 0,
                        skipped_steps=st.skipped_steps if st is not None else 0, epoch_losses=losses,
                        final_loss=losses[-1] if losses else None,
                        lora_files=[p.name for p in st.lora_files] if st is not None else [])
        if s.main:
            write_record(self.run_dir, s.record)
        if self.metrics is not None:
            self.metrics.close()
        checkpoint.write_summary(self.spec, self.arch.name, s, st)
        s.writer.close()

    def setup(self) -> None:
        """Every part that needs the weights, in the order it must happen (setup.py)."""
        self.setup_models()
        self.setup_caches()  # needs the VAE; runs before the adapters exist
        self.setup_training()

    def setup_models(self) -> None:
        self.dev: Device = steps.make_device(self.spec, self.session)
        self.models: Models
        self.models, self.model_hashes = steps.load_models(self.spec, self.arch, self.plan, self.dev, self.session.main)

    def setup_caches(self) -> None:
        self.caches: Caches = steps.build_caches(self.spec, self.arch, self.plan, self.dev, self.models, self.session)
        steps.models_to_device(self.dev, self.models, self.caches)

    def setup_training(self) -> None:
        spec, train_te = self.spec, self.spec.optimizer.text_encoder_lr > 0
        network = steps.inject_network(spec, self.arch, self.dev, self.models, train_te,  # wraps the loaded layers
                                       resuming=self.plan.resuming)
        if network.started_from is not None:  # network.init_weights: what it started from (resume keeps the record)
            self.session.record["init_weights"] = network.started_from.record()
        self.state: TrainState = steps.build_state(spec, self.plan, self.dev, network, self.session.comm, train_te)
        steps.check_output_space(spec, self.plan, self.state, self.run_dir)

    # -- training --------------------------------------------------------------------------------------------
    def train(self) -> None:
        """For each epoch, one optimizer step per `gradient_accumulation_steps × processes` batches (each
        data-parallel process trains its share of them) until the step budget (the last epoch cut short when
        train.max_steps decides); at each epoch's end: validation, save, samples, state.
        On a CPU, memory freed during training is kept for the next step (lorafw/heap.py)."""
        with reuse_freed_memory(self.dev.device.type == "cpu" and speed.on("heap_reuse")):
            self._epochs()

    def _epochs(self) -> None:
        spec, t, out, st, s = self.spec, self.spec.train, self.spec.output, self.state, self.session
        name, caches, p = self.plan.name, self.caches, self.plan
        epochs, length = p.epochs, Budget(p.steps_per_epoch, p.epochs, p.total_steps)
        bar = progress_bar(s.main, total=self.plan.total_steps, initial=st.global_step, desc="training", unit="step")
        while st.epoch <= epochs:
            epoch_start = time.time()
            bar.set_description(f"epoch {st.epoch}/{epochs}")
            groups = spans(self.data.epoch_batches(spec.seed, st.epoch, t.batch_size), self.plan.batches_per_step)
            groups = groups[:length.steps_in_epoch(st.epoch)]  # the step budget may end this epoch early
            if caches.latents is None:  # this epoch's images decoded ahead on loader threads
                caches.pixels_ahead = batch.pixel_lookahead(self.dev, self.data, s.world, spec.seed, st.micro,
                                                            groups[st.next_group:])
            try:
                while st.next_group < len(groups):
                    self._optimizer_step(groups[st.next_group])
                    st.next_group += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{st.loss_history[-1]:.4f}", lr=f"{st.optimizer.param_groups[0]['lr']:.2e}")
                    if st.stop_all or (not s.comm.active and s.stop.requested):
                        loop.stop_here(spec, s, st, self.dev, self.plan.total_steps, name, self.save)
                    if out.save_every_n_steps and st.global_step % out.save_every_n_steps == 0:
                        self.save_step()
                    if out.save_state_every_n_steps and st.global_step % out.save_state_every_n_steps == 0:
                        self.save_state()
                    if spec.sample.every_n_steps and st.global_step % spec.sample.every_n_steps == 0:
                        self.sample(f"{name}-step{st.global_step:06d}")
            finally:
                if caches.pixels_ahead is not None:
                    caches.pixels_ahead.close()
                    caches.pixels_ahead = None
            st.epoch_losses.append(sum(st.epoch_partial) / max(1, len(st.epoch_partial)))
            st.epoch_partial = []
            done, val = st.epoch, None
            if self.val_data is not None and (done % spec.validation.every_n_epochs == 0 or done == epochs):
                val = st.val_losses[done] = self.validation_loss()
            log.info(f"epoch {done}/{epochs}: mean loss {st.epoch_losses[-1]:.4f}"
                     + (f", validation loss {val:.4f}" if val is not None else "")
                     + f", step {st.global_step}/{self.plan.total_steps}, {time.time() - epoch_start:.1f}s")
            if self.metrics is not None:
                self.metrics.epoch(st.global_step, done, st.epoch_losses[-1], val)
            with s.writer.held():  # the writer thread starts once the epoch's end is done
                if done % out.save_every_n_epochs == 0 or done == epochs:
                    self.save(done)
                    gone = epoch_to_remove(done, out.save_every_n_epochs, out.save_last_n_epochs)
                    if gone is not None and done != epochs:  # kohya's last file is never a reason to remove one
                        checkpoint.remove_lora(s, st, f"{name}-{gone:02d}.safetensors")
                if spec.sample.every_n_epochs and (done % spec.sample.every_n_epochs == 0 or done == epochs):
                    self.sample(f"{name}-{done:02d}")
                self.write_summary()
                st.epoch, st.next_group = done + 1, 0
                if (out.save_state_every_n_epochs and done % out.save_state_every_n_epochs == 0) or done == epochs:
                    self.save_state()
        s.writer.wait()  # the last epoch's files are on disk when train() returns
        bar.close()

    def _optimizer_step(self, group: list[list[int]]) -> None:
        """One optimizer step over `group` (its batches' gradients accumulated, and summed over the
        data-parallel processes, each taking its share of the batches), checked for NaN/inf.

        The losses stay on the device until the step's one host read (loss and gradient norm together,
        after the backward passes): the GPU is never stalled between micro-batches, and a NaN/inf is
        still caught before the optimizer lets it reach the weights."""
        spec, st, dev, s = self.spec, self.state, self.dev, self.session
        if st.te_stop_step is not None and st.global_step >= st.te_stop_step and st.train_te:
            loop.stop_text_encoder(st, self.models.text_encoders)
        first_micro, n = st.micro, len(group)
        local = torch.zeros((), device=dev.device)
        for j in shard(n, s.world.rank, s.world.size):
            loss = self._loss(group[j], first_micro + j) / n  # batch j keeps its draws whatever process takes it
            dev.amp.backward(loss)  # fp16: the loss scaled
            local += loss.detach().float()
        # Files handed to the writer before this step (an epoch's LoRA, state.pt) are written while its forward and
        # backward passes run, from the live optimizer state and weights: nothing changes them until here.
        s.writer.wait()
        s.comm.sum_grads(st.trainable)  # a NaN anywhere reaches every process's gradients
        if st.masters is not None:  # full_bf16/full_fp16: gradients into the fp32 masters, clipped and stepped
            st.masters.pull_grads()
        dev.amp.unscale(st.optimizer)  # fp16: back to true gradients before clipping (inf ones make the scaler skip)
        scaler, max_norm = dev.amp.scaler, spec.train.max_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(st.stepped_params, max_norm if max_norm > 0 else float("inf"))
        norm_t = norm.detach().float().reshape(()) if isinstance(norm, torch.Tensor) else torch.tensor(
            float("nan") if norm is None else float(norm))
        value, norm_value = torch.stack([local, norm_t.to(local.device)]).tolist()  # the step's one host sync
        # one small all-reduce: the step's loss, whether any process saw NaN/inf, whether any was asked to stop
        step_loss, n_bad, n_stop = s.comm.sum([value, not math.isfinite(value), s.stop.requested])
        st.stop_all = n_stop > 0
        st.micro = first_micro + n
        if n_bad:
            return loop.nonfinite(spec, s, st, dev, "loss", value if not math.isfinite(value) else float("nan"),
                                  first_micro, n)
        if scaler is None and norm is not None and not math.isfinite(norm_value):
            return loop.nonfinite(spec, s, st, dev, "gradient norm", norm_value, first_micro, len(group))
        stepped = loop.step_masters(spec.seed, dev, st) if st.masters is not None else dev.amp.step(st.optimizer)
        st.optimizer.zero_grad(set_to_none=True)
        if not stepped and dev.amp.overflowing():
            return loop.overflowing(spec, s, st, dev)
        norms = apply_max_norm(st.network, st.masters, spec.train.scale_weight_norms)  # kohya: after the step
        if st.ema is not None:
            st.ema.update()
        lrs = {g.get("name", f"group{i}"): float(g["lr"]) for i, g in enumerate(st.optimizer.param_groups)}
        st.lr_scheduler.step()  # the schedule counts optimizer steps (what the guide's tables count)
        st.global_step += 1
        st.loss_history.append(step_loss)
        st.epoch_partial.append(step_loss)
        if self.metrics is not None:
            d = st.optimizer.param_groups[0].get("d")
            self.metrics.step(st.global_step, st.epoch, step_loss, lrs, float(d) if d is not None else None, norms)

    def _loss(self, items: list[int], micro: int) -> torch.Tensor:
        """The loss of one batch; its randomness depends only on (seed, micro-step)."""
        spec, dev, models, data, caches = self.spec, self.dev, self.models, self.data, self.caches
        seed = batch.step_seed(spec.seed, micro)
        rng = random.Random(seed)
        flips = batch.flips(data, items, rng)
        captions = [data.caption(i, rng) for i in items]
        crops = batch.crops(data, items, seed)  # their own generator: the draws above are as without random_crop
        latents = batch.latents(dev, models, data, caches.latents, items, flips, caches.pixels_ahead, crops, seed)
        gen = torch.Generator(device=dev.device).manual_seed(seed % (2**63))  # noise and timesteps
        n = spec.network
        if n.dropout or n.rank_dropout or n.module_dropout:
            torch.manual_seed(seed % (2**63))  # adapter dropouts
        with dev.amp.autocast():
            cond = batch.conditioning(self.arch, models, dev, caches.text, data, captions, items, flips, spec.train,
                                      grad=self.state.train_te, crops=crops)
        mask = (batch.masks(dev, data, caches.latents, items, flips, tuple(latents.shape[-2:]), crops)
                if spec.dataset.masked_loss else None)
        weights = torch.tensor([data.loss_weight(i) for i in items]) if data.n_reg_items else None
        return training_step(self._denoise, models.noise_scheduler, latents, cond, gen, self.plan.step_config,
                              mask=mask, weights=weights, dtype=dev.wdtype, autocast=dev.amp.autocast).loss

    def _denoise(self, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return self.arch.denoise(self.models, x_t, t, cond)

    # -- evaluation and files: a schedule-free optimizer is evaluated, sampled and saved at its averaged ("eval")
    # weights and steps from its "train" weights; evaluation_weights switches around each (a no-op otherwise).
    def fixed_loss(self, images: list[int] | None = None, seed: int = 0, draws: int = 4, data: TrainData = None,
                   cache: Any = None) -> float:
        data = data if data is not None else self.data
        latent_cache = cache if cache is not None or data is not self.data else self.caches.latents
        text = batch.text_cache_for(self.caches, data, self.data, self.val_data)
        with evaluation_weights(self.state.optimizer):
            return evaluation.fixed_loss(self.spec, self.arch, self.models, self.dev, self.session.world,
                                         self.session.comm, self.plan.eval_config, data, latent_cache, text, images,
                                         seed, draws)

    def validation_loss(self) -> float:
        """The held-out images' loss, with noise and timesteps fixed: comparable across epochs and runs."""
        return self.fixed_loss(seed=0, draws=self.spec.validation.draws, data=self.val_data,
                               cache=self.caches.val_latents)

    def sample(self, label: str) -> None:
        if not self.session.main:
            return
        with evaluation_weights(self.state.optimizer):
            if self._renderer is None:
                self._renderer = self.arch.renderer(self.models, self.spec.train, self.dev.device,
                                                    parking=self.dev.parking)
            self.state.samples += evaluation.sample(self.spec, self.models, self._renderer, self.dev, self.data,
                                                    self.run_dir, label, self.state.global_step)

    def save(self, epoch: int, file_name: str | None = None) -> Path:
        with evaluation_weights(self.state.optimizer):
            return checkpoint.save_lora(self.spec, self.arch, self.plan, self.session, self.state,
                                        self.dev.precision, self.model_hashes, epoch, file_name)

    def save_step(self) -> None:
        """output.save_every_n_steps: NAME-stepNNNNNNNN.safetensors, and kohya's save_last_n_steps retention."""
        st, out = self.state, self.spec.output
        self.save(st.epoch, file_name=step_file_name(self.plan.name, st.global_step))
        gone = step_to_remove(st.global_step, out.save_every_n_steps or 1, out.save_last_n_steps)
        if gone is not None:
            checkpoint.remove_lora(self.session, st, step_file_name(self.plan.name, gone))

    def save_state(self) -> None:
        checkpoint.save_state(self.spec, self.session, self.state, self.dev.amp)

    def write_summary(self) -> None:
        checkpoint.write_summary(self.spec, self.arch.name, self.session, self.state)
