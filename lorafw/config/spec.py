"""The typed run spec: what one training run does, as frozen dataclasses — and the one schema.

Every key is declared here once with `key(default, doc, kohya=..., ge=...)` (config/schema.py): its type
(the annotation), default, range, one-line doc, the kohya/GUI names it answers to, kohya's default and "off"
values for it and its ss_* metadata name. Hydra composes on these defaults, conf/ option files and recipes
only change them, validation checks types and ranges from them (cross-key rules live in
config/validate.py), `lorafw keys` prints them, and the kohya importer, exporter and metadata writer read
kohya's side from them.
Fields that default to None are "not set / not applicable" (e.g. a scheduler's `min_lr` under cosine).
This module imports no torch: resolving and validating a recipe is the first thing a user waits for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from lorafw.config.schema import REQUIRED, key, record_section


@dataclass(frozen=True)
class BaseModelSpec:
    arch: str = key("sd15", "the model family (sd15 | sdxl | anima | an installed plugin's | auto: read from the "
                    "checkpoint's own tensors); the checkpoint must agree")
    path: str = key(REQUIRED, "the base checkpoint: a single .safetensors (original layout) or a diffusers folder",
                    kohya="pretrained_model_name_or_path", ss="ss_sd_model_name")
    allow_pickle: bool = key(False, ".ckpt/.pt files can run code when unpickled; true reads their tensors only")
    vae: str | None = key(None, "external VAE (single file or diffusers folder); null = the checkpoint's own "
                          "(Anima: required, the Qwen-Image VAE)", kohya="vae", ss="ss_vae_name")
    text_encoder: str | None = key(None, "Anima: the Qwen3-0.6B text encoder (a single .safetensors as ComfyUI keeps "
                                   "it, or a folder); unused by families whose checkpoint holds its encoders",
                                   kohya="qwen3")
    llm_adapter: str | None = key(None, "Anima: separate LLM-adapter weights; null = the DiT file's own",
                                  kohya="llm_adapter_path")


@dataclass(frozen=True)
class NetworkSpec:
    algo: Literal["lora", "locon", "loha", "lokr", "ia3", "glora"] = key(
        "lora", "lora: attention/MLP layers; locon adds the ResNet 3x3 convolutions; loha | lokr | ia3 | glora: LyCORIS's "
        "algorithms on the same layers (and the convolutions when conv_dim is set)")
    dim: int = key(16, "rank of each adapter", kohya="network_dim", kohya_default=4, ss="ss_network_dim", ge=1)
    alpha: float = key(8.0, "the update is scaled by alpha / dim", kohya="network_alpha", kohya_default=1.0,
                       ss="ss_network_alpha", gt=0, why="the update is scaled by alpha / dim")
    dora_wd: bool = key(False, "DoRA: trainable magnitude per output channel (weight decomposition)")
    dropout: float = key(0.0, "kohya network_dropout: drops elements of the rank-r activation (lora_down's output) while "
                         "training; loha/lokr/ia3/glora: LyCORIS's dropout on the adapter's output",
                         kohya="network_dropout", ss="ss_network_dropout", ge=0, lt=1)
    conv_dim: int | None = key(None, "rank on the ResNet/sampler 3x3 convolutions (locon, and loha/lokr/glora/ia3 when set)")
    conv_alpha: float | None = key(None, "alpha on those convolutions")
    rank_dropout: float = key(0.0, "kohya rank_dropout: drops whole ranks per image each step (the rest scaled by 1/(1-p))", ge=0, lt=1)
    rank_dropout_scale: bool = key(False, "loha/lokr/glora (LyCORIS's switch): divide what rank_dropout keeps by "
                                   "the fraction kept, as LyCORIS does (without it LyCORIS does not rescale); "
                                   "lora/locon/DoRA always rescale by 1/(1-p), as kohya's networks/lora.py does")
    module_dropout: float = key(0.0, "kohya module_dropout: chance that a layer's adapter is skipped for a step", ge=0, lt=1)
    factor: int = key(-1, "lokr: split each dimension by this factor (-1 = as square as possible)")
    decompose_both: bool = key(False, "lokr: low-rank both Kronecker factors, not only the larger")
    full_matrix: bool = key(False, "lokr: the larger Kronecker factor as a full matrix (ignores dim)")
    use_tucker: bool = key(False, "locon/loha/lokr: Tucker decomposition of k x k convolutions (an extra mid tensor)")
    use_scalar: bool = key(False, "LyCORIS: a trainable scalar per layer, so both factors start non-zero")
    train_on_input: bool = key(False, "ia3: scale each layer's input channels instead of its output")
    loraplus_lr_ratio: float | None = key(None, "LoRA+: lora_up learns this many times faster than lora_down (16 in the "
                                          "paper); null = off", gt=0)
    loraplus_unet_lr_ratio: float | None = key(None, "LoRA+ ratio for the UNet; null = loraplus_lr_ratio", gt=0)
    loraplus_text_encoder_lr_ratio: float | None = key(None, "LoRA+ ratio for the text encoder(s); null = loraplus_lr_ratio", gt=0)
    block_dims: tuple[int, ...] = key((), "UNet rank per block in kohya's order (25 values for SD1.5, 23 for SDXL; 0 = no "
                                      "adapter there); empty = dim everywhere")
    block_alphas: tuple[float, ...] = key((), "UNet alpha per block (with block_dims); empty = alpha")
    conv_block_dims: tuple[int, ...] = key((), "3x3-convolution rank per block; empty = conv_dim")
    conv_block_alphas: tuple[float, ...] = key((), "3x3-convolution alpha per block; empty = conv_alpha")
    down_lr_weight: str | None = key(None, "lr multipliers of the down blocks, comma-separated (12 for SD1.5, 9 for SDXL), "
                                     "or kohya's cosine | sine | linear | reverse_linear | zeros [+BASE]")
    mid_lr_weight: str | None = key(None, "lr multipliers of the mid block(s), comma-separated (1 for SD1.5, 3 for SDXL)")
    up_lr_weight: str | None = key(None, "lr multipliers of the up blocks, like down_lr_weight")
    block_lr_zero_threshold: float = key(0.0, "block lr weights at or below this become 0 (that block gets no adapter)", ge=0)
    train_norm: bool = key(False, "LyCORIS's train_norm (locon/loha/lokr/ia3/glora): also train the LayerNorm and "
                           "GroupNorm layers inside the adapted UNet blocks, as a weight and bias difference "
                           "(w_norm/b_norm, which ComfyUI and LyCORIS load)")
    init_weights: str | None = key(None, "start from this LoRA/LyCORIS file (kohya's network_weights): same "
                                   "network (algo, ranks unless dim_from_weights), a new run (steps, optimizer and "
                                   "schedule start fresh); `lorafw resume` continues a run instead",
                                   kohya="network_weights",
                                   kohya_off=("", None))
    dim_from_weights: bool = key(False, "with init_weights: each layer's rank and alpha (and which layers are adapted) "
                                 "come from that file, not dim/alpha/conv_dim/conv_alpha", kohya="dim_from_weights",
                                 kohya_off=False)
    train_llm_adapter: bool = key(False, "Anima: adapters on the LLM adapter's blocks too (sd-scripts' network_args "
                                  "train_llm_adapter), at optimizer.llm_adapter_lr")


@dataclass(frozen=True)
class OptimizerSpec:
    name: str = key("adamw", "adamw | adamw8bit | paged_adamw8bit | lion | lion8bit | paged_lion8bit | sgd_nesterov | "
                    "sgd_nesterov8bit | dadaptation | dadapt_adam | dadapt_lion | prodigy | adafactor | came | "
                    "schedulefree_adamw | schedulefree_radam, or any module.Class (optimizer=NAME picks one with its defaults)")
    lr: float = key(1e-4, "learning rate; unet_lr and text_encoder_lr follow it unless set", kohya="learning_rate",
                    kohya_default=2e-6, ss="ss_learning_rate", gt=0)
    unet_lr: float = key("${.lr}", "UNet learning rate; 0 = the UNet is not trained", kohya="unet_lr",
                         ss="ss_unet_lr", ge=0, why="0 = do not train that part")
    text_encoder_lr: float = key("${.lr}", "text-encoder learning rate; 0 = no text-encoder adapter",
                                 kohya="text_encoder_lr", ss="ss_text_encoder_lr", ge=0, why="0 = do not train that part")
    llm_adapter_lr: float | None = key(None, "Anima, with network.train_llm_adapter: the learning rate of the LLM "
                                       "adapter's adapters (about 5e-5); null = unet_lr", kohya="llm_adapter_lr", ge=0)
    weight_decay: float = key(0.01, "decoupled weight decay", ge=0)
    betas: tuple[float, ...] = key((0.9, 0.999), "the optimizer's betas (CAME takes three)")
    args: dict[str, Any] = key({}, "more keyword arguments for the optimizer, e.g. {eps: 1e-8}")
    stop_text_encoder_training: float | None = key(
        None, "stop training the text encoder(s) after this many optimizer steps (>= 1), or this fraction of all steps "
        "(< 1); null = train it throughout", gt=0)


@dataclass(frozen=True)
class SchedulerSpec:
    name: str = key("constant", "constant | constant_with_warmup | linear | cosine | cosine_with_restarts | polynomial | "
                    "piecewise_constant | cosine_with_min_lr | warmup_stable_decay | rex | adafactor",
                    ss="ss_lr_scheduler")
    warmup_ratio: float | None = key(None, "fraction of all optimizer steps spent warming up", kohya="warmup_ratio",
                                     ge=0, lt=1)
    num_cycles: int | None = key(None, "cosine cycles (restarts) / REX cycles", kohya="lr_scheduler_num_cycles", ge=1)
    min_lr: float | None = key(None, "REX: the lr it starts from and decays to; polynomial: the lr it ends at (null = 1e-7)",
                               ge=0)
    d: float | None = key(None, "REX: the curve's shape", gt=0, le=1)
    gamma: float | None = key(None, "REX: each restart multiplies max lr by gamma", gt=0)
    warmup_steps: int | None = key(None, "or the warmup as a number of optimizer steps (not with warmup_ratio)", ge=0)
    power: float | None = key(None, "polynomial: the decay's power; null = 1.0 (linear)", gt=0)
    min_lr_ratio: float | None = key(None, "cosine_with_min_lr / warmup_stable_decay: the lr it decays to, as a fraction of "
                                     "the lr; null = 0", ge=0, le=1)
    decay_ratio: float | None = key(None, "warmup_stable_decay: fraction of all steps spent decaying at the end", gt=0, le=1)
    step_rules: str | None = key(None, "piecewise_constant: 'MULT:STEP,...,LAST', e.g. '1:100,0.1:200,0.01' (diffusers)")
    type: str | None = key(None, "any scheduler class as module.Class (kohya's lr_scheduler_type), built with args")
    args: dict[str, Any] = key({}, "keyword arguments for scheduler.type (kohya's lr_scheduler_args)")


@dataclass(frozen=True)
class FolderSpec:
    """One image folder. Unset fields take the dataset-wide value."""

    path: str = key(REQUIRED, "the folder of images and captions")
    repeats: int | None = key(None, "times each image is seen per epoch; null = the folder name's REPEATS_ prefix", ge=1)
    trigger: str | None = key(None, "a tag put first in every caption of this folder")
    is_reg: bool | None = key(None, "regularisation images")
    keep_tokens: int | None = key(None, "as dataset.keep_tokens, for this folder", ge=0)
    keep_tokens_separator: str | None = key(None, "as dataset.keep_tokens_separator, for this folder")
    caption_extension: str | None = key(None, "as dataset.caption_extension, for this folder")
    shuffle_caption: bool | None = key(None, "as dataset.shuffle_caption, for this folder")
    caption_dropout_rate: float | None = key(None, "as dataset.caption_dropout_rate, for this folder", ge=0, lt=1)
    caption_tag_dropout_rate: float | None = key(None, "as dataset.caption_tag_dropout_rate, for this folder", ge=0, lt=1)
    flip_aug: bool | None = key(None, "as dataset.flip_aug, for this folder")
    random_crop: bool | None = key(None, "as dataset.random_crop, for this folder")
    mask_dir: str | None = key(None, "as dataset.mask_dir, for this folder")


@dataclass(frozen=True)
class DatasetSpec:
    root: str | None = key(None, "a folder holding REPEATS_NAME folders (e.g. 3_kafka/)", kohya="train_data_dir")
    folders: tuple[FolderSpec, ...] = key((), "or each folder explicitly: [{path: DIR, repeats: 5, trigger: TAG}]")
    reg_root: str | None = key(None, "regularisation images, also in REPEATS_NAME folders", kohya="reg_data_dir")
    default_repeats: int | None = key(None, "repeats for folders without a REPEATS_ prefix; null = that is an error", ge=1)
    resolution: int | tuple[int, ...] = key(
        512, "the training size: N (N x N) or W,H ([W, H] or 'W,H', as kohya's --resolution); buckets hold about "
        "W x H pixels, and without buckets every image is resized and cropped to exactly W x H",
        kohya="resolution", ss="ss_resolution")
    caption_extension: str = key(".txt", "caption files are IMAGE_NAME + this", kohya="caption_extension",
                                 kohya_default=".caption")
    shuffle_caption: bool = key(False, "shuffle comma-separated tags each time an image is seen",
                                kohya="shuffle_caption", ss="ss_shuffle_caption")
    keep_tokens: int = key(0, "the first N tags stay in place when shuffling", kohya="keep_tokens", ss="ss_keep_tokens",
                           ge=0)
    keep_tokens_separator: str | None = key(None, "e.g. '|||': tags before it stay in place instead of the first keep_tokens",
                                            kohya="keep_tokens_separator", ss="ss_keep_tokens_separator")
    caption_dropout_rate: float = key(0.0, "chance of training an image with an empty caption",
                                      kohya="caption_dropout_rate", ss="ss_caption_dropout_rate", ge=0, lt=1)
    caption_tag_dropout_rate: float = key(0.0, "chance of dropping each (not kept) tag",
                                          kohya="caption_tag_dropout_rate", ss="ss_caption_tag_dropout_rate", ge=0,
                                          lt=1)
    flip_aug: bool = key(False, "random horizontal flips", kohya="flip_aug", ss="ss_flip_aug")
    random_crop: bool = key(False, "crop each step's bucket-sized window at a random place of the resized image "
                            "instead of its centre (needs cache_latents=false, as in kohya)", kohya="random_crop",
                            ss="ss_random_crop")
    enable_bucket: bool = key(True, "aspect-ratio buckets: every image keeps its shape", kohya="enable_bucket",
                              kohya_default=False, ss="ss_enable_bucket")
    min_bucket_reso: int = key(256, "smallest bucket side", kohya="min_bucket_reso", ss="ss_min_bucket_reso", ge=64)
    max_bucket_reso: int = key(1024, "largest bucket side", kohya="max_bucket_reso", ss="ss_max_bucket_reso")
    bucket_reso_steps: int = key(64, "bucket sides are multiples of this (with buckets: a multiple of 64 for SD1.5, "
                                 "32 for SDXL, 16 for Anima, as sd-scripts' verify_bucket_reso_steps)",
                                 kohya="bucket_reso_steps")
    bucket_no_upscale: bool = key(False, "never enlarge an image to fit a bucket", kohya="bucket_no_upscale",
                                  ss="ss_bucket_no_upscale")
    prior_loss_weight: float = key(1.0, "loss weight of regularisation images", kohya="prior_loss_weight",
                                   ss="ss_prior_loss_weight", ge=0)
    masked_loss: bool = key(False, "weight the loss by a mask: the image's alpha, or mask_dir/<same name>.png",
                            kohya="masked_loss", ss="ss_masked_loss")
    mask_dir: str | None = key(None, "a folder of masks named like the images")
    cache_latents: bool = key(True, "encode every image with the VAE once, before training", kohya="cache_latents",
                              kohya_default=False, ss="ss_cache_latents")
    cache_latents_to_disk: bool = key(False, "keep those latents on disk and reuse them across runs",
                                      kohya="cache_latents_to_disk")
    cache_dir: str | None = key(None, "where; null = ~/.cache/lorafw/latents (dataset folders are never written to)")
    cache_text_encoder_outputs: bool = key(False, "encode captions once (needs a frozen text encoder, unchanging captions)",
                                           kohya="cache_text_encoder_outputs")
    skip_bad_images: bool = key(False, "unreadable images: false = stop before training, true = leave them out")
    duplicate_hardness: int = key(93, "near-duplicate strictness, like dupeGuru's filter hardness (higher = closer copies; "
                                      "lint and dedupe)",
                                  ge=1, le=100)
    vae_batch_size: int = key(1, "images the VAE encodes at once while caching latents", kohya="vae_batch_size", ge=1,
                              why="images the VAE encodes at once")
    workers: int | None = key(None, "image-loading threads; null = one per core (at most 8) beside a GPU, none on a CPU",
                              kohya="max_data_loader_n_workers", ge=0,
                              why="image-loading threads; 0 loads in the main thread, null picks one per core")

    @property
    def size(self) -> tuple[int, int]:
        """(W, H) of `resolution`: N is (N, N), as sd-scripts' prepare_dataset_args reads --resolution."""
        return resolution_size(self.resolution)


def resolution_size(value: int | tuple[int, ...]) -> tuple[int, int]:
    """dataset.resolution as (W, H): N → (N, N); [N] → (N, N); [W, H] → (W, H) (validation refuses the rest)."""
    if isinstance(value, int):
        return (value, value)
    return (value[0], value[0]) if len(value) == 1 else (value[0], value[1])


@dataclass(frozen=True)
class TrainSpec:
    epochs: int | None = key(10, "one LoRA file per saved epoch; null = as many as train.max_steps needs (the "
                             "last one cut short). Set, it wins over max_steps, as kohya's max_train_epochs does",
                             kohya="max_train_epochs", ss="ss_num_epochs", ge=1,
                             why="or null to count the run in steps")
    max_steps: int | None = key(None, "or the run's length in optimizer steps (kohya's max_train_steps): training "
                                "stops at that step, mid-epoch if need be; used when train.epochs is null (both "
                                "null: kohya's 1600)", kohya="max_train_steps", ge=1)
    batch_size: int = key(1, "images per step (per device)", kohya=("train_batch_size", "batch_size"),
                          ss="ss_batch_size_per_device", ge=1)
    gradient_accumulation_steps: int = key(1, "micro-batches per optimizer step", kohya="gradient_accumulation_steps",
                                           ss="ss_gradient_accumulation_steps", ge=1)
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = key(
        "auto", "auto: bf16 where native (GPU compute capability >= 8.0, CPU with avx512_bf16/AMX), else fp16 on a GPU, fp32 on a CPU",
        kohya="mixed_precision", kohya_default="no", ss="ss_mixed_precision")
    full_bf16: bool = key(False, "weights and gradients in bf16 (SDXL memory saver)", kohya="full_bf16",
                          ss="ss_full_bf16")
    no_half_vae: bool = key(False, "keep the VAE in fp32 under fp16/bf16", kohya="no_half_vae")
    gradient_checkpointing: bool = key(False, "recompute activations in the backward pass: less memory, slower",
                                       kohya="gradient_checkpointing", ss="ss_gradient_checkpointing")
    attention: Literal["sdpa", "xformers"] = key("sdpa", "sdpa (PyTorch scaled-dot-product) | xformers (when installed)")
    clip_skip: int = key(1, "2 = the penultimate CLIP layer (NovelAI-family models)", kohya="clip_skip",
                         ss="ss_clip_skip", ge=1)
    max_token_length: Literal[75, 150, 225] = key(75, "captions longer than 75 tokens are encoded in 75-token chunks",
                                                 kohya="max_token_length", ss="ss_max_token_length")
    min_snr_gamma: float | None = key(None, "min-SNR loss weighting, e.g. 5.0; null = off", kohya="min_snr_gamma",
                                      kohya_off=0, ss="ss_min_snr_gamma", gt=0, why="or null to turn it off")
    loss_type: Literal["l1", "l2", "huber", "smooth_l1"] = key(
        "l2", "l2 (MSE) | l1 | huber | smooth_l1 (the last two with train.huber_schedule and huber_c)",
        kohya="loss_type", kohya_off="l2", ss="ss_loss_type")
    noise_offset: float = key(0.0, "offset noise strength (about 0.1 when used; 0 = off)", kohya="noise_offset",
                              kohya_off=0, ss="ss_noise_offset", ge=0)
    max_grad_norm: float = key(1.0, "gradient clipping norm; 0 = no clipping", kohya="max_grad_norm",
                               ss="ss_max_grad_norm", ge=0, why="0 = no clipping")
    on_nonfinite: Literal["stop", "skip"] = key("stop", "a NaN/inf loss or gradient: stop (keeping every saved epoch) | skip the step")
    device: str = key("auto", "auto | cpu | cuda | cuda:N")
    num_processes: int = key(1, "data-parallel processes (GPUs); >1: lorafw starts them with accelerate launch", ge=1)
    compile: bool = key(False, "torch.compile the UNet's repeated blocks (faster after the first steps per bucket)",
                        kohya="torch_compile")
    compile_backend: Literal["inductor", "aot_eager", "eager"] = key(
        "inductor", "inductor | aot_eager | eager (the latter two check tracing without code generation)",
        kohya="dynamo_backend", kohya_off=("no", "NO"))
    # -- the objective (lorafw/objective/): prediction type, noise, timesteps, loss weighting; kohya's names
    prediction_type: Literal["auto", "epsilon", "v_prediction", "flow"] = key(
        "auto", "auto reads it from the checkpoint (v_pred / rectified-flow markers, modelspec metadata, scheduler "
        "config), else the family's own (epsilon; Anima: flow); flow = rectified flow (train.timestep_sampling …)",
        ss="ss_v_parameterization")
    zero_terminal_snr: bool | None = key(None, "rescale the noise schedule to zero terminal SNR; null = as the checkpoint "
                                         "says (NoobAI v-pred's ztsnr marker), else false", kohya="zero_terminal_snr",
                                         kohya_off=False, ss="ss_zero_terminal_snr")
    force_prediction_type: bool = key(False, "train prediction_type / zero_terminal_snr even where the checkpoint states "
                                      "otherwise")
    scale_v_pred_loss_like_noise_pred: bool = key(False, "v-prediction: weight the loss by SNR/(SNR+1), like an ε loss",
                                                  kohya="scale_v_pred_loss_like_noise_pred", kohya_off=False,
                                                  ss="ss_scale_v_pred_loss_like_noise_pred")
    v_pred_like_loss: float | None = key(None, "ε-prediction: add this times a v-like loss term; null = off",
                                         kohya="v_pred_like_loss", kohya_off=0, ss="ss_v_pred_like_loss", ge=0)
    debiased_estimation_loss: bool = key(False, "weight the loss by 1/√SNR (ε) or 1/(SNR+1) (v)",
                                         kohya="debiased_estimation_loss", kohya_off=False, ss="ss_debiased_estimation")
    noise_offset_random_strength: bool = key(False, "offset strength drawn in [0, noise_offset) each step",
                                             kohya="noise_offset_random_strength", kohya_off=False,
                                             ss="ss_noise_offset_random_strength")
    adaptive_noise_scale: float | None = key(None, "add this × |latent channel mean| to the noise offset (needs "
                                             "noise_offset); null = off", kohya="adaptive_noise_scale", kohya_off=0,
                                             ss="ss_adaptive_noise_scale")
    multires_noise_iterations: int | None = key(None, "multires (pyramid) noise layers, 6-10 usual; null or 0 = off",
                                                kohya="multires_noise_iterations", kohya_off=0,
                                                ss="ss_multires_noise_iterations", ge=0)
    multires_noise_discount: float = key(0.3, "weight of each coarser multires layer (discount^i)",
                                         kohya="multires_noise_discount", kohya_off=0.3,
                                         ss="ss_multires_noise_discount", gt=0, le=1)
    ip_noise_gamma: float | None = key(None, "input perturbation noise strength, about 0.1; null = off",
                                       kohya="ip_noise_gamma", kohya_off=0, ss="ss_ip_noise_gamma", ge=0)
    ip_noise_gamma_random_strength: bool = key(False, "perturbation strength drawn in [0, ip_noise_gamma) each step",
                                               kohya="ip_noise_gamma_random_strength", kohya_off=False,
                                               ss="ss_ip_noise_gamma_random_strength")
    min_timestep: int | None = key(None, "smallest training timestep (0-999); null = 0", kohya="min_timestep",
                                   kohya_off=0, ss="ss_min_timestep", ge=0, le=999, why="timesteps run 0-999")
    max_timestep: int | None = key(None, "training timesteps stay below this (1-1000); null = 1000",
                                   kohya="max_timestep", kohya_off=1000, ss="ss_max_timestep", ge=1, le=1000,
                                   why="timesteps run 0-999")
    huber_schedule: Literal["constant", "exponential", "snr"] = key(
        "snr", "huber/smooth_l1: how the threshold follows the timestep", kohya="huber_schedule", kohya_off="snr",
        ss="ss_huber_schedule")
    huber_c: float = key(0.1, "huber/smooth_l1: the threshold (its value at the noisiest timestep when scheduled)",
                         kohya="huber_c", kohya_off=0.1, ss="ss_huber_c", gt=0)
    huber_scale: float = key(1.0, "huber/smooth_l1: multiplies the constant and exponential thresholds",
                             kohya="huber_scale", kohya_off=1.0, ss="ss_huber_scale", gt=0)
    scale_weight_norms: float | None = key(None, "max-norm regularisation: scale down adapters whose update norm "
                                           "exceeds this (1.0 usual); null = off", kohya="scale_weight_norms",
                                           kohya_off=0, ss="ss_scale_weight_norms", gt=0, why="or null to turn it off")
    # -- rectified flow (prediction_type flow: Anima, rectified-flow SDXL; lorafw/objective/flow.py): sd-scripts' names
    timestep_sampling: Literal["sigma", "uniform", "sigmoid", "shift", "flux_shift"] = key(
        "sigmoid", "flow: how σ is drawn: sigmoid (logit-normal, sigmoid_scale) | uniform | shift (sigmoid then "
        "discrete_flow_shift) | flux_shift (shifted by image size) | sigma (a shifted 1000-step table, "
        "weighting_scheme densities)", kohya="timestep_sampling", ss="ss_timestep_sampling")
    sigmoid_scale: float = key(1.0, "flow: σ = sigmoid(scale·n), n ~ N(0,1); larger spreads σ towards 0 and 1",
                               kohya="sigmoid_scale", ss="ss_sigmoid_scale", gt=0)
    discrete_flow_shift: float = key(1.0, "flow: σ' = shift·σ / (1 + (shift−1)·σ) for shift and sigma sampling "
                                     "(Anima 1.0; FLUX-style 3.0)", kohya="discrete_flow_shift",
                                     ss="ss_discrete_flow_shift", gt=0)
    weighting_scheme: Literal["uniform", "none", "sigma_sqrt", "cosmap", "logit_normal", "mode"] = key(
        "uniform", "flow: loss weight by σ (sigma_sqrt | cosmap), or the density sigma sampling draws from "
        "(logit_normal | mode); uniform/none = unweighted", kohya="weighting_scheme", ss="ss_weighting_scheme")
    logit_mean: float = key(0.0, "flow: mean of weighting_scheme logit_normal", kohya="logit_mean", ss="ss_logit_mean")
    logit_std: float = key(1.0, "flow: std of weighting_scheme logit_normal", kohya="logit_std", ss="ss_logit_std",
                           gt=0)
    mode_scale: float = key(1.29, "flow: scale of weighting_scheme mode", kohya="mode_scale", ss="ss_mode_scale")
    full_fp16: bool = key(False, "adapters and their gradients in fp16 too (kohya's full_fp16); the optimizer steps fp32 "
                          "master copies, with loss scaling", kohya="full_fp16", kohya_off=False, ss="ss_full_fp16")


@dataclass(frozen=True)
class OutputSpec:
    dir: str | None = key(None, "run folder; null = outputs/<name>/<date-time>", kohya="output_dir")
    name: str | None = key(None, "files are NAME-01.safetensors …; null = the dataset folder's name",
                           kohya="output_name", ss="ss_output_name")
    save_every_n_epochs: int = key(1, "write a LoRA file every N epochs", kohya="save_every_n_epochs", ge=1)
    save_every_n_steps: int | None = key(None, "also write NAME-stepNNNNNNNN.safetensors every N optimizer steps "
                                         "(kohya's name); null = off", kohya="save_every_n_steps", ge=1)
    save_last_n_epochs: int | None = key(None, "keep only the epoch files of the last N saves: saving epoch E removes "
                                         "epoch E - save_every_n_epochs × N (kohya's rule); null = keep all",
                                         kohya="save_last_n_epochs", ge=1)
    save_last_n_steps: int | None = key(None, "keep only the step files within the last N steps: saving step S removes "
                                        "the one at S - N - 1 rounded down to save_every_n_steps (kohya's rule); "
                                        "null = keep all", kohya="save_last_n_steps", ge=1)
    save_precision: Literal["fp16", "bf16", "fp32"] = key("fp16", "dtype of the LoRA files on disk",
                                                          kohya="save_precision", kohya_default="fp32")
    save_state_every_n_epochs: int = key(1, "training state for `lorafw resume` (state.pt, replaced each time); 0 = never",
                                         ge=0, why="0 = never")
    save_state_every_n_steps: int = key(0, "also every N optimizer steps within an epoch; 0 = only at epoch ends", ge=0,
                                        why="0 = never")
    overwrite: bool = key(False, "allow writing into a run folder that already holds a run")
    comment: str | None = key(None, "a comment stored in every LoRA file's metadata (ss_training_comment)",
                              kohya="training_comment", ss="ss_training_comment")


@dataclass(frozen=True)
class SampleSpec:
    """Images rendered during training and by `lorafw grid` (kohya's sample_* options)."""

    prompts: tuple[str, ...] = key((), "prompt lines, e.g. 'kafka, 1girl --n lowres --w 768 --h 768 --d 1 --s 28 --l 7'")
    prompt_file: str | None = key(None, "or a file of such lines (kohya's sample_prompts)", kohya="sample_prompts")
    every_n_epochs: int = key(0, "render samples every N epochs; 0 = not during training", kohya="sample_every_n_epochs",
                              ge=0, why="0 = off")
    every_n_steps: int = key(0, "render samples every N steps; 0 = off", kohya="sample_every_n_steps", ge=0, why="0 = off")
    sampler: Literal["euler_a", "euler", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lms"] = key(
        "euler_a", "the sampler for samples and grids", kohya="sample_sampler")
    steps: int = key(28, "sampling steps (--s)", ge=1)
    cfg_scale: float = key(7.0, "classifier-free guidance scale (--l)", ge=0)
    seed: int = key(42, "the same seed in every image of a prompt (--d)", ge=0, le=2**32 - 1)
    negative: str = key("lowres, bad anatomy, bad hands, worst quality, low quality, blurry", "negative prompt (--n)")
    width: int | None = key(None, "--w; null = dataset.resolution's width (cut to a multiple of 8)")
    height: int | None = key(None, "--h; null = dataset.resolution's height (cut to a multiple of 8)")
    flow_shift: float | None = key(None, "flow models: the sampling σ schedule's shift (--fs); null = the family's "
                                   "(Anima 3.0)", gt=0)


@dataclass(frozen=True)
class ValidationSpec:
    """Held-out images whose loss, with fixed noise and timesteps, is comparable across epochs and runs."""

    root: str | None = key(None, "a folder of held-out images with captions (REPEATS_ prefixes are ignored)")
    split: float = key(0.0, "or hold out this fraction of the training images (chosen by the seed)",
                       ss="ss_validation_split", ge=0, lt=1)
    every_n_epochs: int = key(1, "validation loss every N epochs", ss="ss_validate_every_n_epochs", ge=1)
    draws: int = key(4, "fixed noise/timestep draws per image", ge=1)


@dataclass(frozen=True)
class EmaSpec:
    enabled: bool = key(False, "also write NAME-NN-ema.safetensors, an exponential moving average of the adapter")
    decay: float = key(0.999, "the average's decay per step", gt=0, lt=1)
    on_cpu: bool = key(False, "keep the average in CPU memory")


@dataclass(frozen=True)
class LogSpec:
    tensorboard: bool = key(True, "RUN_DIR/tensorboard (tensorboard --logdir RUN_DIR)")
    every_n_steps: int = key(1, "metrics.jsonl / metrics.csv / TensorBoard every N steps", ge=1)
    smoothing: float = key(0.9, "weight of the past in the smoothed loss", ge=0, lt=1)


@dataclass(frozen=True)
class GridSpec:
    """`lorafw grid`: rows are saved epochs, columns LoRA weights."""

    weights: tuple[float, ...] = key((1.0, 0.9, 0.8, 0.7, 0.6, 0.5), "the LoRA weights, one column each")
    epochs: tuple[int, ...] = key((), "the epochs, one row each, e.g. [10, 9, 8, 7]; empty = every saved epoch")
    ema: bool = key(False, "rows for the EMA files too")
    score: bool = key(True, "score every cell (validation loss, collapse; with grid.tagger also concept fidelity and "
                            "prompt adherence) and write the recommended epoch and weight into run_summary.json")
    tagger: str | None = key(None, "a local WD v3 tagger folder (model.onnx + selected_tags.csv, as `autotag` uses); "
                                   "null = recommend from validation loss alone")
    concept_share: float = key(0.5, "the concept's defining tags: those in at least this fraction of the training "
                                    "captions (and not in the prompt)", gt=0, le=1)
    tag_threshold: float = key(0.35, "the tagger 'sees' a tag at or above this probability (prompt adherence)",
                               gt=0, lt=1)
    collapse_similarity: float = key(0.8, "cells of different prompts at least this alike (perceptual hash, 0-1) "
                                          "mean the LoRA swallowed the prompt", gt=0, le=1)
    tolerance: float = key(0.05, "cells scoring within this of the best count as equally good; among them weight "
                                 "1.0 wins, then ~0.8, then the lowest validation loss", ge=0, lt=1)
    ui: Literal["comfyui", "a1111", "exact"] = key(
        "comfyui", "whose DoRA maths the grid renders with: comfyui (also Forge) | a1111 | exact (LyCORIS/peft, the training "
        "forward); LoRA/LoCon/LoHa/LoKr look the same in every UI")


@dataclass(frozen=True)
class ReportSpec:
    """RUN_DIR/report.html: the whole run on one self-contained page."""

    enabled: bool = key(True, "write report.html at the end of a run and after `lorafw grid`")
    embed_images: bool = key(False, "put the images inside the page (one file to share) instead of linking them")
    max_samples: int = key(48, "at most this many sample images on the page (the newest)", ge=0)


@dataclass(frozen=True)
class ImportedSetting:
    """One setting of an imported file that the recipe does not carry over."""

    setting: str = key(REQUIRED, "the setting as the file names it, e.g. color_aug or network_args.algo")
    value: str = key("null", "its value as written, as JSON")
    why: str = key("", "why lorafw does not carry it over")


@dataclass(frozen=True)
class ImportedSpec:
    """What `lorafw import` left behind: it writes this section into the recipe, the run keeps it in run.json
    (`import_notes`) and report.html shows it. A record, not a setting: nothing that trains reads it."""

    source: str | None = key(None, "the imported file and its dialect")
    not_honoured: tuple[ImportedSetting, ...] = key((), "settings that change training in kohya, left out (--lenient)")
    no_effect: tuple[ImportedSetting, ...] = key((), "settings without effect in lorafw")
    notes: tuple[str, ...] = key((), "what the importer decided, e.g. the architecture and why")


@dataclass(frozen=True)
class RunSpec:
    seed: int = key(42, "fixes noise, timesteps, shuffling and LoRA init: same seed, same files", kohya="seed",
                    ss="ss_seed", ge=0, le=2**32 - 1)
    resume: str | None = key(None, "a run folder to continue from its saved state (or: lorafw resume RUN_DIR)")
    base_model: BaseModelSpec = dataclasses.field(default_factory=BaseModelSpec)
    network: NetworkSpec = dataclasses.field(default_factory=NetworkSpec)
    optimizer: OptimizerSpec = dataclasses.field(default_factory=OptimizerSpec)
    scheduler: SchedulerSpec = dataclasses.field(default_factory=SchedulerSpec)
    dataset: DatasetSpec = dataclasses.field(default_factory=DatasetSpec)
    train: TrainSpec = dataclasses.field(default_factory=TrainSpec)
    output: OutputSpec = dataclasses.field(default_factory=OutputSpec)
    sample: SampleSpec = dataclasses.field(default_factory=SampleSpec)
    validation: ValidationSpec = dataclasses.field(default_factory=ValidationSpec)
    ema: EmaSpec = dataclasses.field(default_factory=EmaSpec)
    log: LogSpec = dataclasses.field(default_factory=LogSpec)
    grid: GridSpec = dataclasses.field(default_factory=GridSpec)
    report: ReportSpec = dataclasses.field(default_factory=ReportSpec)
    imported: ImportedSpec = record_section(ImportedSpec)  # not in `lorafw keys`, nor compared (config/schema.py)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists for tuples) that `spec_from_dict` reads back to an equal spec. `imported` only when the
        spec came from `lorafw import`, so a spec that did not is written exactly as before the section existed."""
        out = _plain(dataclasses.asdict(self))
        if self.imported == ImportedSpec():
            del out["imported"]
        return out


def import_notes(spec: RunSpec) -> dict[str, Any] | None:
    """What run.json keeps of `lorafw import` (`record["imported"]`): the `imported` section as plain data, or None
    when the run's recipe was not imported."""
    return _plain(dataclasses.asdict(spec.imported)) if spec.imported != ImportedSpec() else None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
