"""lorafw runs → kohya sd-scripts TOML files (`lorafw export`). Pure functions over a spec.

Export writes the kohya pair that repeats a run in sd-scripts, plus a [lorafw] section (sd-scripts
ignores unknown keys) holding what kohya has no key for, so import(export(spec)) is the same spec.
Import lives in dialects.py (files → kohya arguments) and classify.py (kohya arguments → lorafw keys).
"""

from __future__ import annotations

from typing import Any

from lorafw.config.schema import kohya_names
from lorafw.config.spec import NetworkSpec, RunSpec
from lorafw.data.buckets import RESIZE_INTERPOLATION
from lorafw.errors import LorafwError
from lorafw.models.load import inspect_base_model
from lorafw.paths import expand

OPTIMIZER_EXPORT = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "prodigy": "Prodigy", "came": "came_pytorch.CAME"}
REX_CLASS = "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts"
# kohya key → lorafw key, for values that carry over as they are: read from the schema's `kohya=` names
# (lorafw/config/spec.py); the keys below have values that need translating (classify.Classifier.translated).
TRANSLATED = {"resolution", "mixed_precision", "sample_sampler"}
DIRECT = {k: v for k, v in kohya_names(RunSpec).items() if k not in TRANSLATED}


# -- export ------------------------------------------------------------------------------------------
OBJECTIVE_KEYS = ("zero_terminal_snr", "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss", "debiased_estimation_loss",
                  "noise_offset_random_strength", "adaptive_noise_scale", "multires_noise_iterations",
                  "multires_noise_discount", "ip_noise_gamma", "ip_noise_gamma_random_strength", "min_timestep",
                  "max_timestep", "loss_type", "huber_schedule", "huber_c", "huber_scale", "scale_weight_norms")


def objective_args(s: Any) -> dict[str, Any]:
    """The objective's train.* settings under sd-scripts' argument names (unset ones left out: TOML has no null)."""
    return {k: getattr(s.train, k) for k in OBJECTIVE_KEYS if getattr(s.train, k) is not None}


def _v_parameterization(s: Any) -> bool:
    """sd-scripts' v_parameterization: what the run trains, reading the checkpoint when prediction_type=auto."""
    if s.train.prediction_type != "auto":
        return s.train.prediction_type == "v_prediction"

    try:
        return inspect_base_model(expand(s.base_model.path)).prediction.prediction == "v_prediction"
    except (LorafwError, OSError):
        return False


def kohya_mixed_precision(asked: str, resolved: str | None = None) -> str:
    """sd-scripts' mixed_precision (no | fp16 | bf16) for lorafw's train.mixed_precision. `auto` has no kohya
    equivalent: the precision the run resolved it to (run.json's device.precision) when known, else fp16
    (the usual GPU setting in kohya configs)."""
    if asked in ("no", "fp16", "bf16"):
        return asked
    return resolved if resolved in ("no", "fp16", "bf16") else "fp16"


def kohya_text_window(clip_skip: int, max_token_length: int) -> dict[str, int]:
    """clip_skip and max_token_length as sd-scripts takes them: left out at lorafw's 1 and 75, which are sd-scripts'
    defaults (unset). An explicit clip_skip = 1 is not the same code in sd-scripts: strategy_sd.encode_tokens then
    takes hidden_states[-1] and calls final_layer_norm itself, outside autocast, which crashes in bf16 on a CPU
    ("mixed dtype (CPU)"); and its --max_token_length accepts only 150 and 225."""
    return {**({"clip_skip": clip_skip} if clip_skip > 1 else {}),
            **({"max_token_length": max_token_length} if max_token_length != 75 else {})}


def export_kohya(spec: Any, total_steps: int | None = None, dataset_dirs: list[tuple[str, int, dict[str, Any]]] | None = None,
                 precision: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A spec → (config_file dict, dataset_config dict) for sd-scripts, with a [lorafw] section for the rest.
    `precision`: what the run resolved train.mixed_precision=auto to, when it ran."""
    s = spec
    net_args = network_args_of(s.network)
    opt_args = [f"weight_decay={s.optimizer.weight_decay!r}", f"betas={literal(s.optimizer.betas)}"]
    opt_args += [f"{k}={literal(val)}" for k, val in s.optimizer.args.items()]
    config: dict[str, Any] = {
        "model_arguments": {"pretrained_model_name_or_path": s.base_model.path, "v2": False,
                            "v_parameterization": _v_parameterization(s),
                            **({"vae": s.base_model.vae} if s.base_model.vae else {})},
        "network_arguments": {"network_module": "lycoris.kohya" if is_lycoris(s.network) else "networks.lora", "network_dim": s.network.dim,
                              "network_alpha": s.network.alpha, "network_dropout": s.network.dropout,
                              **({"network_args": net_args} if net_args else {}),
                              **({"network_train_unet_only": True} if s.optimizer.text_encoder_lr == 0 else {})},
        "optimizer_arguments": {"optimizer_type": OPTIMIZER_EXPORT.get(s.optimizer.name, s.optimizer.name), "optimizer_args": opt_args,
                                "learning_rate": s.optimizer.lr, "unet_lr": s.optimizer.unet_lr,
                                "text_encoder_lr": s.optimizer.text_encoder_lr, "max_grad_norm": s.train.max_grad_norm},
        "training_arguments": {
            "seed": s.seed, "max_train_epochs": s.train.epochs, "train_batch_size": s.train.batch_size,
            "gradient_accumulation_steps": s.train.gradient_accumulation_steps,
            "gradient_checkpointing": s.train.gradient_checkpointing, "mixed_precision": kohya_mixed_precision(s.train.mixed_precision, precision),
            "full_bf16": s.train.full_bf16, "full_fp16": s.train.full_fp16, "no_half_vae": s.train.no_half_vae,
            **kohya_text_window(s.train.clip_skip, s.train.max_token_length), "noise_offset": s.train.noise_offset,
            "sdpa": s.train.attention == "sdpa", "xformers": s.train.attention == "xformers",
            "cache_latents": s.dataset.cache_latents, "vae_batch_size": s.dataset.vae_batch_size,
            "resize_interpolation": RESIZE_INTERPOLATION,
            **({"max_data_loader_n_workers": s.dataset.workers} if s.dataset.workers is not None else {}),
            "cache_latents_to_disk": s.dataset.cache_latents_to_disk,
            "cache_text_encoder_outputs": s.dataset.cache_text_encoder_outputs, "prior_loss_weight": s.dataset.prior_loss_weight,
            "masked_loss": s.dataset.masked_loss,
            **({"min_snr_gamma": s.train.min_snr_gamma} if s.train.min_snr_gamma else {}),
            **objective_args(s),
            **({"torch_compile": True, "dynamo_backend": s.train.compile_backend} if s.train.compile else {}),
        },
        "saving_arguments": {"output_dir": s.output.dir or "", "output_name": s.output.name or "lora", "save_model_as": "safetensors",
                             "save_precision": s.output.save_precision, "save_every_n_epochs": s.output.save_every_n_epochs,
                             **({"training_comment": s.output.comment} if s.output.comment is not None else {})},
    }
    sched = s.scheduler
    o = config["optimizer_arguments"]
    if sched.type:  # kohya builds the class with lr_scheduler_args only
        o["lr_scheduler_type"] = sched.type
        o["lr_scheduler_args"] = [f"{k}={literal(v)}" for k, v in sched.args.items()]
    elif sched.name == "rex":
        o["lr_scheduler_type"] = REX_CLASS
        rex_args = [f"min_lr={sched.min_lr:g}", f"gamma={sched.gamma:g}", f"d={sched.d:g}"]
        if total_steps:
            cycles = sched.num_cycles or 1
            rex_args += [f"first_cycle_max_steps={total_steps // cycles}",
                         f"warmup_steps={round(total_steps * (sched.warmup_ratio or 0)) // cycles}"]
        o["lr_scheduler_args"] = rex_args
    else:
        o["lr_scheduler"] = sched.name
        if sched.num_cycles is not None:
            o["lr_scheduler_num_cycles"] = sched.num_cycles
        if sched.warmup_ratio:
            o["lr_warmup_steps"] = sched.warmup_ratio  # sd-scripts reads a value below 1 as a ratio
        elif sched.warmup_steps:
            o["lr_warmup_steps"] = sched.warmup_steps
        if sched.power is not None:
            o["lr_scheduler_power"] = sched.power
    if s.sample.prompt_file:
        config["sample_prompt_arguments"] = {"sample_prompts": s.sample.prompt_file, "sample_sampler": s.sample.sampler,
                                             "sample_every_n_epochs": s.sample.every_n_epochs}
    if s.dataset.root:
        config["dataset_arguments"] = {"train_data_dir": s.dataset.root, **({"reg_data_dir": s.dataset.reg_root} if s.dataset.reg_root else {})}
    d = s.dataset
    general = {"shuffle_caption": d.shuffle_caption, "keep_tokens": d.keep_tokens, "caption_extension": d.caption_extension,
               "flip_aug": d.flip_aug, "caption_dropout_rate": d.caption_dropout_rate,
               "caption_tag_dropout_rate": d.caption_tag_dropout_rate,
               **({"keep_tokens_separator": d.keep_tokens_separator} if d.keep_tokens_separator else {})}
    ds: dict[str, Any] = {"resolution": d.resolution, "batch_size": s.train.batch_size, "enable_bucket": d.enable_bucket,
                          "min_bucket_reso": d.min_bucket_reso, "max_bucket_reso": d.max_bucket_reso,
                          "bucket_reso_steps": d.bucket_reso_steps, "bucket_no_upscale": d.bucket_no_upscale}
    subsets = []
    for path, repeats, extra in dataset_dirs or []:
        subsets.append({"image_dir": path, "num_repeats": repeats, **extra})
    ds["subsets"] = subsets
    dataset_config = {"general": general, "datasets": [ds]}
    config["lorafw"] = lorafw_section(s)
    return config, dataset_config


def is_lycoris(n: Any) -> bool:
    """kohya's networks.lora trains plain LoRA (LoCon with conv_dim); everything else is LyCORIS."""
    return n.algo not in ("lora",) or n.dora_wd


def network_args_of(n: Any) -> list[str]:
    """network_args that rebuild `n`: algo for LyCORIS, then every network field that differs from its default
    (LyCORIS and kohya's networks.lora read them under the same names; the importer maps them one to one)."""
    import dataclasses

    defaults = NetworkSpec()
    out = [f"algo={n.algo}"] if is_lycoris(n) else []
    for f in dataclasses.fields(NetworkSpec):
        if f.name in ("algo", "dim", "alpha", "dropout"):
            continue
        v = getattr(n, f.name)
        if v == getattr(defaults, f.name) or v is None:
            continue
        if f.name == "conv_alpha" and n.conv_dim is None:
            continue
        text = ",".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, tuple) else (
            f"{v:g}" if isinstance(v, float) else str(v))
        out.append(f"{f.name}={text}")
    return out


def literal(value: Any) -> str:
    """A value as sd-scripts' optimizer_args reads it back (ast.literal_eval): [0.9,0.99], 1e-08, True, 'x'."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(literal(v) for v in value) + "]"
    return repr(value)


def dotted(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists stay lists."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def lorafw_section(spec: Any) -> dict[str, Any]:
    """Everything of the spec, by dotted key: import restores exactly these values (sd-scripts ignores them).
    TOML has no null, so unset values are left out (they come back unset)."""
    out: dict[str, Any] = {}
    for k, v in dotted(spec.to_dict()).items():
        if k in ("resume", "output.dir") or v is None or v == {}:
            continue
        if isinstance(v, list):
            v = [{a: b for a, b in x.items() if b is not None} if isinstance(x, dict) else x for x in v]
        out[k] = v
    for g, option in groups_of(spec).items():
        out[f"groups.{g}"] = option
    return out


def groups_of(spec: Any) -> dict[str, str]:
    net = "dora" if spec.network.algo == "locon" and spec.network.dora_wd else spec.network.algo
    sched = {"cosine_with_restarts": "cosine_restarts"}.get(spec.scheduler.name, spec.scheduler.name)
    return {"base_model": spec.base_model.arch, "network": net, "optimizer": spec.optimizer.name, "scheduler": sched}
