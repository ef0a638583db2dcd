"""The LoRA file's metadata: kohya `ss_*` keys and `modelspec.*` keys (FORMATS.md). Pure.

A1111/Forge show `ss_output_name` as the alias and `ss_tag_frequency` in the training-tags
panel; Civitai reads `ss_base_model_version`; everyone reads values as strings.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafw.config.spec import RunSpec

BASE_MODEL_VERSION = {"sd15": "sd_v1", "sdxl": "sdxl_base_v1-0"}
MODELSPEC_ARCH = {"sd15": "stable-diffusion-v1/lora", "sdxl": "stable-diffusion-xl-v1-base/lora"}
MODELSPEC_IMPL = {"sd15": "diffusers", "sdxl": "https://github.com/Stability-AI/generative-models"}


@dataclass(frozen=True)
class TrainingFacts:
    """What the run knew when the file was written."""

    arch: str
    epoch: int
    step: int
    total_steps: int
    batches_per_epoch: int
    warmup_steps: int
    num_train_images: int  # Σ images × repeats over the training folders
    num_reg_images: int
    started_at: float
    optimizer: str  # e.g. "bitsandbytes.optim.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))"
    mixed_precision: str
    tag_frequency: dict[str, dict[str, int]]
    dataset_dirs: dict[str, dict[str, int]]
    bucket_info: dict[str, Any]
    triggers: list[str] = field(default_factory=list)
    session_id: str = ""
    processes: int = 1  # data-parallel processes: kohya's total batch counts them
    objective: Any = None  # objective.prediction.Resolved: the prediction type and ZTSNR trained (None: ε, no ZTSNR)


def network_module(spec: RunSpec) -> tuple[str, dict[str, str]]:
    n = spec.network
    if n.algo == "lora" and not n.dora_wd:
        return "networks.lora", {}
    args = {"algo": n.algo}
    if n.conv_dim is not None:
        args.update(conv_dim=str(n.conv_dim), conv_alpha=f"{n.conv_alpha:g}")
    if n.dora_wd:
        args["dora_wd"] = "True"
    return "lycoris.kohya", args


def _num(x: float | int | None) -> str:
    return "None" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


MODELSPEC_PREDICTION = {False: "epsilon", True: "v"}  # kohya's sai_model_spec PRED_TYPE_EPSILON / PRED_TYPE_V


def objective_metadata(t: Any, v_pred: bool, ztsnr: bool) -> dict[str, str]:
    """The objective's settings under kohya's ss_* names (train_network.py writes all but the last four, which
    follow its naming for the options it does not record: the timestep range, the v-like loss options and
    ss_v_parameterization, which readers such as Civitai's and the UIs' inspectors look for)."""
    return {
        "ss_v_parameterization": str(v_pred),
        "ss_zero_terminal_snr": str(ztsnr),
        "ss_noise_offset_random_strength": str(t.noise_offset_random_strength),
        "ss_adaptive_noise_scale": _num(t.adaptive_noise_scale),
        "ss_multires_noise_iterations": _num(t.multires_noise_iterations),
        "ss_multires_noise_discount": _num(t.multires_noise_discount),
        "ss_ip_noise_gamma": _num(t.ip_noise_gamma),
        "ss_ip_noise_gamma_random_strength": str(t.ip_noise_gamma_random_strength),
        "ss_huber_schedule": t.huber_schedule,
        "ss_huber_c": _num(t.huber_c),
        "ss_huber_scale": _num(t.huber_scale),
        "ss_debiased_estimation": str(t.debiased_estimation_loss),
        "ss_scale_weight_norms": _num(t.scale_weight_norms),
        "ss_min_timestep": _num(t.min_timestep),
        "ss_max_timestep": _num(t.max_timestep),
        "ss_scale_v_pred_loss_like_noise_pred": str(t.scale_v_pred_loss_like_noise_pred),
        "ss_v_pred_like_loss": _num(t.v_pred_like_loss),
    }


def build_metadata(spec: RunSpec, facts: TrainingFacts, name: str) -> dict[str, str]:
    """Every metadata key as a string."""
    module, net_args = network_module(spec)
    v_pred = bool(facts.objective is not None and facts.objective.v)
    ztsnr = bool(facts.objective is not None and facts.objective.zero_terminal_snr)
    d, t, o, sc = spec.dataset, spec.train, spec.optimizer, spec.scheduler
    res = d.resolution
    train_te = o.text_encoder_lr > 0
    meta: dict[str, Any] = {
        "ss_output_name": name,
        "ss_session_id": facts.session_id,
        "ss_training_started_at": f"{facts.started_at:.3f}",
        "ss_training_finished_at": f"{time.time():.3f}",
        "ss_base_model_version": BASE_MODEL_VERSION[facts.arch],
        "ss_v2": "False",
        "ss_sd_model_name": Path(spec.base_model.path).name,
        "ss_vae_name": Path(spec.base_model.vae).name if spec.base_model.vae else "None",
        "ss_network_module": module,
        "ss_network_dim": str(spec.network.dim),
        "ss_network_alpha": _num(float(spec.network.alpha)),
        "ss_network_dropout": _num(spec.network.dropout),
        "ss_network_args": json.dumps(net_args),  # JSON even when empty: readers json.loads it
        "ss_learning_rate": _num(o.lr),
        "ss_unet_lr": _num(o.unet_lr),
        "ss_text_encoder_lr": _num(o.text_encoder_lr),
        "ss_network_train_unet_only": str(not train_te),
        "ss_network_train_text_encoder_only": str(o.unet_lr == 0),
        "ss_optimizer": facts.optimizer,
        "ss_lr_scheduler": sc.name,
        "ss_lr_warmup_steps": str(facts.warmup_steps),
        "ss_max_train_steps": str(facts.total_steps),
        "ss_num_epochs": str(t.epochs),
        "ss_epoch": str(facts.epoch),
        "ss_steps": str(facts.step),
        "ss_num_batches_per_epoch": str(facts.batches_per_epoch),
        "ss_num_train_images": str(facts.num_train_images),
        "ss_num_reg_images": str(facts.num_reg_images),
        "ss_prior_loss_weight": _num(d.prior_loss_weight),
        "ss_masked_loss": str(d.masked_loss),
        "ss_batch_size_per_device": str(t.batch_size),
        "ss_total_batch_size": str(t.batch_size * facts.processes * t.gradient_accumulation_steps),
        "ss_gradient_accumulation_steps": str(t.gradient_accumulation_steps),
        "ss_gradient_checkpointing": str(t.gradient_checkpointing),
        "ss_mixed_precision": facts.mixed_precision,
        "ss_full_fp16": str(t.full_fp16),
        "ss_full_bf16": str(t.full_bf16),
        "ss_max_grad_norm": _num(t.max_grad_norm),
        "ss_clip_skip": str(t.clip_skip) if facts.arch == "sd15" else "None",
        "ss_max_token_length": str(t.max_token_length),
        "ss_min_snr_gamma": _num(t.min_snr_gamma),
        "ss_noise_offset": _num(t.noise_offset),
        "ss_loss_type": t.loss_type,
        "ss_seed": str(spec.seed),
        "ss_resolution": f"({res}, {res})",
        "ss_enable_bucket": str(d.enable_bucket),
        "ss_min_bucket_reso": str(d.min_bucket_reso),
        "ss_max_bucket_reso": str(d.max_bucket_reso),
        "ss_bucket_no_upscale": str(d.bucket_no_upscale),
        "ss_cache_latents": str(d.cache_latents),
        "ss_shuffle_caption": str(d.shuffle_caption),
        "ss_keep_tokens": str(d.keep_tokens),
        "ss_flip_aug": str(d.flip_aug),
        "ss_caption_dropout_rate": _num(d.caption_dropout_rate),
        "ss_caption_tag_dropout_rate": _num(d.caption_tag_dropout_rate),
        "ss_keep_tokens_separator": d.keep_tokens_separator or "",
        "ss_tag_frequency": json.dumps(facts.tag_frequency, ensure_ascii=False),
        "ss_dataset_dirs": json.dumps(facts.dataset_dirs, ensure_ascii=False),
        "ss_bucket_info": json.dumps(facts.bucket_info),
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": MODELSPEC_ARCH[facts.arch],
        "modelspec.implementation": MODELSPEC_IMPL[facts.arch],
        "modelspec.title": f"{name}-{facts.epoch:02d}" if facts.epoch else name,
        "modelspec.date": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(facts.started_at)),
        "modelspec.resolution": f"{res}x{res}",
        "modelspec.prediction_type": MODELSPEC_PREDICTION[v_pred],
    }
    meta.update(objective_metadata(t, v_pred, ztsnr))
    if facts.triggers:
        meta["modelspec.trigger_phrase"] = ", ".join(facts.triggers)
    if facts.arch == "sd15":
        meta["modelspec.encoder_layer"] = str(t.clip_skip)
    return {k: str(v) for k, v in meta.items()}
