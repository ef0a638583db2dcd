"""The typed run spec: what one training run does, as frozen dataclasses.

Defaults live in conf/ (the YAML groups), not here: every field a config file sets has no
default in its dataclass, so a spec can only come from a composed config (or a saved one).
Fields that default to None here are "not set / not applicable" (e.g. a scheduler's
`min_lr` under cosine), never a value. This module imports no torch: resolving and
validating a recipe is the first thing a user waits for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class BaseModelSpec:
    arch: str
    path: str
    allow_pickle: bool
    vae: str | None = None


@dataclass(frozen=True)
class NetworkSpec:
    algo: Literal["lora", "locon"]
    dim: int
    alpha: float
    dora_wd: bool
    dropout: float
    conv_dim: int | None = None
    conv_alpha: float | None = None


@dataclass(frozen=True)
class OptimizerSpec:
    name: str
    lr: float
    unet_lr: float
    text_encoder_lr: float
    weight_decay: float
    betas: tuple[float, ...]
    args: dict[str, Any]


@dataclass(frozen=True)
class SchedulerSpec:
    name: str
    warmup_ratio: float | None = None
    num_cycles: int | None = None
    min_lr: float | None = None
    d: float | None = None
    gamma: float | None = None


@dataclass(frozen=True)
class FolderSpec:
    """One image folder. Unset fields take the dataset-wide value."""

    path: str
    repeats: int | None = None
    trigger: str | None = None
    is_reg: bool | None = None
    keep_tokens: int | None = None
    keep_tokens_separator: str | None = None
    caption_extension: str | None = None
    shuffle_caption: bool | None = None
    caption_dropout_rate: float | None = None
    caption_tag_dropout_rate: float | None = None
    flip_aug: bool | None = None
    mask_dir: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    root: str | None
    folders: tuple[FolderSpec, ...]
    reg_root: str | None
    default_repeats: int | None
    resolution: int
    caption_extension: str
    shuffle_caption: bool
    keep_tokens: int
    keep_tokens_separator: str | None
    caption_dropout_rate: float
    caption_tag_dropout_rate: float
    flip_aug: bool
    enable_bucket: bool
    min_bucket_reso: int
    max_bucket_reso: int
    bucket_reso_steps: int
    bucket_no_upscale: bool
    prior_loss_weight: float
    masked_loss: bool
    mask_dir: str | None
    cache_latents: bool
    cache_latents_to_disk: bool
    cache_dir: str | None
    cache_text_encoder_outputs: bool
    skip_bad_images: bool
    duplicate_hardness: int
    vae_batch_size: int = 1  # images encoded at once while caching latents
    workers: int | None = None  # image-loading threads (None: one per core up to 8 beside a GPU, 0 on CPU)


@dataclass(frozen=True)
class TrainSpec:
    epochs: int
    batch_size: int
    gradient_accumulation_steps: int
    mixed_precision: Literal["auto", "no", "fp16", "bf16"]
    full_bf16: bool
    no_half_vae: bool
    gradient_checkpointing: bool
    attention: Literal["sdpa", "xformers"]
    clip_skip: int
    max_token_length: Literal[75, 150, 225]
    min_snr_gamma: float | None
    loss_type: Literal["l2"]
    noise_offset: float
    max_grad_norm: float
    on_nonfinite: Literal["stop", "skip"]
    device: str
    num_processes: int = 1  # data parallel: global batch = batch_size × num_processes × gradient_accumulation_steps
    compile: bool = False  # regional torch.compile of the UNet's repeated blocks
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"


@dataclass(frozen=True)
class OutputSpec:
    dir: str | None
    name: str | None
    save_every_n_epochs: int
    save_precision: Literal["fp16", "bf16", "fp32"]
    save_state_every_n_epochs: int
    save_state_every_n_steps: int
    overwrite: bool


@dataclass(frozen=True)
class SampleSpec:
    """Images rendered during training and by `lorafw grid` (kohya's sample_* options)."""

    prompts: tuple[str, ...]  # prompt lines (kohya flags: --n --w --h --d --s --l); or read from prompt_file
    prompt_file: str | None
    every_n_epochs: int  # 0 = not during training
    every_n_steps: int
    sampler: Literal["euler_a", "euler", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lms"]
    steps: int
    cfg_scale: float
    seed: int
    negative: str
    width: int | None
    height: int | None


@dataclass(frozen=True)
class ValidationSpec:
    """Held-out images whose loss, with fixed noise and timesteps, is comparable across epochs and runs."""

    root: str | None  # a folder of images with captions (REPEATS_ prefixes are ignored here)
    split: float  # or hold out this fraction of the training images
    every_n_epochs: int
    draws: int  # noise/timestep draws per image


@dataclass(frozen=True)
class EmaSpec:
    enabled: bool
    decay: float
    on_cpu: bool


@dataclass(frozen=True)
class LogSpec:
    tensorboard: bool
    every_n_steps: int
    smoothing: float  # weight of the past in the smoothed loss


@dataclass(frozen=True)
class GridSpec:
    """`lorafw grid`: rows are saved epochs, columns LoRA weights."""

    weights: tuple[float, ...]
    epochs: tuple[int, ...]  # empty = every saved epoch (newest first)
    ema: bool  # also rows for the EMA files


@dataclass(frozen=True)
class RunSpec:
    seed: int
    resume: str | None  # a run folder to continue (lorafw resume RUN_DIR); not part of what the run computes
    base_model: BaseModelSpec
    network: NetworkSpec
    optimizer: OptimizerSpec
    scheduler: SchedulerSpec
    dataset: DatasetSpec
    train: TrainSpec
    output: OutputSpec
    sample: SampleSpec
    validation: ValidationSpec
    ema: EmaSpec
    log: LogSpec
    grid: GridSpec

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples) that `spec_from_dict` reads back to an equal spec."""
        return _plain(dataclasses.asdict(self))

    def override(self, *overrides: str, check_paths: bool = True) -> "RunSpec":
        """A new, re-validated spec with `key=value` overrides applied (Hydra override syntax)."""
        from lorafw.config.compose import apply_overrides  # local: keeps this module dependency-free

        return apply_overrides(self, list(overrides), check_paths=check_paths)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
