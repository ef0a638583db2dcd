"""A run's life: the dataset checks made before any weights load, `run` (the run record written before
and after, also on failure or interruption) and `setup`, in the order it must happen:

    device → models → data (latent and text caches; needs the VAE, before the adapters exist)
           → models to the device → network (adapters wrap the loaded layers) → optimizer
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import TYPE_CHECKING, Any

import torch

from lorafw.data import dataset as dataset_mod
from lorafw.data.folders import fingerprint, scan
from lorafw.data.lint import lint, without
from lorafw.data.prefetch import resolve_workers
from lorafw.errors import DatasetError, Interrupted, LorafwError
from lorafw.outputs.metrics import Metrics
from lorafw.outputs.record import device_info, now_iso, read_record, versions, write_config, write_record
from lorafw.outputs.state_file import STATE
from lorafw.paths import expand
from lorafw.trainers import inputs
from lorafw.logs import log, progress_bar, quiet
from lorafw.outputs.result import RunResult
from lorafw.placement import resolve_device
from lorafw.precision import weight_dtype
from lorafw.run_folder import check_disk
from lorafw.trainers.distributed import Comm, World, main_first

if TYPE_CHECKING:
    from lorafw.trainers.trainer import Trainer


# -- before any weights load -------------------------------------------------------------------------------
def lint_folders(spec: Any, folders: list, warnings: list[str]) -> tuple[list, Any]:
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


def hold_out(spec: Any, folders: list) -> tuple[list, Any]:
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


# -- run ---------------------------------------------------------------------------------------------------
def run(tr: Trainer) -> RunResult:
    """setup → (restore state) → train, with the run record written before and after (also on failure)."""
    tr.started_at = time.time()
    previous = read_record(tr.run_dir) if tr.resuming else None
    tr.record.update(status="running", started_at=(previous or {}).get("started_at") or now_iso(),
                     versions=versions(), dataset=fingerprint(tr.data.folders), lint=tr.lint_report.to_json())
    if tr.main:
        write_config(tr.run_dir, tr.spec)
        write_record(tr.run_dir, tr.record)
    try:
        with tr.stop:
            tr.setup()
            if tr.resuming:
                tr.restore_state()
            if tr.main:
                tr.metrics = Metrics(tr.run_dir, tr.spec.log, tr.global_step if tr.resuming else 0)
            tr.train()
        tr.record["status"] = "finished"
    except Interrupted:
        tr.record["status"] = "interrupted"
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once; every file written so far is whole
        tr.record["status"] = "interrupted"
        state = (tr.run_dir / STATE).is_file()
        raise Interrupted(
            f"interrupted at step {tr.global_step} of {tr.total_steps}; complete files: "
            + (", ".join(p.name for p in tr.lora_files) or "none")
            + (f"\ncontinue from the last saved state with: lorafw resume {tr.run_dir}" if state else "")
        ) from None
    except BaseException as e:
        tr.record["status"] = f"failed: {type(e).__name__}: {e}"
        raise
    finally:
        cleanup(tr)
    return RunResult(tr.run_dir, tr.spec, list(tr.lora_files), list(tr.loss_history), list(tr.epoch_losses),
                     tr.global_step, time.time() - tr.started_at, list(tr.dataset_warnings), dict(tr.val_losses))


def cleanup(tr: Trainer) -> None:
    """After a run, however it ended: the writes in flight finished, the run record's final figures, the metrics
    closed, the summary."""
    try:
        tr.writer.wait()  # a finished run waited in train(); here the run failed or was interrupted mid-write
    except Exception as e:  # noqa: BLE001 - the run is already ending with its own error
        log.error(f"a file could not be written: {e}")
    tr.record.update(
        finished_at=now_iso(),
        wall_time_s=round(time.time() - tr.started_at, 2),
        steps=tr.global_step,
        skipped_steps=tr.skipped_steps,
        epoch_losses=tr.epoch_losses,
        final_loss=tr.epoch_losses[-1] if tr.epoch_losses else None,
        lora_files=[p.name for p in tr.lora_files],
    )
    if tr.main:
        write_record(tr.run_dir, tr.record)
    if tr.metrics is not None:
        tr.metrics.close()
    tr.write_summary()
    tr.writer.close()


# -- setup -------------------------------------------------------------------------------------------------
def setup(tr: Trainer) -> None:
    setup_device(tr)
    load_models(tr)
    build_caches(tr)  # needs the VAE; runs before the adapters exist
    models_to_device(tr)
    inject_network(tr)  # after the weights are loaded, so adapters wrap the real layers
    build_optimizer(tr)


def setup_device(tr: Trainer) -> None:
    """The device, the precision chosen for it (lorafw.precision.choose: what `lorafw doctor` reports), its
    autocast and loss scaler (tr.amp), and where frozen parts wait when the device does not need them."""
    from accelerate.utils import set_seed

    from lorafw.placement import new_parking
    from lorafw.precision import Amp, choose, probe

    t = tr.spec.train
    tr.device = resolve_device(t.device)
    if tr.world.size > 1:
        from accelerate import PartialState

        tr.device = PartialState().device  # this process's GPU (cuda:LOCAL_RANK), or the CPU
    tr.choice = choose(t.mixed_precision, t.full_bf16, t.full_fp16, probe(tr.device))
    for note in tr.choice.notes:  # a fallback (e.g. bf16 on a T4: fp16, full_bf16 off) and why
        log.warning(note)
    tr.precision = tr.choice.precision
    tr.amp = Amp(tr.choice, tr.device)
    tr.parking = new_parking()
    set_seed(tr.spec.seed)
    tr.record["device"] = device_info(tr.device) | {
        "precision": tr.precision, "precision_reason": tr.choice.reason, "precision_notes": list(tr.choice.notes),
        "grad_scaler": tr.choice.grad_scaler, "adapters": tr.choice.adapter_dtype_name}
    log.info(f"device {tr.device}, precision {tr.precision} ({tr.choice.reason})"
             + (f", {tr.world.size} data-parallel processes" if tr.world.size > 1 else ""))


def load_models(tr: Trainer) -> None:
    from lorafw.models.load import load_components

    bm = tr.spec.base_model
    vae = expand(bm.vae) if bm.vae else None
    c = load_components(tr.model_path, vae, expected_arch=tr.arch, objective=tr.objective)
    tr.unet, tr.vae, tr.text_encoders, tr.tokenizers = c.unet, c.vae, c.text_encoders, c.tokenizers
    tr.noise_scheduler = c.noise_scheduler
    tr.wdtype = weight_dtype(tr.precision)
    vae_dtype = torch.float32 if tr.spec.train.no_half_vae else tr.wdtype
    tr.vae.to(tr.device)
    if tr.vae.dtype != vae_dtype:
        with quiet("diffusers"):
            tr.vae.to(dtype=vae_dtype)
    # The UNet and text encoders reach the device after the latents are cached (models_to_device): while the
    # VAE encodes, it has the device to itself.
    if tr.spec.train.attention == "xformers":
        try:
            tr.unet.enable_xformers_memory_efficient_attention()
        except Exception as e:  # xformers missing or unusable on this device
            raise LorafwError(f"train.attention=xformers: {e}; use train.attention=sdpa") from None
    log.info(f"loaded {tr.model_info.describe()} from {tr.model_path.name}; training {tr.objective.describe()}")
    if tr.main:  # the LoRA files' ss_sd_model_hash / ss_new_sd_model_hash; the file is in the page cache now
        from lorafw.outputs.model_hash import in_background

        tr.model_hashes = in_background(tr.model_path, vae)


def to_device(tr: Trainer, *models: torch.nn.Module) -> None:
    """Frozen weights onto the training device in the run's dtype (checkpoints ship fp16 or fp32; fp32 on CPU)."""
    with quiet("diffusers"):  # diffusers warns about casting even when nothing must stay fp32
        for m in models:
            m.to(tr.device, dtype=tr.wdtype)


def models_to_device(tr: Trainer) -> None:
    """After caching: the UNet, and the text encoders unless their outputs are cached (the VAE and cached text
    encoders stay parked). With LORAFW_CHECK_DEVICES, every model part checks that its inputs are on its
    own device (lorafw/placement.py)."""
    from lorafw.placement import checks_wanted, guard

    to_device(tr, tr.unet, *([] if tr.text_cache is not None else tr.text_encoders))
    if checks_wanted():
        guard({"unet": tr.unet, "vae": tr.vae, **{f"text_encoder_{i + 1}": te for i, te in enumerate(tr.text_encoders)}})


def build_caches(tr: Trainer) -> None:
    """Latents (training and held-out) and, with dataset.cache_text_encoder_outputs, text states."""
    from lorafw.data.latents import LatentCache, default_cache_dir

    ds = tr.spec.dataset
    tr.latent_cache = None
    tr.loader_workers = resolve_workers(ds.workers, tr.device.type)
    if ds.cache_latents:
        disk = (expand(ds.cache_dir) if ds.cache_dir else default_cache_dir()) if ds.cache_latents_to_disk else None
        cache = LatentCache(tr.data, tr.vae, tr.vae.config.scaling_factor, tr.device, tr.vae.dtype, disk,
                            batch_size=ds.vae_batch_size, masks=ds.masked_loss, workers=tr.loader_workers)
        # with a disk cache the main process encodes and writes; the others then read its files
        with main_first(tr.comm if disk else Comm(World())), \
                progress_bar(tr.main, total=len(cache.wanted()), desc="caching latents", unit="img", leave=False) as bar:
            stats = cache.build(bar.update)
        tr.latent_cache = cache
        log.info(f"latents: {stats.encoded} encoded, {stats.reused} reused from {disk}" if disk else f"latents: {stats.encoded} encoded")
    if tr.val_data is not None:  # held-out latents, always in memory: the set is small
        tr.val_cache = LatentCache(tr.val_data, tr.vae, tr.vae.config.scaling_factor, tr.device, tr.vae.dtype,
                                   batch_size=ds.vae_batch_size, workers=tr.loader_workers)
        tr.val_cache.build()
        log.info(f"validation: {len(tr.val_data.images)} held-out images")
    if ds.cache_latents:
        tr.parking.park(tr.vae)  # not needed again during training (samples borrow it): free the device memory
        inputs.place(tr, tr.latent_cache.latents, "latents")
        inputs.place(tr, tr.latent_cache.masks, "masks")
    tr.text_cache = tr.val_text_cache = None
    if ds.cache_text_encoder_outputs:
        inputs.cache_text(tr)
    log.info(
        f"{len(tr.data.images)} images in {len(tr.data.folders)} folder(s), {tr.data.n_items} items per epoch, "
        f"{len(tr.data.buckets)} bucket(s): {tr.steps_per_epoch} steps/epoch, {tr.total_steps} total"
    )


def inject_network(tr: Trainer) -> None:
    from diffusers.training_utils import cast_training_params

    from lorafw.network.adapter import Network
    from lorafw.network.targets import unet_namer

    # The adapters (LyCORIS modules, lorafw/network/) train in fp32, which fp16 loss scaling requires and small
    # updates need — or in bf16/fp16 with full_bf16/full_fp16, where the optimizer keeps fp32 master copies
    # (lorafw/optim/bf16.py).
    for m in (tr.unet, *tr.text_encoders):
        m.requires_grad_(False)
    tr.network = Network(tr.spec.network, tr.unet, tr.text_encoders, list(tr.architecture.te_prefixes), tr.train_te,
                         tr.architecture.unet_namer(tr.unet, unet_namer), arch=tr.arch,
                         train_unet=tr.spec.optimizer.unet_lr > 0)
    adapter_dtype = torch.bfloat16 if tr.choice.full_bf16 else torch.float16 if tr.choice.full_fp16 else torch.float32
    cast_training_params([tr.unet, *tr.text_encoders], dtype=adapter_dtype)
    if tr.spec.train.compile:
        from lorafw.trainers.compile import compile_blocks

        n = compile_blocks(tr.unet, tr.spec.train.compile_backend)
        log.info(f"torch.compile ({tr.spec.train.compile_backend}): {n} UNet blocks; the first steps of each "
                 "bucket size are slower while they compile")
    if tr.spec.train.gradient_checkpointing:
        tr.unet.enable_gradient_checkpointing()
        if tr.train_te:
            for te in tr.text_encoders:
                te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    tr.unet.train()
    for te in tr.text_encoders:
        te.train(tr.train_te)
    log.info(f"{tr.spec.network.algo}{' + DoRA' if tr.spec.network.dora_wd else ''}: {len(tr.network.entries)} "
             f"adapted layers, {tr.network.n_parameters() / 1e6:.2f}M trainable parameters")


def build_optimizer(tr: Trainer) -> None:
    """Parameter groups (UNet, text encoders), full_bf16/full_fp16 master copies, EMA, optimizer, LR schedule."""
    from lorafw.optim.optimizers import build_optimizer as build, describe, text_encoder_stop_step
    from lorafw.optim.schedulers import build_scheduler, warmup_steps

    o = tr.spec.optimizer
    # UNet and text-encoder groups; per UNet block with block lr weights, and lora_up apart with LoRA+ (kohya's)
    groups = tr.network.param_groups(o.unet_lr, o.text_encoder_lr if tr.train_te else 0.0)
    tr.te_stop_step = text_encoder_stop_step(o, tr.total_steps) if tr.train_te else None
    tr.trainable = [p for g in groups for p in g["params"]]
    tr.comm.broadcast(tr.trainable)  # every process starts from the main process's initial weights
    if tr.choice.masters:
        from lorafw.optim.bf16 import MasterWeights

        tr.masters = MasterWeights(groups)
        groups = tr.masters.groups
    optimizer = build(o, groups)
    if tr.spec.ema.enabled:
        from lorafw.optim.ema import EMA

        tracked = [m for _, m in tr.masters.pairs] if tr.masters is not None else tr.trainable
        tr.ema = EMA(tracked, tr.spec.ema.decay, "cpu" if tr.spec.ema.on_cpu else tr.device)
    tr.lr_scheduler = build_scheduler(tr.spec.scheduler, optimizer, tr.total_steps, initial_lr=o.lr)
    tr.optimizer = optimizer  # loss scaling: tr.amp (loop.optimizer_step); accumulation: loop.train
    sch = tr.spec.scheduler
    tr.warmup_steps = (warmup_steps(sch, tr.total_steps) if sch.name != "rex"
                       else round(tr.total_steps * (sch.warmup_ratio or 0)))
    tr.optimizer_desc = describe(o)
    log.info(f"optimizer {tr.optimizer_desc}, scheduler {tr.spec.scheduler.name}")
    check_output_space(tr)


def check_output_space(tr: Trainer) -> None:
    """Every LoRA file this run will write, plus the training state, must fit: checked before step 1."""
    n = tr.network.n_parameters()
    per_file = n * {"fp16": 2, "bf16": 2, "fp32": 4}[tr.spec.output.save_precision] + 200_000
    files = -(-tr.spec.train.epochs // tr.spec.output.save_every_n_epochs) + 1
    state = n * 4 * (4 if tr.masters is None else 6) * 2  # weights, moments, masters; old + new copy
    check_disk(tr.run_dir, files * per_file + state, "this run's LoRA files and training state (output.dir)")
