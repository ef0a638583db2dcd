"""Everything that can fail before any weights load: the checkpoint's header against the family, the objective
against the checkpoint, the dataset (every image decoded once), the validation split, the cache folder's disk.
`preflight` reads files but writes none; `open_session` then makes the run folder and joins the process group."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

from lorafw import speed
from lorafw.archs.protocol import Architecture
from lorafw.config.prediction import resolve as resolve_objective
from lorafw.config.prediction import warnings_for as objective_warnings
from lorafw.config.spec import RunSpec, import_notes
from lorafw.data import dataset as dataset_mod
from lorafw.data.folders import scan
from lorafw.data.lint import lint, without
from lorafw.errors import DatasetError, LorafwError
from lorafw.logs import log
from lorafw.outputs.background import Writer
from lorafw.paths import expand
from lorafw.placement import resolve_device
from lorafw.planning.budget import budget
from lorafw.run_folder import check_disk, ensure_writable, prepare_run_dir
from lorafw.trainers import checkpoint
from lorafw.trainers.compile import compile_problem
from lorafw.trainers.context import Plan, Session
from lorafw.trainers.distributed import Comm, World, init_process_group
from lorafw.trainers.step import StepConfig


def preflight(spec: RunSpec, arch: Architecture, run_dir: Path, world: World) -> Plan:
    """The run's plan, or the error that would otherwise stop it hours in."""
    t = spec.train
    if world.size > 1 and t.num_processes not in (1, world.size):
        raise LorafwError(f"train.num_processes={t.num_processes} but {world.size} processes were "
                          f"launched; set train.num_processes={world.size} or launch that many")
    model_path = expand(spec.base_model.path)
    info = arch.inspect(str(spec.base_model.path))  # header only; refuses another family's checkpoint
    # ε, v or flow, ZTSNR: what the checkpoint declares (else the family's own), checked against the spec (a
    # contradiction, or an option of the other objective, stops here)
    objective = resolve_objective(t, info.prediction, f"base_model.path={spec.base_model.path}", arch.predictions[0])
    if objective.prediction not in arch.predictions:
        raise LorafwError(f"train.prediction_type: {arch.label} trains {', '.join(arch.predictions)}, not "
                          f"{objective.prediction}; set train.prediction_type to one of those")
    scale = float(getattr(arch, "flow_timestep_scale", 1.0))  # the time a flow denoiser takes: σ × this
    if t.compile:
        problem = compile_problem(t.compile_backend, resolve_device(t.device))
        if problem:
            raise LorafwError(f"{problem}; or train it uncompiled: train.compile=false")
    folders, warnings = scan(spec.dataset)
    folders, lint_report = lint_folders(spec, folders, warnings)
    folders, val_data = hold_out(spec, folders)
    data = dataset_mod.build(folders, spec.dataset)
    batches_per_step = t.gradient_accumulation_steps * world.size  # global batch = B × W × A
    length = budget(data.batches_per_epoch(t.batch_size), batches_per_step, t.epochs, t.max_steps)
    if spec.resume is not None:
        checkpoint.check_resumable(run_dir, world.size)
    if spec.dataset.cache_latents_to_disk:
        from lorafw.data.latents import default_cache_dir, latent_bytes  # heavy: torch and the VAE helpers

        cache_dir = expand(spec.dataset.cache_dir) if spec.dataset.cache_dir else default_cache_dir()
        ensure_writable(cache_dir, "the latent cache folder (dataset.cache_dir)")
        check_disk(cache_dir, latent_bytes(data), "the latent cache (dataset.cache_dir)")
    return Plan(model_path, info, objective, data, val_data, lint_report, warnings, batches_per_step,
                length.steps_per_epoch, length.total_steps, StepConfig.from_spec(t, objective.prediction, scale),
                StepConfig.plain(objective.prediction, scale), spec.output.name or "lora", spec.resume is not None,
                epochs=length.epochs)


def open_session(spec: RunSpec, arch: Architecture, plan: Plan, run_dir: Path, world: World) -> Session:
    """Join the process group, make the run folder (the main process; the others wait for it), start the run
    record."""
    comm = Comm(world)
    if not world.is_main:
        log.setLevel("ERROR")
    init_process_group(world, cpu=resolve_device(spec.train.device).type == "cpu")
    if world.is_main:
        prepare_run_dir(run_dir, spec.output.overwrite or plan.resuming)
    comm.barrier()  # the folder exists (or the main process failed, and the launcher stops us all)
    for w in plan.dataset_warnings + objective_warnings(plan.objective, plan.model_path.name):
        log.warning(w)
    t, o = spec.train, plan.objective
    record: dict[str, Any] = {
        "status": "created",
        "arch": arch.name,
        "plan": {
            "validation_images": len(plan.val_data.images) if plan.val_data else 0,
            "images": len(plan.data.images),
            "items_per_epoch": plan.data.n_items,
            "processes": world.size,
            "global_batch": t.batch_size * plan.batches_per_step,
            "steps_per_epoch": plan.steps_per_epoch,
            "epochs": plan.epochs,
            "total_steps": plan.total_steps,
            "buckets": dataset_mod.bucket_histogram(plan.data),
        },
        "objective": {"prediction_type": o.prediction, "source": o.source,
                      "zero_terminal_snr": o.zero_terminal_snr, "ztsnr_source": o.ztsnr_source},
    }
    if (notes := import_notes(spec)) is not None:  # what `lorafw import` left behind (report.html shows it)
        record["imported"] = notes
    # LoRA files, state.pt, run.json and the summary are written by a background thread (outputs/background.py)
    return Session(world, comm, run_dir, Writer(background=speed.on("async_save")), record=record)


def lint_folders(spec: RunSpec, folders: list, warnings: list[str]) -> tuple[list, Any]:
    """Decode every image once before training: damaged files stop the run here, not hours in.
    Returns the folders (without the damaged images when dataset.skip_bad_images) and the lint report."""
    report = lint(folders, spec.dataset, deep=True)
    warnings += report.lines() if report.warnings else []
    if report.errors:
        bad = sorted(report.bad_paths())
        if not spec.dataset.skip_bad_images:
            listing = "\n  ".join(f"{f.paths[0]} ({f.detail})" for f in report.errors)
            raise DatasetError(
                f"{len(bad)} image(s) cannot be decoded:\n  {listing}\nremove or replace them, or set "
                "dataset.skip_bad_images=true to train without them"
            )
        warnings.append(f"left out {len(bad)} image(s) that cannot be decoded: {', '.join(map(str, bad))}")
        folders = without(folders, set(bad))
        if not any(f.images for f in folders if not f.is_reg):
            raise DatasetError("no training image can be decoded")
    return folders, report


def hold_out(spec: RunSpec, folders: list) -> tuple[list, Any]:
    """Validation images: a held-out folder, or a fraction of the training images chosen by the seed.
    Returns the training folders and the validation TrainData (or None)."""
    v, ds = spec.validation, spec.dataset
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
    chosen = set(random.Random(dataset_mod.derive_seed(spec.seed, "validation")).sample(range(len(images)), k))
    held = {images[i][1].path for i in chosen}
    train = [dataclasses.replace(f, images=tuple(e for e in f.images if e.path not in held)) for f in folders]
    val = [dataclasses.replace(f, images=tuple(e for e in f.images if e.path in held), repeats=1) for f in folders]
    return [f for f in train if f.images], dataset_mod.build([f for f in val if f.images], ds)
