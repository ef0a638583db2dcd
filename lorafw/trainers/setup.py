"""Setup, in the order it must happen; each step returns what it made:

    device → models → caches (latents and text states; need the VAE, before the adapters exist)
           → models to the device → network (adapters wrap the loaded layers) → optimizer: the TrainState
"""

from __future__ import annotations

from typing import Any

import torch

from lorafw.archs.protocol import Architecture, Models
from lorafw.config.spec import RunSpec
from lorafw.data.dataset import TrainData
from lorafw.data.prefetch import resolve_workers
from lorafw.errors import LorafwError, ModelError
from lorafw.logs import log, progress_bar, quiet
from lorafw.outputs.record import device_info
from lorafw.paths import expand
from lorafw.placement import resolve_device
from lorafw.precision import weight_dtype
from lorafw.run_folder import check_disk
from lorafw.trainers import batch as batch_mod
from lorafw.trainers.context import Caches, Device, Plan, Session, TrainState
from lorafw.trainers.distributed import Comm, World, main_first


def make_device(spec: RunSpec, session: Session) -> Device:
    """The device, the precision chosen for it (lorafw.precision.choose: what `lorafw doctor` reports), its
    autocast and loss scaler, and where frozen parts wait when the device does not need them."""
    from accelerate.utils import set_seed

    from lorafw.placement import new_parking
    from lorafw.precision import Amp, choose, probe

    t, world = spec.train, session.world
    device = resolve_device(t.device)
    if world.size > 1:
        from accelerate import PartialState

        device = PartialState().device  # this process's GPU (cuda:LOCAL_RANK), or the CPU
    choice = choose(t.mixed_precision, t.full_bf16, t.full_fp16, probe(device))
    for note in choice.notes:  # a fallback (e.g. bf16 on a T4: fp16, full_bf16 off) and why
        log.warning(note)
    set_seed(spec.seed)
    session.record["device"] = device_info(device) | {
        "precision": choice.precision, "precision_reason": choice.reason, "precision_notes": list(choice.notes),
        "grad_scaler": choice.grad_scaler, "adapters": choice.adapter_dtype_name}
    log.info(f"device {device}, precision {choice.precision} ({choice.reason})"
             + (f", {world.size} data-parallel processes" if world.size > 1 else ""))
    return Device(device, choice, Amp(choice, device), weight_dtype(choice.precision), new_parking(),
                  resolve_workers(spec.dataset.workers, device.type))


def load_models(spec: RunSpec, arch: Architecture, plan: Plan, dev: Device, main: bool) -> tuple[Models, Any]:
    """The family's models, the VAE on the device (it encodes first), and the base model's kohya hashes started
    in a thread (the main process writes them into every LoRA file)."""
    models = arch.load(spec, plan.model_info, plan.objective)
    vae_dtype = torch.float32 if spec.train.no_half_vae else dev.wdtype
    models.vae.to(dev.device)
    if models.vae.dtype != vae_dtype:
        with quiet("diffusers"):
            models.vae.to(dtype=vae_dtype)
    # The denoiser and text encoders reach the device after the latents are cached (models_to_device): while the
    # VAE encodes, it has the device to itself.
    if spec.train.attention == "xformers":
        try:
            models.denoiser.enable_xformers_memory_efficient_attention()
        except Exception as e:  # xformers missing or unusable on this device
            raise LorafwError(f"train.attention=xformers: {e}; use train.attention=sdpa") from None
    log.info(f"loaded {plan.model_info.describe()} from {plan.model_path.name}; training {plan.objective.describe()}")
    hashes = None
    if main:  # ss_sd_model_hash / ss_new_sd_model_hash; the file is in the page cache now
        from lorafw.outputs.model_hash import in_background

        vae = spec.base_model.vae
        hashes = in_background(plan.model_path, expand(vae) if vae else None)
    return models, hashes


def cast_frozen(dev: Device, *modules: torch.nn.Module) -> None:
    """Frozen weights onto the training device in the run's dtype (checkpoints ship fp16 or fp32; fp32 on CPU)."""
    with quiet("diffusers"):  # diffusers warns about casting even when nothing must stay fp32
        for m in modules:
            m.to(dev.device, dtype=dev.wdtype)


def models_to_device(dev: Device, models: Models, caches: Caches) -> None:
    """After caching: the denoiser, and the text encoders unless their outputs are cached (the VAE and cached
    text encoders stay parked). With LORAFW_CHECK_DEVICES, every model part checks that its inputs are on its
    own device (lorafw/placement.py)."""
    from lorafw.placement import checks_wanted, guard

    cast_frozen(dev, models.denoiser, *([] if caches.text is not None else models.text_encoders))
    if checks_wanted():
        guard({"unet": models.denoiser, "vae": models.vae,
               **{f"text_encoder_{i + 1}": te for i, te in enumerate(models.text_encoders)}})


def build_caches(spec: RunSpec, arch: Architecture, plan: Plan, dev: Device, models: Models, session: Session) -> Caches:
    """Latents (training and held-out) and, with dataset.cache_text_encoder_outputs, text states."""
    from lorafw.data.latents import LatentCache, default_cache_dir

    ds, caches = spec.dataset, Caches()
    vae, scale = models.vae, models.vae.config.scaling_factor
    if ds.cache_latents:
        disk = (expand(ds.cache_dir) if ds.cache_dir else default_cache_dir()) if ds.cache_latents_to_disk else None
        cache = LatentCache(plan.data, vae, scale, dev.device, vae.dtype, disk, batch_size=ds.vae_batch_size,
                            masks=ds.masked_loss, workers=dev.loader_workers)
        # with a disk cache the main process encodes and writes; the others then read its files
        with main_first(session.comm if disk else Comm(World())), \
                progress_bar(session.main, total=len(cache.wanted()), desc="caching latents", unit="img",
                             leave=False) as bar:
            stats = cache.build(bar.update)
        caches.latents = cache
        log.info(f"latents: {stats.encoded} encoded, {stats.reused} reused from {disk}" if disk
                 else f"latents: {stats.encoded} encoded")
    if plan.val_data is not None:  # held-out latents, always in memory: the set is small
        caches.val_latents = LatentCache(plan.val_data, vae, scale, dev.device, vae.dtype,
                                         batch_size=ds.vae_batch_size, workers=dev.loader_workers)
        caches.val_latents.build()
        log.info(f"validation: {len(plan.val_data.images)} held-out images")
    if caches.latents is not None:  # dataset.cache_latents
        dev.parking.park(vae)  # not needed again during training (samples borrow it): free the device memory
        batch_mod.place(dev, caches.latents.latents, "latents")
        batch_mod.place(dev, caches.latents.masks, "masks")
    if ds.cache_text_encoder_outputs:
        cache_text(spec, arch, plan, dev, models, caches, session.main)
    log.info(
        f"{len(plan.data.images)} images in {len(plan.data.folders)} folder(s), {plan.data.n_items} items per epoch, "
        f"{len(plan.data.buckets)} bucket(s): {plan.steps_per_epoch} steps/epoch, {plan.total_steps} total"
    )
    return caches


@torch.no_grad()
def cache_text(spec: RunSpec, arch: Architecture, plan: Plan, dev: Device, models: Models, caches: Caches, main: bool) -> None:
    """Encode every image's (unchanging) caption once, the held-out images' too (validation needs them after
    the encoders are gone); the frozen text encoders are then parked off the device."""
    cast_frozen(dev, *models.text_encoders)
    caches.text = encode_captions(spec, arch, dev, models, plan.data, "text states", main,
                                  empty=any(f.caption_dropout_rate for f in plan.data.folders))
    if plan.val_data is not None:
        caches.val_text = encode_captions(spec, arch, dev, models, plan.val_data, "held-out text states", main)
    dev.parking.park(*models.text_encoders)
    log.info(f"text encoder outputs cached for {len(caches.text)} images"
             + (f" and {len(caches.val_text)} held-out ones" if caches.val_text else ""))


def encode_captions(spec: RunSpec, arch: Architecture, dev: Device, models: Models, data: TrainData, what: str,
                    main: bool, empty: bool = False) -> dict[int, dict[str, torch.Tensor]]:
    """{image: its base caption's text states}, placed like the latents (on the GPU when they fit); with `empty`,
    the empty caption's too under batch.EMPTY (a caption dropped out by caption_dropout_rate trains on it)."""
    idx = list(range(len(data.images)))
    keys, captions = idx + ([batch_mod.EMPTY] if empty else []), [data.base_caption(i) for i in idx] + [""] * empty
    cache: dict[int, dict[str, torch.Tensor]] = {}
    with progress_bar(main, total=len(keys), desc=f"caching {what}", unit="img", leave=False) as bar:
        for start in range(0, len(keys), 16):
            with dev.amp.autocast():
                cond = arch.encode_text(models, captions[start : start + 16], spec.train)
            for j, i in enumerate(keys[start : start + 16]):
                cache[i] = {k: v[j].to("cpu") for k, v in cond.items()}
            bar.update(len(keys[start : start + 16]))
    flat = {(i, k): v for i, c in cache.items() for k, v in c.items()}
    batch_mod.place(dev, flat, what)
    for (i, k), v in flat.items():
        cache[i][k] = v
    return cache


def inject_network(spec: RunSpec, arch: Architecture, dev: Device, models: Models, train_te: bool,
                   resuming: bool = False) -> Any:
    """The adapters (LyCORIS modules, lorafw/network/) on the family's target layers. They train in fp32, which
    fp16 loss scaling requires and small updates need — or in bf16/fp16 with full_bf16/full_fp16, where the
    optimizer keeps fp32 master copies (lorafw/optim/bf16.py). With network.init_weights they start from that
    file (network/init_weights.py), except when resuming: the saved state holds the run's own weights, and the
    file is read then only for dim_from_weights' ranks."""
    from diffusers.training_utils import cast_training_params

    from lorafw.network import init_weights
    from lorafw.network.adapter import Network
    from lorafw.network.targets import text_encoder_names

    denoiser, tes = models.denoiser, models.text_encoders
    for m in (denoiser, *tes):
        m.requires_grad_(False)
    net_spec, layers = spec.network, None
    if net_spec.init_weights and (not resuming or net_spec.dim_from_weights):
        path = str(expand(net_spec.init_weights))
        tensors, meta = init_weights.read(path)
        layers = init_weights.by_layer(tensors)
        problem = init_weights.family_problem(set(layers), meta, arch.name, arch.label, path)
        if problem:
            raise ModelError(problem)
    ranks = init_weights.ranks_from(layers) if layers is not None and net_spec.dim_from_weights else None
    network = Network(net_spec, denoiser, tes, list(arch.te_prefixes), train_te, arch.denoiser_namer(denoiser),
                      arch=arch.name, train_unet=spec.optimizer.unet_lr > 0, targets=arch.targets,
                      te_names=text_encoder_names(arch, tes), ranks=ranks)
    if layers is not None and not resuming:
        loaded = network.started_from = init_weights.start_from(
            network, path, layers, algo=net_spec.algo, dim_from_weights=net_spec.dim_from_weights, trains_te=train_te)
        log.info(f"network.init_weights: {loaded.layers} adapters start from {loaded.name} "
                 f"(sha256 {loaded.sha256[:12]}…)")
        if loaded.fresh:  # kohya leaves them as they were made, too
            log.warning(f"network.init_weights: {len(loaded.fresh)} adapters have no tensors in {loaded.name} and "
                        f"start from zero as in a new run: {init_weights.listed(loaded.fresh)}")
    choice = dev.choice
    adapter_dtype = torch.bfloat16 if choice.full_bf16 else torch.float16 if choice.full_fp16 else torch.float32
    cast_training_params([denoiser, *tes], dtype=adapter_dtype)
    t = spec.train
    for wanted, module, method in ((t.compile, denoiser, "compile_repeated_blocks"),
                                   (t.gradient_checkpointing, denoiser, "enable_gradient_checkpointing"),
                                   (t.gradient_checkpointing and train_te, tes[0] if tes else None,
                                    "gradient_checkpointing_enable")):
        if wanted and module is not None and not hasattr(module, method):  # a plugin family's own model
            key = "compile" if method.startswith("compile") else "gradient_checkpointing"
            raise LorafwError(f"train.{key}: the {arch.label} family's {type(module).__name__} does not support it; "
                              f"set train.{key}=false")
    if t.compile:
        from lorafw.trainers.compile import compile_blocks

        n = compile_blocks(denoiser, t.compile_backend)
        log.info(f"torch.compile ({t.compile_backend}): {n} UNet blocks; the first steps of each "
                 "bucket size are slower while they compile")
    if t.gradient_checkpointing:
        denoiser.enable_gradient_checkpointing()
        if train_te:
            for te in tes:
                te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    denoiser.train()
    for te in tes:
        te.train(train_te)
    log.info(f"{spec.network.algo}{' + DoRA' if spec.network.dora_wd else ''}: {len(network.entries)} "
             f"adapted layers, {network.n_parameters() / 1e6:.2f}M trainable parameters")
    return network


def build_state(spec: RunSpec, plan: Plan, dev: Device, network: Any, comm: Comm, train_te: bool) -> TrainState:
    """Parameter groups (denoiser, text encoders), full_bf16/full_fp16 master copies, EMA, optimizer, LR schedule."""
    from lorafw.optim.optimizers import build_optimizer, describe, text_encoder_stop_step
    from lorafw.optim.schedulers import build_scheduler, warmup_steps

    o, total = spec.optimizer, plan.total_steps
    # denoiser and text-encoder groups; per UNet block with block lr weights, and lora_up apart with LoRA+ (kohya's)
    groups = network.param_groups(o.unet_lr, o.text_encoder_lr if train_te else 0.0, o.llm_adapter_lr)
    trainable = [p for g in groups for p in g["params"]]
    comm.broadcast(trainable)  # every process starts from the main process's initial weights
    masters = None
    if dev.choice.masters:
        from lorafw.optim.bf16 import MasterWeights

        masters = MasterWeights(groups)
        groups = masters.groups
    optimizer = build_optimizer(o, groups)
    ema = None
    if spec.ema.enabled:
        from lorafw.optim.ema import EMA

        tracked = [m for _, m in masters.pairs] if masters is not None else trainable
        ema = EMA(tracked, spec.ema.decay, "cpu" if spec.ema.on_cpu else dev.device)
    lr_scheduler = build_scheduler(spec.scheduler, optimizer, total, initial_lr=o.lr)
    sch = spec.scheduler
    warmup = warmup_steps(sch, total) if sch.name != "rex" else round(total * (sch.warmup_ratio or 0))
    state = TrainState(network, trainable, optimizer, lr_scheduler, masters=masters, ema=ema, train_te=train_te,
                       te_stop_step=text_encoder_stop_step(o, total) if train_te else None, warmup_steps=warmup,
                       optimizer_desc=describe(o))
    log.info(f"optimizer {state.optimizer_desc}, scheduler {sch.name}")
    return state


def check_output_space(spec: RunSpec, plan: Plan, state: TrainState, run_dir: Any) -> None:
    """Every LoRA file this run will write, plus the training state, must fit: checked before step 1."""
    n = state.network.n_parameters()
    out = spec.output
    per_file = n * {"fp16": 2, "bf16": 2, "fp32": 4}[out.save_precision] + 200_000
    files = -(-plan.epochs // out.save_every_n_epochs) + 1
    if out.save_every_n_steps:  # the step files kept at once (save_last_n_steps removes the older ones)
        kept = plan.total_steps // out.save_every_n_steps
        if out.save_last_n_steps is not None:
            kept = min(kept, out.save_last_n_steps // out.save_every_n_steps + 1)
        files += kept
    need = n * 4 * (4 if state.masters is None else 6) * 2  # weights, moments, masters; old + new copy
    check_disk(run_dir, files * per_file + need, "this run's LoRA files and training state (output.dir)")
