"""What a run leaves on disk and reads back: LoRA files (NAME-NN.safetensors, and -ema), the training state
(state.pt, what `lorafw resume` continues from) and run_summary.json. Only the main process writes; every
data-parallel process holds the same weights."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lorafw.errors import LorafwError
from lorafw.outputs.metadata import TrainingFacts, build_metadata, kohya_subsets
from lorafw.outputs.record import now_iso, read_record, write_record
from lorafw.outputs.state_file import STATE, load_state, save_state as write_state
from lorafw.paths import expand
from lorafw.config.identity import identity
from lorafw.logs import log

if TYPE_CHECKING:
    from lorafw.trainers.trainer import Trainer

SAVE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def save(tr: Trainer, epoch: int, file_name: str | None = None) -> Path:
    """Write the LoRA (and, with EMA, its -ema twin) as kohya-format safetensors with kohya's metadata."""
    dtype = SAVE_DTYPES[tr.spec.output.save_precision]
    facts = TrainingFacts(
        arch=tr.arch, epoch=epoch, step=tr.global_step, total_steps=tr.total_steps,
        batches_per_epoch=tr.data.batches_per_epoch(tr.spec.train.batch_size), warmup_steps=tr.warmup_steps,
        num_train_images=tr.data.n_train_items, num_reg_images=tr.data.n_reg_images, started_at=tr.started_at,
        optimizer=tr.optimizer_desc, mixed_precision=tr.precision, tag_frequency=tr.data.tag_frequency(),
        dataset_dirs=tr.data.dataset_dirs(), bucket_info=tr.data.bucket_info(), triggers=tr.data.triggers(),
        session_id=tr.session_id, processes=tr.world.size, objective=tr.objective,
        reg_dataset_dirs=tr.data.dataset_dirs(reg=True), subsets=kohya_subsets(tr.data.folders),
        num_validation_images=len(tr.val_data.images) if tr.val_data is not None else 0,
        model_hashes=base_model_hashes(tr) if tr.main else {},
    )
    path = tr.run_dir / (file_name or f"{tr.name}-{epoch:02d}.safetensors")
    if not tr.main:  # the main process writes the (identical) weights
        if path not in tr.lora_files:
            tr.lora_files.append(path)
        return path
    # The tensors are copies and the metadata is built now (at the step boundary); tr.writer writes them, in the
    # background unless async_save is off (lorafw/outputs/background.py).
    exact = {id(p): m for p, m in tr.masters.pairs} if tr.masters is not None else None  # full_bf16: the fp32 masters
    files = [(path, tr.network.kohya_state_dict(dtype, exact), build_metadata(tr.spec, facts, tr.name))]
    if path not in tr.lora_files:
        tr.lora_files.append(path)
    if tr.ema is not None and file_name is None:
        tracked = [p for p, _ in tr.masters.pairs] if tr.masters is not None else tr.trainable
        shadows = {id(p): sh for p, sh in zip(tracked, tr.ema.shadows)}
        files.append((path.with_name(f"{path.stem}-ema.safetensors"), tr.network.kohya_state_dict(dtype, shadows),
                      build_metadata(tr.spec, facts, tr.name) | {"ss_ema_decay": f"{tr.spec.ema.decay:g}"}))
    tr.writer.submit(write_loras, files)
    return path


def base_model_hashes(tr: Trainer) -> dict[str, str]:
    """kohya's ss_sd_model_hash / ss_new_sd_model_hash (and the VAE's): hashed once per file (cached across runs)
    in a thread `lifecycle.load_models` starts; without it (no setup), here."""
    from lorafw.outputs.model_hash import base_model_keys

    if tr.model_hashes is None:
        vae = tr.spec.base_model.vae
        return base_model_keys(tr.model_path, expand(vae) if vae else None)
    return tr.model_hashes.result()


def write_loras(files: list[tuple[Path, dict[str, torch.Tensor], dict[str, str]]]) -> None:
    from lorafw.outputs.lora_file import save_lora

    for path, tensors, metadata in files:
        save_lora(path, tensors, metadata)
    log.info(f"saved {files[0][0]}")


def check_resumable(run_dir: Path, processes: int) -> None:
    """Before anything is written: the saved state must come from as many processes as this run has (the
    order of the data, batch by batch, depends on it)."""
    saved = (read_record(run_dir) or {}).get("state") or {}
    by = int(saved["processes"]) if "processes" in saved else int(load_state(run_dir).get("processes", 1))
    if by != processes:
        raise LorafwError(f"{run_dir / STATE} was saved by {by} process(es), this run has {processes}: the "
                          f"data order depends on it; resume with train.num_processes={by}")


def save_state(tr: Trainer) -> None:
    """state.pt: weights, optimizer, scheduler, loss scaler, EMA and where the data stands (epoch, step,
    micro-step): enough to continue as if never stopped. run.json then names the saved step."""
    if not tr.main:  # every process holds the same weights and optimizer state
        return
    # The optimizer's and EMA's tensors are the live ones: the writer thread serializes them while the next step's
    # forward and backward passes run, and that step waits for it before it changes any (loop.optimizer_step).
    snapshot = {
        "processes": tr.world.size,
        "spec": json.dumps(identity(tr.spec), sort_keys=True),
        "epoch": tr.epoch, "next_group": tr.next_group, "global_step": tr.global_step, "micro": tr.micro,
        "skipped_steps": tr.skipped_steps,
        "loss_history": torch.tensor(tr.loss_history, dtype=torch.float64),
        "epoch_partial": torch.tensor(tr.epoch_partial, dtype=torch.float64),
        "epoch_losses": torch.tensor(tr.epoch_losses, dtype=torch.float64),
        "lora_files": [p.name for p in tr.lora_files],
        "params": [p.detach().cpu().clone() for p in tr.trainable],
        "masters": [m.detach().cpu().clone() for _, m in tr.masters.pairs] if tr.masters is not None else [],
        "optimizer": tr.optimizer.state_dict(),
        "scheduler": tr.lr_scheduler.state_dict(),
        "scaler": tr.amp.state_dict(),
        "ema": tr.ema.state_dict() if tr.ema is not None else None,
        "val_losses": {str(k): v for k, v in tr.val_losses.items()},
    }
    tr.record["state"] = {"step": tr.global_step, "epoch": tr.epoch, "saved_at": now_iso(), "processes": tr.world.size}
    tr.writer.submit(write_state_and_record, tr.run_dir, snapshot, json.loads(json.dumps(tr.record, default=str)),
                     tr.global_step)


def write_state_and_record(run_dir: Path, snapshot: dict, record: dict, step: int) -> None:
    write_state(run_dir, snapshot)
    write_record(run_dir, record)  # run.json says which state is on disk, even after a hard kill
    log.info(f"training state saved at step {step}")


@torch.no_grad()
def restore_state(tr: Trainer) -> None:
    """The inverse of `save_state`, after setup: the run continues at the saved step."""
    st = load_state(tr.run_dir)
    saved_by = int(st.get("processes", 1))
    if saved_by != tr.world.size:
        raise LorafwError(f"{tr.run_dir / STATE} was saved by {saved_by} process(es), this run has {tr.world.size}: "
                          f"the data order depends on it; resume with train.num_processes={saved_by}")
    params = st["params"]
    if len(params) != len(tr.trainable) or any(a.shape != b.shape for a, b in zip(params, tr.trainable)):
        raise LorafwError(f"{tr.run_dir / STATE} does not fit this network (different network settings?)")
    for p, v in zip(tr.trainable, params):
        p.copy_(v)
    if tr.masters is not None:
        for (_, m), v in zip(tr.masters.pairs, st["masters"]):
            m.copy_(v)
    tr.optimizer.load_state_dict(st["optimizer"])
    tr.lr_scheduler.load_state_dict(st["scheduler"])
    tr.amp.load_state_dict(st["scaler"])
    tr.epoch, tr.next_group = int(st["epoch"]), int(st["next_group"])
    tr.global_step, tr.micro, tr.skipped_steps = int(st["global_step"]), int(st["micro"]), int(st["skipped_steps"])
    tr.loss_history = st["loss_history"].tolist()
    tr.epoch_partial = st["epoch_partial"].tolist()
    tr.epoch_losses = st["epoch_losses"].tolist()
    tr.lora_files = [tr.run_dir / n for n in st["lora_files"]]
    if tr.ema is not None and st.get("ema") is not None:
        tr.ema.load_state_dict(st["ema"])
    tr.val_losses = {int(k): float(v) for k, v in (st.get("val_losses") or {}).items()}
    tr.record.setdefault("resumes", []).append({"at_step": tr.global_step, "at": now_iso()})
    log.info(f"resumed at step {tr.global_step} of {tr.total_steps} (epoch {tr.epoch})")


def write_summary(tr: Trainer) -> None:
    """run_summary.json: every saved epoch with its losses, and the best epochs (read by grid and compare)."""
    from lorafw.outputs.summary import write_summary as write

    if not tr.main:
        return
    # after the LoRA files handed to the writer before it (it looks for the -ema files on disk)
    tr.writer.submit(write, tr.run_dir, tr.spec, tr.arch, list(tr.epoch_losses), dict(tr.val_losses), list(tr.lora_files),
                     tr.record.get("status", ""), tr.global_step, time.time() - tr.started_at, list(tr.samples))
