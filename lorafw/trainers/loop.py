"""The step loop: epochs of optimizer steps, what happens between them (saves, samples, validation, state),
and the policies around one optimizer step, each in its own function:

- `optimizer_step`: accumulate the micro-batches' gradients (each data-parallel process takes its share),
  sum them over processes, clip, one host read, then step.
- `nonfinite`: the NaN/inf policy (stop with the last good weights saved, or skip the step).
- `step_masters`: full_bf16/full_fp16 — step the fp32 master copies, write them back to the half weights.
- fp16: the loss scaler (tr.amp) scales the loss, unscales the gradients before clipping, and skips a step
  whose gradients overflowed; `overflowing` stops a run whose scale keeps collapsing, naming the fixes.
- EMA and the learning-rate schedule advance once per optimizer step.
- `stop_here`: Ctrl-C / SIGTERM — save state and a usable LoRA, then stop.
"""

from __future__ import annotations

import math
import signal
import time
from typing import TYPE_CHECKING

import torch

from lorafw import speed
from lorafw.data import dataset as dataset_mod
from lorafw.errors import Interrupted, NonFiniteError
from lorafw.heap import reuse_freed_memory
from lorafw.objective.maxnorm import apply_max_norm
from lorafw.precision import MAX_SKIPPED_IN_A_ROW, fp16_fixes
from lorafw.logs import log, progress_bar
from lorafw.trainers.distributed import shard, spans
from lorafw.trainers.signals import EXIT_CODES

if TYPE_CHECKING:
    from lorafw.trainers.trainer import Trainer


def train(tr: Trainer) -> None:
    """For each epoch, one optimizer step per `gradient_accumulation_steps × processes` batches (each
    data-parallel process trains its share of them); at each epoch's end: validation, save, samples, state.
    On a CPU, memory freed during training is kept for the next step (lorafw/heap.py)."""
    with reuse_freed_memory(tr.device.type == "cpu" and speed.on("heap_reuse")):
        epochs(tr)


def epochs(tr: Trainer) -> None:
    s, t, out = tr.spec, tr.spec.train, tr.spec.output
    bar = progress_bar(tr.main, total=tr.total_steps, initial=tr.global_step, desc="training", unit="step")
    while tr.epoch <= t.epochs:
        epoch_start = time.time()
        bar.set_description(f"epoch {tr.epoch}/{t.epochs}")
        batches = tr.data.epoch_batches(s.seed, tr.epoch, t.batch_size)
        groups = spans(batches, tr.batches_per_step)
        tr.pixels_ahead = tr._pixel_lookahead(groups[tr.next_group:]) if tr.latent_cache is None else None
        try:
            while tr.next_group < len(groups):
                tr._optimizer_step(groups[tr.next_group])
                tr.next_group += 1
                bar.update(1)
                bar.set_postfix(loss=f"{tr.loss_history[-1]:.4f}", lr=f"{tr.optimizer.param_groups[0]['lr']:.2e}")
                if tr.stop_all or (not tr.comm.active and tr.stop.requested):
                    stop_here(tr)
                if out.save_state_every_n_steps and tr.global_step % out.save_state_every_n_steps == 0:
                    tr.save_state()
                if s.sample.every_n_steps and tr.global_step % s.sample.every_n_steps == 0:
                    tr.sample(f"{tr.name}-step{tr.global_step:06d}")
        finally:
            if tr.pixels_ahead is not None:
                tr.pixels_ahead.close()
                tr.pixels_ahead = None
        tr.epoch_losses.append(sum(tr.epoch_partial) / max(1, len(tr.epoch_partial)))
        tr.epoch_partial = []
        done = tr.epoch
        val = None
        if tr.val_data is not None and (done % s.validation.every_n_epochs == 0 or done == t.epochs):
            val = tr.validation_loss()
            tr.val_losses[done] = val
        log.info(f"epoch {done}/{t.epochs}: mean loss {tr.epoch_losses[-1]:.4f}"
                 + (f", validation loss {val:.4f}" if val is not None else "")
                 + f", step {tr.global_step}/{tr.total_steps}, {time.time() - epoch_start:.1f}s")
        if tr.metrics is not None:
            tr.metrics.epoch(tr.global_step, done, tr.epoch_losses[-1], val)
        with tr.writer.held():  # the writer thread starts once the epoch's end is done
            if done % out.save_every_n_epochs == 0 or done == t.epochs:
                tr.save(done)
            if s.sample.every_n_epochs and (done % s.sample.every_n_epochs == 0 or done == t.epochs):
                tr.sample(f"{tr.name}-{done:02d}")
            tr.write_summary()
            tr.epoch, tr.next_group = done + 1, 0
            if (out.save_state_every_n_epochs and done % out.save_state_every_n_epochs == 0) or done == t.epochs:
                tr.save_state()
    tr.writer.wait()  # the last epoch's files are on disk when train() returns
    bar.close()


def optimizer_step(tr: Trainer, group: list[list[int]]) -> None:
    """One optimizer step over `group` (its batches' gradients accumulated, and summed over the
    data-parallel processes, each taking its share of the batches), checked for NaN/inf.

    The losses stay on the device until the step's one host read (loss and gradient norm together,
    after the backward passes): the GPU is never stalled between micro-batches, and a NaN/inf is
    still caught before the optimizer lets it reach the weights."""
    t = tr.spec.train
    if tr.te_stop_step is not None and tr.global_step >= tr.te_stop_step and tr.train_te:
        stop_text_encoder(tr)
    first_micro, n = tr.micro, len(group)
    local = torch.zeros((), device=tr.device)
    for j in shard(n, tr.world.rank, tr.world.size):
        loss = tr._loss(group[j], first_micro + j) / n  # batch j keeps its draws whatever process takes it
        tr.amp.backward(loss)  # fp16: the loss scaled
        local += loss.detach().float()
    # Files handed to the writer before this step (an epoch's LoRA, state.pt) are written while its forward and
    # backward passes run, from the live optimizer state and weights: nothing changes them until here.
    tr.writer.wait()
    tr.comm.sum_grads(tr.trainable)  # a NaN anywhere reaches every process's gradients
    if tr.masters is not None:  # full_bf16/full_fp16: the gradients into the fp32 masters, which are clipped and stepped
        tr.masters.pull_grads()
    stepped_params = [m for _, m in tr.masters.pairs] if tr.masters is not None else tr.trainable
    tr.amp.unscale(tr.optimizer)  # fp16: back to true gradients before clipping (inf ones make the scaler skip)
    scaler = tr.amp.scaler  # fp16: inf gradients are the loss scaler's business (it skips the step)
    norm = torch.nn.utils.clip_grad_norm_(stepped_params, t.max_grad_norm if t.max_grad_norm > 0 else float("inf"))
    norm_t = norm.detach().float().reshape(()) if isinstance(norm, torch.Tensor) else torch.tensor(
        float("nan") if norm is None else float(norm))
    value, norm_value = torch.stack([local, norm_t.to(local.device)]).tolist()  # the step's one host-device sync
    # one small all-reduce: the step's loss, whether any process saw NaN/inf, whether any was asked to stop
    step_loss, n_bad, n_stop = tr.comm.sum([value, not math.isfinite(value), tr.stop.requested])
    tr.stop_all = n_stop > 0
    tr.micro = first_micro + n
    if n_bad:
        return nonfinite(tr, "loss", value if not math.isfinite(value) else float("nan"), first_micro, n)
    if scaler is None and norm is not None and not math.isfinite(norm_value):
        return nonfinite(tr, "gradient norm", norm_value, first_micro, len(group))
    stepped = step_masters(tr) if tr.masters is not None else tr.amp.step(tr.optimizer)
    tr.optimizer.zero_grad(set_to_none=True)
    if not stepped and tr.amp.overflowing():
        return overflowing(tr)
    norms = apply_max_norm(tr.network, tr.masters, tr.spec.train.scale_weight_norms)  # kohya: after the step
    if tr.ema is not None:
        tr.ema.update()
    lrs = {g.get("name", f"group{i}"): float(g["lr"]) for i, g in enumerate(tr.optimizer.param_groups)}
    tr.lr_scheduler.step()  # the schedule counts optimizer steps (what the guide's tables count)
    tr.global_step += 1
    tr.loss_history.append(step_loss)
    tr.epoch_partial.append(step_loss)
    if tr.metrics is not None:
        d = tr.optimizer.param_groups[0].get("d")
        tr.metrics.step(tr.global_step, tr.epoch, step_loss, lrs, float(d) if d is not None else None, norms)


def stop_text_encoder(tr: Trainer) -> None:
    """optimizer.stop_text_encoder_training reached: the text encoders' adapters keep their weights and train no
    more (no gradients, so no optimizer updates or weight decay; the encoders run without dropout)."""
    for p in tr.network.parameters("te"):
        p.requires_grad_(False)
        p.grad = None
    for te in tr.text_encoders:
        te.eval()
    tr.train_te = False
    log.info(f"step {tr.global_step}: text encoder training stopped (optimizer.stop_text_encoder_training)")


def step_masters(tr: Trainer) -> bool:
    """full_bf16/full_fp16: the optimizer steps the fp32 master copies (their gradients pulled and clipped in
    optimizer_step); the half weights get them back: bf16 rounded stochastically (the rounding's randomness
    fixed by the seed and micro-step), fp16 to nearest. False when the loss scaler skipped the step."""
    stepped = tr.amp.step(tr.optimizer)
    if stepped:
        seed = dataset_mod.derive_seed(tr.spec.seed, "round", tr.micro) % (2**63)
        tr.masters.push(torch.Generator(device=tr.device).manual_seed(seed))
    for p in tr.trainable:
        p.grad = None
    return stepped


def overflowing(tr: Trainer) -> None:
    """fp16: the loss scaler skipped MAX_SKIPPED_IN_A_ROW steps in a row (every gradient overflows): stop,
    with the weights of the last good step saved, naming the fixes."""
    tr.skipped_steps += tr.amp.skipped_in_a_row
    tr.save_state()
    tr.writer.wait()
    raise NonFiniteError(
        f"step {tr.global_step + 1} (epoch {tr.epoch}): fp16 gradients overflowed in {MAX_SKIPPED_IN_A_ROW} steps in a "
        f"row (loss scale now {tr.amp.scaler.get_scale():g}); the weights are those of the last good step. "
        f"{fp16_fixes(tr.spec.optimizer.lr)}. Continue with other settings: lorafw resume {tr.run_dir} --force ..."
    )


def nonfinite(tr: Trainer, what: str, value: float, first_micro: int, n: int) -> None:
    """A NaN/inf loss or gradient: stop with the weights of the last good step saved, or skip the step."""
    tr.amp.abandon()
    tr.optimizer.zero_grad(set_to_none=True)
    for p in tr.trainable:
        p.grad = None
    step = tr.global_step + 1
    if tr.spec.train.on_nonfinite == "skip":
        tr.micro = first_micro + n  # later steps draw what they would have drawn
        tr.skipped_steps += 1
        tr.lr_scheduler.step()
        tr.global_step += 1
        tr.loss_history.append(float("nan"))
        log.warning(f"step {step}: the {what} is {value}; step skipped ({tr.skipped_steps} so far)")
        return
    tr.micro = first_micro
    tr.save_state()  # the weights as they were after step {step - 1}: resumable with other settings
    tr.writer.wait()
    causes = (fp16_fixes(tr.spec.optimizer.lr) + ". " if tr.precision == "fp16" else
              "Usual causes: the VAE overflowing in fp16 (train.no_half_vae=true), a learning rate too high "
              f"(optimizer.lr={tr.spec.optimizer.lr:g}), fp16 where bf16 is needed (train.mixed_precision=bf16). ")
    raise NonFiniteError(
        f"step {step} (epoch {tr.epoch}): the {what} is {value}. The weights are those after step {step - 1}; "
        f"every epoch saved so far is kept ({', '.join(p.name for p in tr.lora_files) or 'none yet'}). "
        + causes +
        f"Continue with other settings: lorafw resume {tr.run_dir} --force optimizer.lr=...; "
        "or skip such steps: train.on_nonfinite=skip"
    )


def stop_here(tr: Trainer) -> None:
    """After the current step, on Ctrl-C/SIGTERM: save state and a usable LoRA, then stop."""
    signum = tr.stop.signum
    tr.save_state()
    path = tr.save(tr.epoch, file_name=f"{tr.name}-step{tr.global_step:06d}.safetensors")
    tr.writer.wait()  # both on disk before the run stops
    err = Interrupted(
        f"stopped at step {tr.global_step} of {tr.total_steps} (epoch {tr.epoch}) on "
        f"{signal.Signals(signum).name if signum else 'request'}; saved {path.name} and the training state.\n"
        f"continue with: lorafw resume {tr.run_dir}"
    )
    err.exit_code = EXIT_CODES.get(signum, 130)  # type: ignore[arg-type]
    raise err
