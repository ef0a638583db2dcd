"""What a run leaves on disk and reads back: LoRA files (NAME-NN.safetensors, and -ema), the training state
(state.pt, what `lorafw resume` continues from) and run_summary.json. Only the main process writes; every
data-parallel process holds the same weights. Files go through the session's writer (a background thread
unless async_save is off), from copies or live tensors that nothing changes until the next optimizer update."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from lorafw.archs.protocol import Architecture
from lorafw.config.identity import identity
from lorafw.config.spec import RunSpec
from lorafw.errors import LorafwError
from lorafw.logs import log
from lorafw.outputs.metadata import TrainingFacts, build_metadata, kohya_subsets
from lorafw.outputs.record import now_iso, read_record, write_record
from lorafw.outputs.state_file import STATE, load_state
from lorafw.outputs.state_file import save_state as write_state
from lorafw.paths import expand
from lorafw.trainers.context import Plan, Session, TrainState

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def save_lora(spec: RunSpec, arch: Architecture, plan: Plan, session: Session, state: TrainState, precision: str,
              model_hashes: Any, epoch: int, file_name: str | None = None) -> Path:
    """Write the LoRA (and, with EMA, its -ema twin) as kohya-format safetensors with kohya's metadata."""
    dtype = SAVE_DTYPES[spec.output.save_precision]
    data, val = plan.data, plan.val_data
    facts = TrainingFacts(
        arch=arch.name, family=arch, epoch=epoch, step=state.global_step, total_steps=plan.total_steps,
        epochs=plan.epochs,
        batches_per_epoch=data.batches_per_epoch(spec.train.batch_size), warmup_steps=state.warmup_steps,
        num_train_images=data.n_train_items, num_reg_images=data.n_reg_images, started_at=session.started_at,
        optimizer=state.optimizer_desc, mixed_precision=precision, tag_frequency=data.tag_frequency(),
        dataset_dirs=data.dataset_dirs(), bucket_info=data.bucket_info(), triggers=data.triggers(),
        session_id=session.session_id, processes=session.world.size, objective=plan.objective,
        reg_dataset_dirs=data.dataset_dirs(reg=True), subsets=kohya_subsets(data.folders),
        num_validation_images=len(val.images) if val is not None else 0,
        model_hashes=base_model_hashes(spec, plan, model_hashes) if session.main else {},
        init_weights={k: v for k, v in session.record.get("init_weights", {}).items() if k in ("name", "sha256")},
    )
    path = session.run_dir / (file_name or f"{plan.name}-{epoch:02d}.safetensors")
    if path not in state.lora_files:
        state.lora_files.append(path)
    if not session.main:  # the main process writes the (identical) weights
        return path
    # The tensors are copies and the metadata is built now (at the step boundary); the writer writes them.
    masters = state.masters
    exact = {id(p): m for p, m in masters.pairs} if masters is not None else None  # full_bf16: the fp32 masters
    files = [(path, state.network.kohya_state_dict(dtype, exact), build_metadata(spec, facts, plan.name))]
    if state.ema is not None and file_name is None:
        tracked = [p for p, _ in masters.pairs] if masters is not None else state.trainable
        shadows = {id(p): sh for p, sh in zip(tracked, state.ema.shadows)}
        files.append((path.with_name(f"{path.stem}-ema.safetensors"), state.network.kohya_state_dict(dtype, shadows),
                      build_metadata(spec, facts, plan.name) | {"ss_ema_decay": f"{spec.ema.decay:g}"}))
    session.writer.submit(write_loras, files)
    return path


def remove_lora(session: Session, state: TrainState, file_name: str) -> None:
    """kohya's retention (output.save_last_n_epochs / save_last_n_steps): an older LoRA file (and its -ema twin)
    removed, after the writes handed over before it. state.pt and the summary stop naming it."""
    path = session.run_dir / file_name
    state.lora_files = [p for p in state.lora_files if p != path]
    if session.main:
        session.writer.submit(remove_files, [path, path.with_name(f"{path.stem}-ema.safetensors")])


def remove_files(paths: list[Path]) -> None:
    for p in paths:
        if p.is_file():
            p.unlink()
            log.info(f"removed {p.name} (output.save_last_n_*)")


def base_model_hashes(spec: RunSpec, plan: Plan, model_hashes: Any) -> dict[str, str]:
    """kohya's ss_sd_model_hash / ss_new_sd_model_hash (and the VAE's): hashed once per file (cached across runs)
    in the thread setup.load_models starts; without it, here."""
    from lorafw.outputs.model_hash import base_model_keys

    if model_hashes is None:
        vae = spec.base_model.vae
        return base_model_keys(plan.model_path, expand(vae) if vae else None)
    return model_hashes.result()


def write_loras(files: list[tuple[Path, dict[str, torch.Tensor], dict[str, str]]]) -> None:
    from lorafw.outputs.lora_file import save_lora as write

    for path, tensors, metadata in files:
        write(path, tensors, metadata)
    log.info(f"saved {files[0][0]}")


def check_resumable(run_dir: Path, processes: int) -> None:
    """Before anything is written: the saved state must come from as many processes as this run has (the
    order of the data, batch by batch, depends on it)."""
    saved = (read_record(run_dir) or {}).get("state") or {}
    by = int(saved["processes"]) if "processes" in saved else int(load_state(run_dir).get("processes", 1))
    if by != processes:
        raise LorafwError(f"{run_dir / STATE} was saved by {by} process(es), this run has {processes}: the "
                          f"data order depends on it; resume with train.num_processes={by}")


def save_state(spec: RunSpec, session: Session, state: TrainState, amp: Any) -> None:
    """state.pt: weights, optimizer, scheduler, loss scaler, EMA and where the data stands (epoch, step,
    micro-step): enough to continue as if never stopped. run.json then names the saved step."""
    if not session.main:  # every process holds the same weights and optimizer state
        return
    # The optimizer's and EMA's tensors are the live ones: the writer thread serializes them while the next step's
    # forward and backward passes run, and that step waits for it before it changes any (loop.optimizer_step).
    s = state
    snapshot = {
        "processes": session.world.size,
        "spec": json.dumps(identity(spec), sort_keys=True),
        "epoch": s.epoch, "next_group": s.next_group, "global_step": s.global_step, "micro": s.micro,
        "skipped_steps": s.skipped_steps,
        "loss_history": torch.tensor(s.loss_history, dtype=torch.float64),
        "epoch_partial": torch.tensor(s.epoch_partial, dtype=torch.float64),
        "epoch_losses": torch.tensor(s.epoch_losses, dtype=torch.float64),
        "lora_files": [p.name for p in s.lora_files],
        "params": [p.detach().cpu().clone() for p in s.trainable],
        "masters": [m.detach().cpu().clone() for _, m in s.masters.pairs] if s.masters is not None else [],
        "optimizer": s.optimizer.state_dict(),
        "scheduler": s.lr_scheduler.state_dict(),
        "scaler": amp.state_dict(),
        "ema": s.ema.state_dict() if s.ema is not None else None,
        "val_losses": {str(k): v for k, v in s.val_losses.items()},
    }
    session.record["state"] = {"step": s.global_step, "epoch": s.epoch, "saved_at": now_iso(),
                               "processes": session.world.size}
    session.writer.submit(write_state_and_record, session.run_dir, snapshot,
                          json.loads(json.dumps(session.record, default=str)), s.global_step)


def write_state_and_record(run_dir: Path, snapshot: dict, record: dict, step: int) -> None:
    write_state(run_dir, snapshot)
    write_record(run_dir, record)  # run.json says which state is on disk, even after a hard kill
    log.info(f"training state saved at step {step}")


@torch.no_grad()
def restore_state(session: Session, state: TrainState, amp: Any, total_steps: int) -> None:
    """The inverse of `save_state`, after setup: the run continues at the saved step."""
    run_dir, world = session.run_dir, session.world
    st = load_state(run_dir)
    saved_by = int(st.get("processes", 1))
    if saved_by != world.size:
        raise LorafwError(f"{run_dir / STATE} was saved by {saved_by} process(es), this run has {world.size}: "
                          f"the data order depends on it; resume with train.num_processes={saved_by}")
    params = st["params"]
    if len(params) != len(state.trainable) or any(a.shape != b.shape for a, b in zip(params, state.trainable)):
        raise LorafwError(f"{run_dir / STATE} does not fit this network (different network settings?)")
    for p, v in zip(state.trainable, params):
        p.copy_(v)
    if state.masters is not None:
        for (_, m), v in zip(state.masters.pairs, st["masters"]):
            m.copy_(v)
    state.optimizer.load_state_dict(st["optimizer"])
    state.lr_scheduler.load_state_dict(st["scheduler"])
    amp.load_state_dict(st["scaler"])
    state.epoch, state.next_group = int(st["epoch"]), int(st["next_group"])
    state.global_step, state.micro, state.skipped_steps = int(st["global_step"]), int(st["micro"]), int(st["skipped_steps"])
    state.loss_history = st["loss_history"].tolist()
    state.epoch_partial = st["epoch_partial"].tolist()
    state.epoch_losses = st["epoch_losses"].tolist()
    state.lora_files = [run_dir / n for n in st["lora_files"]]
    if state.ema is not None and st.get("ema") is not None:
        state.ema.load_state_dict(st["ema"])
    state.val_losses = {int(k): float(v) for k, v in (st.get("val_losses") or {}).items()}
    session.record.setdefault("resumes", []).append({"at_step": state.global_step, "at": now_iso()})
    log.info(f"resumed at step {state.global_step} of {total_steps} (epoch {state.epoch})")


def write_summary(spec: RunSpec, arch_name: str, session: Session, state: TrainState | None) -> None:
    """run_summary.json: every saved epoch with its losses, and the best epochs (read by grid and compare)."""
    from lorafw.outputs.summary import write_summary as write

    if not session.main:
        return
    # a run that failed in setup has no state: no epochs, no files
    losses, val, files = (state.epoch_losses, state.val_losses, state.lora_files) if state is not None else ([], {}, [])
    step, samples = (state.global_step, state.samples) if state is not None else (0, [])
    # after the LoRA files handed to the writer before it (it looks for the -ema files on disk)
    session.writer.submit(write, session.run_dir, spec, arch_name, list(losses), dict(val),
                          list(files), session.record.get("status", ""), step,
                          time.time() - session.started_at, list(samples))
