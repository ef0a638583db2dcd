"""The policies around one optimizer step, each its own function taking what it reads and changes (the step
itself and the epoch loop read top to bottom in trainer.py):

- `step_masters`: full_bf16/full_fp16 — step the fp32 master copies, write them back to the half weights.
- `nonfinite`: the NaN/inf policy (stop with the last good weights saved, or skip the step).
- `overflowing`: fp16 — stop a run whose loss scale keeps collapsing, naming the fixes.
- `stop_text_encoder`: optimizer.stop_text_encoder_training reached.
- `stop_here`: Ctrl-C / SIGTERM — save state and a usable LoRA, then stop.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Callable

import torch

from lorafw.config.spec import RunSpec
from lorafw.data import dataset as dataset_mod
from lorafw.errors import Interrupted, NonFiniteError
from lorafw.logs import log
from lorafw.precision import MAX_SKIPPED_IN_A_ROW, fp16_fixes
from lorafw.trainers import checkpoint
from lorafw.trainers.context import Device, Session, TrainState
from lorafw.trainers.signals import EXIT_CODES


def stop_text_encoder(state: TrainState, text_encoders: list[torch.nn.Module]) -> None:
    """optimizer.stop_text_encoder_training reached: the text encoders' adapters keep their weights and train no
    more (no gradients, so no optimizer updates or weight decay; the encoders run without dropout)."""
    for p in state.network.parameters("te"):
        p.requires_grad_(False)
        p.grad = None
    for te in text_encoders:
        te.eval()
    state.train_te = False
    log.info(f"step {state.global_step}: text encoder training stopped (optimizer.stop_text_encoder_training)")


def step_masters(seed: int, dev: Device, state: TrainState) -> bool:
    """full_bf16/full_fp16: the optimizer steps the fp32 master copies (their gradients pulled and clipped
    before); the half weights get them back: bf16 rounded stochastically (the rounding's randomness fixed by the
    seed and micro-step), fp16 to nearest. False when the loss scaler skipped the step."""
    stepped = dev.amp.step(state.optimizer)
    if stepped:
        rseed = dataset_mod.derive_seed(seed, "round", state.micro) % (2**63)
        state.masters.push(torch.Generator(device=dev.device).manual_seed(rseed))
    for p in state.trainable:
        p.grad = None
    return stepped


def overflowing(spec: RunSpec, session: Session, state: TrainState, dev: Device) -> None:
    """fp16: the loss scaler skipped MAX_SKIPPED_IN_A_ROW steps in a row (every gradient overflows): stop,
    with the weights of the last good step saved, naming the fixes."""
    state.skipped_steps += dev.amp.skipped_in_a_row
    checkpoint.save_state(spec, session, state, dev.amp)
    session.writer.wait()
    raise NonFiniteError(
        f"step {state.global_step + 1} (epoch {state.epoch}): fp16 gradients overflowed in {MAX_SKIPPED_IN_A_ROW} "
        f"steps in a row (loss scale now {dev.amp.scaler.get_scale():g}); the weights are those of the last good "
        f"step. {fp16_fixes(spec.optimizer.lr)}. Continue with other settings: lorafw resume {session.run_dir} "
        "--force ..."
    )


def nonfinite(spec: RunSpec, session: Session, state: TrainState, dev: Device, what: str, value: float,
              first_micro: int, n: int) -> None:
    """A NaN/inf loss or gradient: stop with the weights of the last good step saved, or skip the step."""
    dev.amp.abandon()
    state.optimizer.zero_grad(set_to_none=True)
    for p in state.trainable:
        p.grad = None
    step = state.global_step + 1
    if spec.train.on_nonfinite == "skip":
        state.micro = first_micro + n  # later steps draw what they would have drawn
        state.skipped_steps += 1
        state.lr_scheduler.step()
        state.global_step += 1
        state.loss_history.append(float("nan"))
        log.warning(f"step {step}: the {what} is {value}; step skipped ({state.skipped_steps} so far)")
        return
    state.micro = first_micro
    checkpoint.save_state(spec, session, state, dev.amp)  # the weights after step {step - 1}: resumable
    session.writer.wait()
    lr = spec.optimizer.lr
    causes = (fp16_fixes(lr) + ". " if dev.precision == "fp16" else
              "Usual causes: the VAE overflowing in fp16 (train.no_half_vae=true), a learning rate too high "
              f"(optimizer.lr={lr:g}), fp16 where bf16 is needed (train.mixed_precision=bf16). ")
    raise NonFiniteError(
        f"step {step} (epoch {state.epoch}): the {what} is {value}. The weights are those after step {step - 1}; "
        f"every epoch saved so far is kept ({', '.join(p.name for p in state.lora_files) or 'none yet'}). "
        + causes +
        f"Continue with other settings: lorafw resume {session.run_dir} --force optimizer.lr=...; "
        "or skip such steps: train.on_nonfinite=skip"
    )


def stop_here(spec: RunSpec, session: Session, state: TrainState, dev: Device, total_steps: int, name: str,
              save: Callable[..., Path]) -> None:
    """After the current step, on Ctrl-C/SIGTERM: save state and a usable LoRA (through `save`), then stop."""
    signum = session.stop.signum
    checkpoint.save_state(spec, session, state, dev.amp)
    path = save(state.epoch, file_name=f"{name}-step{state.global_step:06d}.safetensors")
    session.writer.wait()  # both on disk before the run stops
    err = Interrupted(
        f"stopped at step {state.global_step} of {total_steps} (epoch {state.epoch}) on "
        f"{signal.Signals(signum).name if signum else 'request'}; saved {path.name} and the training state.\n"
        f"continue with: lorafw resume {session.run_dir}"
    )
    err.exit_code = EXIT_CODES.get(signum, 130) if signum is not None else 130
    raise err


def interrupted_message(session: Session, state: TrainState | None, total_steps: int) -> str:
    """A second Ctrl-C stopped the run at once: what is on disk, and how to continue."""
    from lorafw.outputs.state_file import STATE

    step = state.global_step if state is not None else 0
    files = ", ".join(p.name for p in state.lora_files) if state is not None else ""
    resumable = (session.run_dir / STATE).is_file()
    return (f"interrupted at step {step} of {total_steps}; complete files: " + (files or "none")
            + (f"\ncontinue from the last saved state with: lorafw resume {session.run_dir}" if resumable else ""))

