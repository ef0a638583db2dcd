"""Turn a composed config (plain dict) into a validated RunSpec, or one error listing every problem.

Runs before any weights or images are read and imports no torch. Also runnable alone:
`lorafw check +recipe=NAME ...`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lorafw.config.spec import RunSpec
from lorafw.config.typed import from_dict
from lorafw.errors import ConfigError
from lorafw.paths import expand
from lorafw.optim.catalog import OPTIMIZERS, SCHEDULERS
from lorafw.sampling.prompts import parse_line, prompt_lines

AUTO = "auto"  # base_model.arch: the checkpoint's own tensors decide (resolve_arch)
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
    if check_paths:
        _check_paths(spec, problems, need_model)
    if problems:
        raise ConfigError(problems)
    if check_paths and need_model and spec.base_model.arch == AUTO:
        spec = resolve_arch(spec)
    return spec, notes


def resolve_arch(spec: RunSpec) -> RunSpec:
    """base_model.arch=auto → the architecture the checkpoint's tensors show (header only, no torch).
    A spec that names its arch is returned as it is."""
    import dataclasses

    from lorafw.errors import ModelError
    from lorafw.models.load import inspect_base_model

    if spec.base_model.arch != AUTO:
        return spec
    try:
        arch = inspect_base_model(expand(spec.base_model.path)).arch
    except (ModelError, OSError) as e:
        raise ConfigError([f"base_model.arch: auto needs a readable checkpoint to read the architecture from: {e}"]) from None
    return dataclasses.replace(spec, base_model=dataclasses.replace(spec.base_model, arch=arch))


def _check_values(s: RunSpec, p: list[str], notes: list[str], need_model: bool = True) -> None:
    from lorafw.registry import available_archs

    archs = available_archs()
    if need_model and s.base_model.arch not in archs and s.base_model.arch != AUTO:
        p.append(f"base_model.arch: no trainer for {s.base_model.arch!r}; available: {', '.join(archs)}")

    n = s.network
    if n.algo == "locon":
        if n.conv_dim is None or n.conv_dim < 1:
            p.append(f"network.conv_dim: network.algo=locon needs a rank of at least 1, got {n.conv_dim}")
        if n.conv_alpha is None or n.conv_alpha <= 0:
            p.append(f"network.conv_alpha: network.algo=locon needs a value > 0, got {n.conv_alpha}")
    elif n.conv_dim is not None or n.conv_alpha is not None:
        p.append(
            f"network.conv_dim: set ({n.conv_dim}) but network.algo=lora has no convolution adapters; "
            "use network=locon (or network.algo=locon), or set network.conv_dim=null"
        )

    o = s.optimizer
    info = OPTIMIZERS.get(o.name)
    if info is None:
        p.append(f"optimizer.name: unknown optimizer {o.name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    else:
        if len(o.betas) != info.n_betas:
            p.append(f"optimizer.betas: {o.name} takes {info.n_betas} betas, got {list(o.betas)}")
        for unknown in sorted(set(o.args) - info.args):
            p.append(
                f"optimizer.args.{unknown}: not an argument of {o.name}; allowed: {', '.join(sorted(info.args))}"
            )
    if any(not 0.0 <= b < 1.0 for b in o.betas):
        p.append(f"optimizer.betas: each beta must be in [0, 1), got {list(o.betas)}")
    if o.name == "prodigy" and o.unet_lr and o.text_encoder_lr and o.unet_lr != o.text_encoder_lr:
        p.append(
            f"optimizer.text_encoder_lr: Prodigy needs the same lr for the UNet and the text encoder (or 0 to "
            f"freeze one); got unet_lr={o.unet_lr:g}, text_encoder_lr={o.text_encoder_lr:g} — use optimizer.text_encoder_lr=${{.lr}}"
        )
    if o.unet_lr == 0 and o.text_encoder_lr == 0:
        p.append("optimizer.unet_lr and optimizer.text_encoder_lr: both 0, nothing would be trained")

    sc = s.scheduler
    used = SCHEDULERS.get(sc.name)
    if used is None:
        p.append(f"scheduler.name: unknown scheduler {sc.name!r}; choose one of: {', '.join(SCHEDULERS)}")
    else:
        for key in ("warmup_ratio", "num_cycles", "min_lr", "d", "gamma"):
            value = getattr(sc, key)
            if key in used and value is None:
                p.append(f"scheduler.{key}: scheduler {sc.name} needs it set")
            elif key not in used and value is not None:
                notes.append(f"scheduler.{key}={value} is not used by scheduler {sc.name}")

    d = s.dataset
    if d.root is None and not d.folders:
        p.append("dataset.root: no images given; set dataset.root=DIR (holding REPEATS_NAME folders) or dataset.folders")
    if d.resolution < 64 or d.resolution % 8:
        p.append(f"dataset.resolution: must be a multiple of 8 and at least 64, got {d.resolution}")
    if d.bucket_reso_steps < 8 or d.bucket_reso_steps % 8:
        p.append(f"dataset.bucket_reso_steps: must be a multiple of 8 (64 is usual), got {d.bucket_reso_steps}")
    if d.enable_bucket:
        if d.min_bucket_reso > d.resolution:
            p.append(f"dataset.min_bucket_reso: {d.min_bucket_reso} is above dataset.resolution={d.resolution}")
        if d.max_bucket_reso < d.resolution:
            p.append(f"dataset.max_bucket_reso: {d.max_bucket_reso} is below dataset.resolution={d.resolution}")
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
        changing = _changing_captions(d)
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
    if t.full_bf16 and t.mixed_precision != "bf16":
        p.append(f"train.full_bf16: needs train.mixed_precision=bf16, got {t.mixed_precision}")
    if t.full_fp16 and t.mixed_precision != "fp16":
        p.append(f"train.full_fp16: needs train.mixed_precision=fp16, got {t.mixed_precision}"
                 + ("; full_bf16 and full_fp16 exclude each other" if t.full_bf16 else ""))

    _check_outputs_extras(s, p)
    out = s.output
    if out.name is not None and (not out.name or _BAD_NAME.search(out.name)):
        p.append(f"output.name: {out.name!r} is not a usable file name (no / \\ : * ? \" < > |)")


def _check_model(s: RunSpec, path: Path, p: list[str]) -> None:
    """What the checkpoint is, from its header alone (milliseconds, no torch): the right architecture,
    and a clip skip its text encoder has layers for."""
    from lorafw.errors import ModelError
    from lorafw.models.load import check_arch, inspect_base_model

    try:
        info = inspect_base_model(path)
        if s.base_model.arch != AUTO:
            check_arch(info, s.base_model.arch, s.base_model.path)
    except ModelError as e:
        p.append(f"base_model.path: {e}")
        return
    layers = info.text_encoders[0].get("num_hidden_layers") if info.text_encoders else None
    if layers and s.train.clip_skip > layers:
        p.append(f"train.clip_skip: {s.train.clip_skip} but the text encoder has {layers} layers; use 1 to {layers} (2 is usual)")


def _changing_captions(d: Any) -> list[str]:
    """The settings (dataset-wide or per folder) that make a caption differ between draws."""
    out = []
    for key in ("shuffle_caption", "caption_dropout_rate", "caption_tag_dropout_rate"):
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
            parse_line(line, sm, s.dataset.resolution)
        except ValueError as e:
            p.append(f"sample.prompts[{i}]: {e}")
    v = s.validation
    if v.split and v.root:
        p.append("validation.root and validation.split: choose one way to hold images out")
    if not s.grid.weights:
        p.append("grid.weights: needs at least one weight, e.g. [1.0, 0.8, 0.6]")
    if any(e < 1 for e in s.grid.epochs):
        p.append(f"grid.epochs: epochs count from 1, got {list(s.grid.epochs)}")


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
    if need_model and s.base_model.vae is not None and not expand(s.base_model.vae).exists():
        p.append(f"base_model.vae: {s.base_model.vae} does not exist")
    for key, value in (("sample.prompt_file", s.sample.prompt_file), ("validation.root", s.validation.root)):
        if value is not None and not expand(value).exists():
            p.append(f"{key}: {value} does not exist")
    if s.sample.prompt_file and expand(s.sample.prompt_file).is_file():
        try:
            for line in prompt_lines(s.sample):
                parse_line(line, s.sample, s.dataset.resolution)
        except (ValueError, OSError) as e:
            p.append(f"sample.prompt_file: {e}")
    if s.resume is not None and not (expand(s.resume) / "state.pt").is_file():
        p.append(f"resume: {s.resume} holds no saved training state (state.pt); it is not a run folder lorafw can continue")
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
