"""Turn a composed config (plain dict) into a validated RunSpec, or one error listing every problem.

Runs before any weights or images are read and imports no torch. Also runnable alone:
`lorafw check +recipe=NAME ...`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lorafw import families as archs  # the registry: families by name, through their entry points
from lorafw.config import blocks
from lorafw.config.catalog import OPTIMIZERS, SCHEDULERS, is_class_path, relative_step, scheduler_problems
from lorafw.config.prediction import flow_problems, resolve
from lorafw.config.prompts import parse_line, prompt_lines
from lorafw.config.spec import DatasetSpec, RunSpec
from lorafw.config.typed import from_dict
from lorafw.errors import ConfigError, ModelError
from lorafw.families import available as available_archs
from lorafw.families import detect
from lorafw.families import get as get_family
from lorafw.paths import expand
from lorafw.run_folder import STATE, never_saved

AUTO = "auto"  # base_model.arch: the checkpoint's own tensors decide (resolve_arch)
# files a family keeps apart from its checkpoint, which a run of it must name (key of base_model → what it is)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")  # the same list as lorafw.models.load (which imports torch)
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_BAD_NAME = re.compile(r"[\\/:*?\"<>|]")


def spec_from_dict(data: dict[str, Any], check_paths: bool = True, need_model: bool = True) -> tuple[RunSpec, list[str]]:
    """Validate `data` into a RunSpec. Returns (spec, notes); raises ConfigError listing every problem.

    `notes` are not errors: values that the chosen options do not use (e.g. a recipe's
    `scheduler.num_cycles` after the user switched to `scheduler=constant_with_warmup`).
    `check_paths=False` skips the file-system checks (for printing or comparing specs);
    `need_model=False` skips the base-model checks (plan and lint read only the dataset).
    """
    problems: list[str] = []
    data = dict(data)
    data.pop("hydra", None)
    spec = from_dict(RunSpec, data, "", problems)
    if spec is None:
        raise ConfigError(problems)
    notes: list[str] = []
    _check_values(spec, problems, notes, need_model)
    if not problems:
        spec = _effective(spec, notes)
    if check_paths:
        _check_paths(spec, problems, need_model)
    if problems:
        raise ConfigError(problems)
    if check_paths and need_model and spec.base_model.arch == AUTO:
        spec = resolve_arch(spec)
        _check_bucket_step(spec, problems, get_family(spec.base_model.arch))  # the family is known now
        if problems:
            raise ConfigError(problems)
    return spec, notes


def resolve_arch(spec: RunSpec) -> RunSpec:
    """base_model.arch=auto → the architecture the checkpoint's tensors show (header only, no torch).
    A spec that names its arch is returned as it is."""
    import dataclasses

    if spec.base_model.arch != AUTO:
        return spec
    try:
        arch = detect(expand(spec.base_model.path))
    except (ModelError, OSError) as e:
        raise ConfigError([f"base_model.arch: auto needs a readable checkpoint to read the architecture from: {e}"]) from None
    return dataclasses.replace(spec, base_model=dataclasses.replace(spec.base_model, arch=arch))


def _check_values(s: RunSpec, p: list[str], notes: list[str], need_model: bool = True) -> None:
    archs = available_archs()
    if need_model and s.base_model.arch not in archs and s.base_model.arch != AUTO:
        p.append(f"base_model.arch: no architecture is registered as {s.base_model.arch!r}; available: {', '.join(archs)}")
    if need_model and s.base_model.arch in archs:  # the files a family keeps apart (Anima's), as it declares them
        for key, what in getattr(get_family(s.base_model.arch), "side_files", {}).items():
            if not getattr(s.base_model, key):
                p.append(f"base_model.{key}: base_model.arch={s.base_model.arch} needs it ({what}); "
                         f"pass base_model.{key}=PATH")
    if s.base_model.arch in archs:  # a family is read without torch: `lorafw import`, plan and lint check it too
        _check_bucket_step(s, p, get_family(s.base_model.arch))
    else:  # the VAE's 8 until the family is known (arch=auto: checked again once the checkpoint names it)
        _check_bucket_step(s, p)

    _check_network(s, p, notes, need_model)
    _check_optimizer(s, p, notes)
    _check_scheduler(s, p, notes)

    d = s.dataset
    if d.root is None and not d.folders:
        p.append("dataset.root: no images given; set dataset.root=DIR (holding REPEATS_NAME folders) or dataset.folders")
    _check_resolution(d, p)
    _check_random_crop(d, p)
    if not d.caption_extension.startswith("."):
        p.append(f"dataset.caption_extension: must start with '.', e.g. .txt, got {d.caption_extension!r}")
    if d.cache_latents_to_disk and not d.cache_latents:
        p.append("dataset.cache_latents_to_disk: needs dataset.cache_latents=true")
    if d.keep_tokens_separator is not None and not d.keep_tokens_separator.strip():
        p.append("dataset.keep_tokens_separator: must be a non-empty marker such as '|||', or null")
    if d.cache_text_encoder_outputs:
        if s.optimizer.text_encoder_lr > 0:
            p.append(
                f"dataset.cache_text_encoder_outputs: the text encoder is trained (optimizer.text_encoder_lr="
                f"{s.optimizer.text_encoder_lr:g}), so its outputs change every step; set optimizer.text_encoder_lr=0 "
                "or dataset.cache_text_encoder_outputs=false"
            )
        changing = _changing_captions(d, dropout=False)  # whole-caption dropout trains on the cached empty caption
        if changing:
            p.append(
                f"dataset.cache_text_encoder_outputs: captions change from step to step ({', '.join(changing)}), "
                "so they cannot be encoded once; turn those off or set dataset.cache_text_encoder_outputs=false"
            )
    for i, f in enumerate(d.folders):
        key = f"dataset.folders[{i}]"
        if f.caption_extension is not None and not f.caption_extension.startswith("."):
            p.append(f"{key}.caption_extension: must start with '.', got {f.caption_extension!r}")
        if f.trigger is not None and (not f.trigger.strip() or "," in f.trigger):
            p.append(f"{key}.trigger: must be one tag without commas, got {f.trigger!r}")

    t = s.train
    if not _DEVICE.match(t.device):
        p.append(f"train.device: {t.device!r} is not a device; use auto, cpu, cuda or cuda:N")
    if t.num_processes > 1 and t.device.startswith("cuda:"):
        p.append(f"train.device: {t.device} names one GPU but train.num_processes={t.num_processes} needs one per process; "
                 "use train.device=auto (choose GPUs with CUDA_VISIBLE_DEVICES)")
    if t.epochs is not None and t.max_steps is not None:
        notes.append(f"train.max_steps={t.max_steps} is not used: train.epochs={t.epochs} counts the run (kohya's "
                     f"max_train_epochs overrides max_train_steps the same way); train.epochs=null trains "
                     f"{t.max_steps} steps")
    if s.output.save_last_n_steps is not None and not s.output.save_every_n_steps:
        notes.append("output.save_last_n_steps is not used: output.save_every_n_steps is not set")
    if t.full_bf16 and t.mixed_precision != "bf16":
        p.append(f"train.full_bf16: needs train.mixed_precision=bf16, got {t.mixed_precision}")
    _check_objective(s, p, notes)
    if t.full_fp16 and t.mixed_precision != "fp16":
        p.append(f"train.full_fp16: needs train.mixed_precision=fp16, got {t.mixed_precision}"
                 + ("; full_bf16 and full_fp16 exclude each other" if t.full_bf16 else ""))

    _check_outputs_extras(s, p)
    out = s.output
    if out.name is not None and (not out.name or _BAD_NAME.search(out.name)):
        p.append(f"output.name: {out.name!r} is not a usable file name (no / \\ : * ? \" < > |)")


def _check_objective(s: RunSpec, p: list[str], notes: list[str]) -> None:
    """Noise, timestep and loss options that contradict each other (kohya refuses the same pairs); the
    checkpoint-dependent rules (prediction type) run in config/prediction.py once the file is read."""
    t = s.train
    if t.adaptive_noise_scale is not None and not t.noise_offset:
        p.append(f"train.adaptive_noise_scale: {t.adaptive_noise_scale:g} is added to the noise offset, but "
                 "train.noise_offset is 0; set train.noise_offset (e.g. 0.0357) or train.adaptive_noise_scale=null")
    if t.noise_offset_random_strength and not t.noise_offset:
        p.append("train.noise_offset_random_strength: draws the offset in [0, train.noise_offset), but "
                 "train.noise_offset is 0; set it (e.g. 0.1) or turn random strength off")
    if t.ip_noise_gamma_random_strength and not t.ip_noise_gamma:
        p.append("train.ip_noise_gamma_random_strength: draws the strength in [0, train.ip_noise_gamma), but "
                 "train.ip_noise_gamma is not set; set it (e.g. 0.1) or turn random strength off")
    lo = 0 if t.min_timestep is None else t.min_timestep
    hi = 1000 if t.max_timestep is None else t.max_timestep
    if lo > hi:
        p.append(f"train.min_timestep: {lo} is above train.max_timestep={hi}; training timesteps are drawn from "
                 "[min_timestep, max_timestep)")
    elif lo == hi and hi > 999:
        p.append(f"train.min_timestep and train.max_timestep: both {hi} would train timestep {hi}, but timesteps run "
                 "0-999; lower them")
    if t.prediction_type == "epsilon" and t.scale_v_pred_loss_like_noise_pred:
        p.append("train.scale_v_pred_loss_like_noise_pred: needs v-prediction, but train.prediction_type=epsilon; "
                 "turn it off or set train.prediction_type=v_prediction (or auto for a v-prediction checkpoint)")
    if t.prediction_type == "v_prediction" and t.v_pred_like_loss:
        p.append("train.v_pred_like_loss: adds a v-like term to an ε loss, but train.prediction_type=v_prediction; "
                 "set train.v_pred_like_loss=null")
    if t.prediction_type == "epsilon" and t.zero_terminal_snr:
        notes.append("train.zero_terminal_snr with train.prediction_type=epsilon: the last timestep's input is pure "
                     "noise, which an ε model cannot learn from (kohya warns the same); ZTSNR is meant for v-prediction")
    if t.prediction_type != "auto":  # options of the other objective; under auto, preflight checks with the file's
        p += flow_problems(t, t.prediction_type, "train.prediction_type")
    if t.zero_terminal_snr and s.sample.sampler == "lms":
        p.append("sample.sampler: lms has no zero-terminal-SNR schedule, so samples of this run would be noise; "
                 "choose euler_a, euler, ddim or dpmpp_2m")
    if s.base_model.arch == "sdxl" and t.clip_skip != 1:
        notes.append(f"train.clip_skip={t.clip_skip} is ignored on SDXL: its encoders' penultimate layers are used by "
                     "design (kohya ignores it there too); set train.clip_skip=1 to silence this")


def _check_model(s: RunSpec, path: Path, p: list[str]) -> None:
    """What the checkpoint is, from its header alone (milliseconds, no weights): a family's checkpoint (the one
    base_model.arch names, or any registered one for auto), and a clip skip its text encoder has layers for."""
    try:
        name = archs.detect(path) if s.base_model.arch == AUTO else s.base_model.arch
        if name not in archs.available():
            return  # named in _check_values
        info = archs.get(name).inspect(str(path))
    except ModelError as e:
        p.append(f"base_model.path: {e}")
        return

    try:
        resolve(s.train, info.prediction, f"base_model.path={s.base_model.path}", archs.get(name).predictions[0])
    except ConfigError as e:
        p.extend(x for x in e.problems if x not in p)  # an explicit objective's option problems are already there
    encoders = getattr(info, "text_encoders", None)  # CLIP configs, where the family has them
    layers = encoders[0].get("num_hidden_layers") if encoders else None
    if layers and s.train.clip_skip > layers:
        p.append(f"train.clip_skip: {s.train.clip_skip} but the text encoder has {layers} layers; use 1 to {layers} (2 is usual)")


def _changing_captions(d: Any, dropout: bool = True) -> list[str]:
    """The settings (dataset-wide or per folder) that make a caption differ between draws (without `dropout`:
    other than whole-caption dropout, which gives only the empty caption)."""
    out = []
    for key in ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate"):
        if key == "caption_dropout_rate" and not dropout:
            continue
        if getattr(d, key):
            out.append(f"dataset.{key}={getattr(d, key)}")
        for i, f in enumerate(d.folders):
            if getattr(f, key):
                out.append(f"dataset.folders[{i}].{key}={getattr(f, key)}")
    return out


def _check_outputs_extras(s: RunSpec, p: list[str]) -> None:
    """sample / validation / ema / log / grid sections."""
    sm = s.sample
    for key in ("width", "height"):
        v = getattr(sm, key)
        if v is not None and (v < 64 or v % 8):
            p.append(f"sample.{key}: must be a multiple of 8 and at least 64, got {v}")
    for i, line in enumerate(sm.prompts):
        try:
            parse_line(line, sm, s.dataset.size)
        except ValueError as e:
            p.append(f"sample.prompts[{i}]: {e}")
    v = s.validation
    if v.split and v.root:
        p.append("validation.root and validation.split: choose one way to hold images out")
    if not s.grid.weights:
        p.append("grid.weights: needs at least one weight, e.g. [1.0, 0.8, 0.6]")
    if any(e < 1 for e in s.grid.epochs):
        p.append(f"grid.epochs: epochs count from 1, got {list(s.grid.epochs)}")
    if s.grid.tagger and not s.grid.score:
        p.append(f"grid.tagger: {s.grid.tagger} is set but grid.score=false; set grid.score=true to use the tagger, "
                 "or grid.tagger=null")


def _check_paths(s: RunSpec, p: list[str], need_model: bool = True) -> None:
    bm = expand(s.base_model.path)
    if not need_model:
        pass
    elif not bm.exists():
        p.append(f"base_model.path: {s.base_model.path} does not exist; point it at a .safetensors file or a diffusers folder")
    elif bm.is_dir():
        if not (bm / "model_index.json").is_file() and not (bm / "unet").is_dir():
            p.append(f"base_model.path: {s.base_model.path} is a folder but not a diffusers model (no model_index.json)")
    elif bm.suffix.lower() in PICKLE_SUFFIXES and not s.base_model.allow_pickle:
        p.append(
            f"base_model.path: {s.base_model.path} is a pickle checkpoint, which can run code when loaded; "
            "use the .safetensors version of the model, or set base_model.allow_pickle=true to read its tensors "
            "only (weights-only unpickling)"
        )
    if need_model and bm.exists() and not (bm.is_file() and bm.suffix.lower() in PICKLE_SUFFIXES):
        _check_model(s, bm, p)  # (a pickle has no header to read: the trainer checks it once loaded)
    for key in ("vae", "text_encoder", "llm_adapter"):
        value = getattr(s.base_model, key)
        if need_model and value is not None and not expand(value).exists():
            p.append(f"base_model.{key}: {value} does not exist")
    if s.grid.tagger is not None and not all((expand(s.grid.tagger) / n).is_file() for n in ("model.onnx", "selected_tags.csv")):
        p.append(f"grid.tagger: {s.grid.tagger} should be a folder holding a WD v3 tagger's model.onnx and "
                 "selected_tags.csv (the folder `lorafw autotag --model` takes); lorafw downloads nothing")
    for key, value in (("sample.prompt_file", s.sample.prompt_file), ("validation.root", s.validation.root)):
        if value is not None and not expand(value).exists():
            p.append(f"{key}: {value} does not exist")
    if s.sample.prompt_file and expand(s.sample.prompt_file).is_file():
        try:
            for line in prompt_lines(s.sample):
                parse_line(line, s.sample, s.dataset.size)
        except (ValueError, OSError) as e:
            p.append(f"sample.prompt_file: {e}")
    iw = s.network.init_weights
    if iw is not None and (s.resume is None or s.network.dim_from_weights) and not expand(iw).is_file():
        p.append(f"network.init_weights: {iw} is not a file; give the .safetensors LoRA (or LyCORIS) file to start "
                 "from")
    if s.resume is not None and not (expand(s.resume) / STATE).is_file() and not never_saved(expand(s.resume)):
        p.append(f"resume: {s.resume} holds no saved training state ({STATE}); "
                 "it is not a run folder lorafw can continue")
    d = s.dataset
    if d.root is not None:
        root = expand(d.root)
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            p.append(f"dataset.root: {d.root} {what}; it should hold folders like 10_name/ with images and captions")
    for i, f in enumerate(d.folders):
        if not expand(f.path).is_dir():
            p.append(f"dataset.folders[{i}].path: {f.path} is not an existing folder")
        if f.mask_dir is not None and not expand(f.mask_dir).is_dir():
            p.append(f"dataset.folders[{i}].mask_dir: {f.mask_dir} is not an existing folder")
    for key in ("reg_root", "mask_dir"):
        v = getattr(d, key)
        if v is not None and not expand(v).is_dir():
            p.append(f"dataset.{key}: {v} is not an existing folder")


RANKED = ("lora", "locon", "loha", "lokr", "glora")  # algorithms with a rank (ia3 learns one vector per layer)


def _check_network(s: RunSpec, p: list[str], notes: list[str], need_model: bool) -> None:
    n = s.network
    if n.algo == "locon":
        if n.conv_dim is None or n.conv_dim < 1:
            p.append(f"network.conv_dim: network.algo=locon needs a rank of at least 1, got {n.conv_dim}")
        if n.conv_alpha is None or n.conv_alpha <= 0:
            p.append(f"network.conv_alpha: network.algo=locon needs a value > 0, got {n.conv_alpha}")
    elif n.algo == "lora" and (n.conv_dim is not None or n.conv_alpha is not None):
        p.append(
            f"network.conv_dim: set ({n.conv_dim}) but network.algo=lora has no convolution adapters; "
            "use network=locon (or network.algo=locon), or set network.conv_dim=null"
        )
    elif n.conv_dim is not None and n.conv_dim < 1:
        p.append(f"network.conv_dim: a rank of at least 1, or null for no convolution adapters; got {n.conv_dim}")
    elif n.conv_alpha is not None and n.conv_alpha <= 0:
        p.append(f"network.conv_alpha: must be > 0, got {n.conv_alpha}")
    elif n.conv_dim is not None and n.conv_alpha is None and n.algo != "ia3":
        p.append(f"network.conv_alpha: network.conv_dim={n.conv_dim} needs an alpha too, e.g. network.conv_alpha={n.conv_dim}")
    if n.dora_wd and n.algo not in ("lora", "locon", "loha", "lokr"):
        p.append(f"network.dora_wd: LyCORIS has no weight-decomposed {n.algo}; DoRA works with lora, locon, loha and lokr")
    lokr_only = [k for k in ("decompose_both", "full_matrix") if getattr(n, k)] + (["factor"] if n.factor != -1 else [])
    if lokr_only and n.algo != "lokr":
        p.append(f"network.{lokr_only[0]}: a LoKr setting, but network.algo={n.algo}; use network=lokr or remove it")
    if n.factor == 0 or n.factor < -1:
        p.append(f"network.factor: -1 (as square as possible) or a positive factor, got {n.factor}")
    if n.train_on_input and n.algo != "ia3":
        p.append(f"network.train_on_input: an IA3 setting, but network.algo={n.algo}; use network=ia3 or remove it")
    if n.use_tucker and n.algo not in ("locon", "loha", "lokr"):
        p.append(f"network.use_tucker: decomposes k x k convolutions, which only locon, loha and lokr adapt; got {n.algo}")
    if n.use_scalar and n.algo not in ("lora", "locon", "loha", "lokr"):
        p.append(f"network.use_scalar: LyCORIS has it for lora, locon, loha and lokr, not {n.algo}")
    if (n.rank_dropout or n.dropout) and n.algo == "ia3":
        p.append("network.dropout / network.rank_dropout: IA3 learns one scale per channel, it has no rank to drop; "
                 "use network.module_dropout")
    if n.rank_dropout_scale and (n.algo in ("lora", "locon", "ia3")):
        what = "IA3 has no rank dropout" if n.algo == "ia3" else (
            f"lorafw's {n.algo}{' (DoRA)' if n.dora_wd else ''} drops ranks as kohya's networks/lora.py does, always "
            "rescaling the kept ones by 1/(1-p)")
        p.append(f"network.rank_dropout_scale: LyCORIS's switch for loha, lokr and glora; {what}; remove it")
    if n.train_norm and n.algo == "lora" and not n.dora_wd:
        p.append("network.train_norm: kohya's networks.lora (network.algo=lora) trains no norm layers; LyCORIS's "
                 "networks do: use network.algo=locon (network=locon), or remove it")
    if n.train_norm and s.base_model.arch == "anima":
        p.append("network.train_norm: sd-scripts' Anima network (networks.lora_anima) trains no norm layers; remove it")
    if n.dim_from_weights and n.init_weights is None:
        p.append("network.dim_from_weights: takes the ranks from network.init_weights, which is not set; set "
                 "network.init_weights=FILE or remove dim_from_weights")
    by_block = [k for k in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas") if getattr(n, k)]
    if n.dim_from_weights and by_block:
        p.append(f"network.{by_block[0]}: with network.dim_from_weights every layer's rank and alpha come from "
                 "network.init_weights (kohya ignores block_dims then, too); remove one of them")
    plus = [k for k in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio") if getattr(n, k)]
    if plus and n.algo not in ("lora", "locon"):
        p.append(f"network.{plus[0]}: LoRA+ speeds up lora_up, which only lora and locon have (network.algo={n.algo})")
    if n.algo == "ia3" and (n.block_dims or n.conv_block_dims):
        p.append("network.block_dims: IA3 has no rank to set per block")
    if need_model and s.base_model.arch != AUTO:
        p.extend(blocks.check(s.base_model.arch, n))
    if n.algo == "ia3":
        notes.append("network.algo=ia3: ComfyUI's LoRA loader ignores IA3 files (A1111/Forge and LyCORIS read them)")
    # LyCORIS writes a Tucker core (lokr_t2) where conv_dim < half a 3x3 layer's larger Kronecker factor; SD1.5/SDXL
    # convolutions have at most 2560 channels, so never from conv_dim 1280 on (conf/network/lokr.yaml's 10000)
    if n.algo == "lokr" and n.use_tucker and n.conv_dim is not None and n.conv_dim < 1280 and not n.full_matrix:
        notes.append("network.use_tucker with lokr: ComfyUI fails on LoKr's Tucker-factored 3x3 convolutions (those with "
                     "conv_dim below half their larger Kronecker factor): it logs 'ERROR lokr ... view size is not "
                     "compatible' and leaves them unpatched (ComfyUI issue #11245; checks/comfy_check.py). For files "
                     "used in ComfyUI, set network.use_tucker=false")


def _check_optimizer(s: RunSpec, p: list[str], notes: list[str]) -> None:
    import importlib.util

    o, n = s.optimizer, s.network
    info = OPTIMIZERS.get(o.name)
    if info is None:
        if not is_class_path(o.name):
            p.append(f"optimizer.name: unknown optimizer {o.name!r}; choose one of: {', '.join(OPTIMIZERS)}, "
                     "or give any optimizer class as module.Class")
        elif importlib.util.find_spec(o.name.split(".")[0]) is None:
            p.append(f"optimizer.name: {o.name}: the module {o.name.split('.')[0]!r} is not installed; install the package "
                     f"that provides it, or choose one of: {', '.join(OPTIMIZERS)}")
    else:
        if info.n_betas == 0:
            if o.betas and tuple(o.betas) != (0.9, 0.999):
                notes.append(f"optimizer.betas={list(o.betas)} is not used by {o.name}")
        elif len(o.betas) != info.n_betas:
            p.append(f"optimizer.betas: {o.name} takes {info.n_betas} betas, got {list(o.betas)}")
        for unknown in sorted(set(o.args) - set(info.args) - set(info.fixed)):
            p.append(
                f"optimizer.args.{unknown}: not an argument of {o.name}; allowed: {', '.join(sorted(info.args))}"
            )
        for k in sorted(set(o.args) & set(info.fixed)):
            if o.args[k] != info.fixed[k]:
                p.append(f"optimizer.args.{k}: {o.name} always uses {k}={info.fixed[k]}")
        if info.adaptive:
            lrs = {x for x in (o.unet_lr, o.text_encoder_lr) if x}
            if len(lrs) > 1:
                p.append(  # sd-scripts warns, then the library raises RuntimeError at the first step (test_optim)
                    f"optimizer.text_encoder_lr: {o.name} needs the same lr for the UNet and the text encoder (or 0 to "
                    f"freeze one); got unet_lr={o.unet_lr:g}, text_encoder_lr={o.text_encoder_lr:g} — use "
                    "optimizer.text_encoder_lr=${.lr}. (sd-scripts accepts it with a warning, then "
                    f"{info.package} stops at the first step: 'Setting different lr values in different parameter "
                    "groups is only supported for values of 0')"
                )
            spread = [k for k in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio",
                                  "down_lr_weight", "mid_lr_weight", "up_lr_weight") if getattr(n, k) not in (None, (), "")]
            if spread:
                p.append(f"network.{spread[0]}: gives parameter groups different lrs, which {o.name} refuses (it adapts "
                         "one step size for all); use another optimizer or remove it")
            if max(lrs or {1.0}) <= 0.1:
                notes.append(f"optimizer.lr={o.lr:g}: {o.name} scales its own step size, so the lr is a multiplier "
                             "near 1.0 (kohya warns below 0.1)")
    if any(not 0.0 <= b < 1.0 for b in o.betas):
        p.append(f"optimizer.betas: each beta must be in [0, 1), got {list(o.betas)}")
    if o.unet_lr == 0 and o.text_encoder_lr == 0:
        p.append("optimizer.unet_lr and optimizer.text_encoder_lr: both 0, nothing would be trained")
    if info is not None and info.schedule_free and s.train.full_bf16:
        p.append(f"train.full_bf16: {o.name} keeps two points of the weights and switches between them, which "
                 "full_bf16's fp32 master copies do not follow; use train.full_bf16=false or another optimizer")
    st = o.stop_text_encoder_training
    if st is not None and st >= 1 and st != int(st):
        p.append(f"optimizer.stop_text_encoder_training: {st} is neither a step count (a whole number) nor a fraction (< 1)")
    if st is not None and o.text_encoder_lr == 0:
        notes.append("optimizer.stop_text_encoder_training is not used: the text encoder is not trained")


def _check_scheduler(s: RunSpec, p: list[str], notes: list[str]) -> None:
    sc = s.scheduler
    if sc.type:
        if not sc.type.replace(".", "").replace("_", "").isalnum():
            p.append(f"scheduler.type: {sc.type!r} is not a class name (module.Class or a torch.optim.lr_scheduler class)")
        return
    if sc.args:
        p.append("scheduler.args: keyword arguments for scheduler.type, which is not set")
    used = SCHEDULERS.get(sc.name)
    if used is None:
        p.append(f"scheduler.name: unknown scheduler {sc.name!r}; choose one of: {', '.join(SCHEDULERS)}, "
                 "or give any scheduler class as scheduler.type")
        return
    for key in ("warmup_ratio", "num_cycles", "min_lr", "d", "gamma", "warmup_steps", "power", "min_lr_ratio",
                "decay_ratio", "step_rules"):
        value = getattr(sc, key)
        if sc.name == "rex" and key in ("min_lr", "d", "gamma", "num_cycles") and value is None:
            p.append(f"scheduler.{key}: scheduler rex needs it set")
        elif key not in used and value is not None:
            notes.append(f"scheduler.{key}={value} is not used by scheduler {sc.name}")
    if sc.name == "piecewise_constant" and not sc.step_rules:
        p.append("scheduler.step_rules: piecewise_constant needs its rules, e.g. '1:100,0.1:200,0.01'")
    p.extend(scheduler_problems(sc, s.optimizer.lr))
    if sc.name == "adafactor" and s.optimizer.name != "adafactor":
        p.append(f"scheduler.name: the adafactor scheduler reads Adafactor's own lr; optimizer.name={s.optimizer.name} "
                 "has none; choose another scheduler")


def _check_resolution(d: DatasetSpec, p: list[str]) -> None:
    """dataset.resolution and the bucket sides, as sd-scripts checks them (prepare_dataset_args,
    BaseDataset.adjust_min_max_bucket_reso_by_steps); the family's bucket step is `_check_bucket_step`'s."""
    r = d.resolution
    if not isinstance(r, int) and len(r) not in (1, 2):
        p.append(f"dataset.resolution: give N or W,H (e.g. 512 or [512, 768]), got {list(r)}")
        return
    w, h = d.size
    shown = w if w == h else f"{w},{h}"
    if min(w, h) < 64:
        p.append(f"dataset.resolution: each side must be at least 64, got {shown}")
    if d.enable_bucket:
        if d.min_bucket_reso > min(w, h):
            p.append(f"dataset.min_bucket_reso: {d.min_bucket_reso} is above dataset.resolution's shorter side "
                     f"({shown}); lower it or raise the resolution")
        if d.max_bucket_reso < max(w, h):
            p.append(f"dataset.max_bucket_reso: {d.max_bucket_reso} is below dataset.resolution's longer side "
                     f"({shown}); raise it or lower the resolution")


def _random_crop_keys(d: DatasetSpec) -> list[str]:
    """The keys that turn random cropping on for some folder: each folder's own, and the dataset-wide one where a
    folder takes it (every folder found under dataset.root / reg_root does)."""
    keys = [f"dataset.folders[{i}].random_crop" for i, f in enumerate(d.folders) if f.random_crop]
    takes_dataset_wide = d.root is not None or d.reg_root is not None or any(f.random_crop is None for f in d.folders)
    return (["dataset.random_crop"] if d.random_crop and takes_dataset_wide else []) + keys


def _check_random_crop(d: DatasetSpec, p: list[str]) -> None:
    """kohya's is_latent_cacheable: a random crop is drawn each step, so its latent cannot be encoded once."""
    keys = _random_crop_keys(d)
    if keys and d.cache_latents:
        p.append(f"{' / '.join(keys)}: a random crop is a new window every step, so its latent cannot be encoded "
                 "once, as dataset.cache_latents=true does (sd-scripts refuses the pair too: is_latent_cacheable); set "
                 "dataset.cache_latents=false (each step then encodes its crop with the VAE) or random_crop=false")


def _check_bucket_step(s: RunSpec, p: list[str], family: object | None = None) -> None:
    """Bucket sides in the family's step (its `bucket_step`; sd-scripts' verify_bucket_reso_steps: a multiple of 64
    for SD1.5, 32 for SDXL, 16 for Anima), or in the VAE's 8 where the family is not known yet. Like sd-scripts,
    only with buckets on: without them bucket_reso_steps is unused (sd-scripts sets it to None, checks nothing),
    and the one size, W×H, is what must suit the family (`exact`: a UNet takes any, Anima's DiT whole patches)."""
    d, label = s.dataset, getattr(family, "label", "")
    step = getattr(family, "bucket_step", None)
    if not d.enable_bucket:
        (w, h), n = d.size, step.exact if step is not None else 1
        if step is not None and (w % n or h % n):
            p.append(f"dataset.resolution: without buckets every image is trained at exactly {w}x{h}; {label} "
                     f"needs sides that are multiples of {n} ({step.why}): set dataset.resolution=[{w - w % n}, "
                     f"{h - h % n}] or dataset.enable_bucket=true (buckets need only the area)")
        return
    if step is not None and (d.bucket_reso_steps < step.multiple or d.bucket_reso_steps % step.multiple):
        p.append(f"dataset.bucket_reso_steps: {label} needs a multiple of {step.multiple} ({step.why}), got "
                 f"{d.bucket_reso_steps}; sd-scripts' {step.kohya_script} refuses it too (verify_bucket_reso_steps("
                 f"{step.multiple})); set dataset.bucket_reso_steps={max(step.multiple, 64)}, the usual value")
    elif step is None and (d.bucket_reso_steps < 8 or d.bucket_reso_steps % 8):
        p.append(f"dataset.bucket_reso_steps: must be a multiple of 8 (the VAE's latent is 1/8 the size; 64 is "
                 f"usual), got {d.bucket_reso_steps}")


def _effective(s: RunSpec, notes: list[str]) -> RunSpec:
    """kohya's substitutions, made visible: Adafactor with relative_step runs the `adafactor` scheduler, and a
    schedule-free optimizer a constant lr (it schedules itself)."""
    import dataclasses

    o, sc = s.optimizer, s.scheduler
    plain = dataclasses.replace(sc, name="constant", warmup_ratio=None, warmup_steps=None, num_cycles=None, min_lr=None,
                                d=None, gamma=None, power=None, min_lr_ratio=None, decay_ratio=None, step_rules=None,
                                type=None, args={})
    if relative_step(o) and sc.name != "adafactor":
        notes.append(f"scheduler.name={sc.name} is replaced by adafactor: Adafactor with relative_step=true computes its "
                     "own lr (kohya does the same); set optimizer.args.relative_step=false to use a schedule")
        return dataclasses.replace(s, scheduler=dataclasses.replace(plain, name="adafactor"))
    info = OPTIMIZERS.get(o.name)
    if info is not None and info.schedule_free and (sc.name != "constant" or sc.type):
        notes.append(f"scheduler.name={sc.name} is replaced by constant: {o.name} needs no lr schedule (kohya does the "
                     "same); its warmup is optimizer.args.warmup_steps")
        return dataclasses.replace(s, scheduler=plain)
    return s
