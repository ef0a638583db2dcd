"""kohya arguments (from any dialect) → lorafw keys. Each setting is honoured, has no effect, or is not honoured.

- Honoured: mapped with kohya's meaning, through the schema's `kohya=` names (config/spec.py), the
  optimizer catalog, the scheduler table and the network fields; a kohya key left out means kohya's
  default (the schema's `kohya_default=`), which the recipe then states wherever lorafw's own default differs.
- No effect: logging, UI state, and values that are kohya's "off" for that key (the schema's `kohya_off=`, and
  `NEUTRAL` for kohya options lorafw has no key for): `min_timestep = 0` has no effect, `min_timestep = 100` does.
- Not honoured: everything else. One such setting and the import refuses (lorafw/interop/importer.py).
New lorafw keys with a `kohya=` name, optimizer catalog entries and network fields flow in without code here;
the code below names a kohya argument of the schema only as `K[lorafw key]`.
Why one module over 400 lines: the tables below are the classification; splitting them apart would
scatter one decision over several files.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from lorafw.config.catalog import OPTIMIZERS, SCHEDULERS
from lorafw.config.schema import SAME, _unwrap, iter_keys, kohya_keys, kohya_names, kohya_of
from lorafw.config.shipped import conf_dir
from lorafw.config.spec import FolderSpec, NetworkSpec, RunSpec, SchedulerSpec
from lorafw.interop.argstrings import Problem, literal_args, network_args, network_value
from lorafw.interop.dialects import Source
from lorafw.planning.budget import KOHYA_DEFAULT_STEPS

TYPES = {k.path: k.type for k in iter_keys(RunSpec)}
DEFAULTS = {k.path: k.default for k in iter_keys(RunSpec)}
KEYS = kohya_keys(RunSpec)  # lorafw key → its declaration, for every key with a kohya name
K = kohya_of(RunSpec)  # lorafw key → its sd-scripts argument name

# optimizer_type as users write it (any case; class paths too) → lorafw optimizer. Catalog entries that
# carry their own `kohya` aliases add to this (see `optimizer_aliases`).
OPTIMIZER_ALIASES = {
    "adamw": "adamw", "torch.optim.adamw": "adamw", "adamw8bit": "adamw8bit", "bitsandbytes.optim.adamw8bit": "adamw8bit",
    "pagedadamw8bit": "paged_adamw8bit", "lion": "lion", "lion8bit": "lion8bit", "pagedlion8bit": "paged_lion8bit",
    "sgdnesterov": "sgd_nesterov", "sgdnesterov8bit": "sgd_nesterov8bit", "dadaptation": "dadaptation",
    "dadaptadam": "dadapt_adam", "dadaptlion": "dadapt_lion", "prodigy": "prodigy", "prodigyopt.prodigy": "prodigy",
    "adafactor": "adafactor", "came": "came", "came_pytorch.came": "came", "loraeasycustomoptimizer.came.came": "came",
    "adamwschedulefree": "schedulefree_adamw", "radamschedulefree": "schedulefree_radam",
}
REX_CLASS = "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts"
SCHEDULER_CLASSES = {REX_CLASS.lower(): "rex", "rex_annealing_warm_restarts_(rawr)": "rex", "rex": "rex"}
SAMPLERS = {"euler_a": "euler_a", "k_euler_a": "euler_a", "euler": "euler", "k_euler": "euler", "ddim": "ddim",
            "dpmsolver++": "dpmpp_2m", "dpmpp_2m": "dpmpp_2m", "dpmpp_2m_karras": "dpmpp_2m_karras", "lms": "lms",
            "k_lms": "lms"}
FOLDER_KEYS = {"image_dir": "path", "num_repeats": "repeats", "conditioning_data_dir": "mask_dir"}

# always without effect on the trained weights: why
NO_EFFECT: dict[str, str] = {
    "save_model_as": "lorafw always writes .safetensors", "save_toml": "lorafw saves config.yaml and run.json",
    "persistent_data_loader_workers": "lorafw's loader threads cost nothing to start",
    "log_with": "lorafw writes TensorBoard and metrics.jsonl", "logging_dir": "lorafw logs into the run folder",
    "log_prefix": "lorafw logs into the run folder", "log_tracker_name": "", "log_tracker_config": "", "log_config": "",
    "wandb_api_key": "", "wandb_run_name": "", "save_state": "lorafw always saves resumable state",
    "save_state_on_train_end": "lorafw always saves resumable state",
    "save_last_n_epochs_state": "state.pt is replaced each time", "save_last_n_steps_state": "",
    "lowram": "memory strategy", "highvram": "memory strategy",
    "mem_eff_attn": "attention kernel (same result)", "sdpa": "train.attention=sdpa is lorafw's default",
    "sdxl": "the architecture comes from base_model",
    "metadata_title": "file metadata", "metadata_author": "file metadata", "metadata_description": "file metadata",
    "metadata_license": "file metadata", "metadata_tags": "file metadata", "console_log_level": "", "console_log_file": "",
    "huggingface_repo_id": "uploading", "huggingface_token": "", "huggingface_repo_type": "", "async_upload": "",
    "huggingface_repo_visibility": "", "huggingface_path_in_repo": "", "save_state_to_huggingface": "",
    "output_config": "", "config_file": "", "skip_cache_check": "", "mem_eff_save": "", "name": "", "train_mode": "",
    "num_cpu_threads_per_process": "CPU threads", "disable_mmap_load_safetensors": "loading strategy",
    "stop_text_encoder_training": "LoRA training (train_network.py) never reads it, only sd-scripts' train_db.py "
                                  "does; lorafw's optimizer.stop_text_encoder_training does what it says",
    "cache_info": "caching bookkeeping", "ddp_timeout": "", "ddp_gradient_as_bucket_view": "", "ddp_static_graph": "",
}
# kohya options lorafw has no key for that have no effect at these values (kohya's "off"); any other value
# changes training. The keys lorafw has declare theirs (`kohya_off=`) and join them here.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "v2": (False,), "v_parameterization": (False,), "fp8_base": (False,), "fp8_base_unet": (False,),
    "weighted_captions": (False,), "color_aug": (False,), "face_crop_aug_range": (None, ""),
    "alpha_mask": (False,), "caption_dropout_every_n_epochs": (0,), "token_warmup_min": (1,), "token_warmup_step": (0, 0.0),
    "caption_prefix": ("",), "caption_suffix": ("",), "stop_text_encoder_training": (0,),
    "base_weights": ("", []), "resume": ("",),
    "no_token_padding": (False,), "train_inpainting": (False,), "lr_scheduler_power": (1, 1.0),
    "secondary_separator": ("",), "enable_wildcard": (False,), "caption_separator": (",",),
    "network_multiplier": (1, 1.0), "validation_split": (0, 0.0), "resize_interpolation": (None, "", "lanczos"),
    "class_tokens": (None, ""), "lr_decay_steps": (0,), "dynamo_mode": ("default",), "dynamo_use_fullgraph": (False,),
    "dynamo_use_dynamic": (False,), "fused_backward_pass": (False,), "sample_at_first": (False,),
} | {name: k.kohya_off for k in KEYS.values() if k.kohya_off for name in k.kohya}
# network_args that are off at these values
NETWORK_NEUTRAL: dict[str, tuple[str, ...]] = {
    "preset": ("full",), "use_tucker": ("false",), "use_cp": ("false",), "use_scalar": ("false",),
    "bypass_mode": ("false",), "rank_dropout_scale": ("false",), "train_norm": ("false",), "dora_wd": ("false",),
    "rank_dropout": ("0", "0.0"), "module_dropout": ("0", "0.0"), "dropout": ("0", "0.0", "none"),
    "decompose_both": ("false",), "factor": ("-1",), "loraplus_lr_ratio": ("0", "0.0"),
    "loraplus_unet_lr_ratio": ("0", "0.0"), "loraplus_text_encoder_lr_ratio": ("0", "0.0"),
    "train_on_input": ("true",), "constraint": ("0", "0.0"), "rescaled": ("false",), "block_size": ("1",),
}
# better reasons than "lorafw has no such setting"
WHY: dict[str, str] = {
    "v2": "SD 2.x is not an architecture lorafw trains (SD1.5, SDXL and Anima)",
    "weighted_captions": "lorafw reads (tag:1.2) weights as plain text",
    "color_aug": "lorafw has no colour augmentation",
    "class_tokens": "lorafw needs a caption file per image (kohya captions the others with class_tokens)",
    "fp8_base": "lorafw keeps the base model in 16/32 bits",
    # the rectified-flow SDXL fork (bluvoll/sd-scripts, Easy Training Scripts' RF support): docs/models.md translates it
    "flow_model": "the rectified-flow SDXL fork's switch: lorafw trains those models as train.prediction_type=flow "
                  "(+recipe=sdxl_rf or base_model=sdxl_rf; docs/models.md translates the fork's flow_* keys)",
    **{k: "the rectified-flow SDXL fork's σ draw: in lorafw train.timestep_sampling, logit_mean, logit_std and "
          "discrete_flow_shift (base_model=sdxl_rf sets the makers' values; docs/models.md)"
       for k in ("flow_timestep_distribution", "flow_logit_mean", "flow_logit_std", "flow_uniform_static_ratio",
                 "flow_uniform_shift", "flow_uniform_base_pixels")},
    "flow_use_ot": "the rectified-flow fork's optimal-transport noise pairing: lorafw has none",
    "contrastive_flow_matching": "the rectified-flow fork's contrastive flow matching: lorafw has none",
    "cfm_lambda": "the rectified-flow fork's contrastive flow matching: lorafw has none",
}
BUCKET_KEYS = tuple(K[k] for k in ("dataset.min_bucket_reso", "dataset.max_bucket_reso", "dataset.bucket_reso_steps",
                                   "dataset.bucket_no_upscale"))
# rectified flow's settings (sd-scripts' FLUX/SD3/Anima trainers; lorafw's train.prediction_type=flow)
FLOW_KEYS = tuple(K[k] for k in ("train.timestep_sampling", "train.sigmoid_scale", "train.discrete_flow_shift",
                                 "train.weighting_scheme", "train.logit_mean", "train.logit_std", "train.mode_scale"))
FLUX_KEYS = ("ae", "t5xxl", "clip_l", "model_prediction_type", "guidance_scale", "apply_t5_attn_mask",
             "t5xxl_max_token_length", "split_mode")

# -- Anima: sd-scripts' anima_train_network.py (library/anima_train_utils.py's arguments) + networks/lora_anima.py
ANIMA_MODULE = "networks.lora_anima"
# anima_train_network.py parses these but only anima_train.py (full fine-tuning, get_anima_param_groups) reads them;
# a LoRA run's per-module learning rates are network_args network_reg_lrs
ANIMA_FINETUNE_ONLY = ("self_attn_lr", "cross_attn_lr", "mlp_lr", "mod_lr", K["optimizer.llm_adapter_lr"])
# train_network.py's options that Anima's trainer never applies: its get_noise_pred_and_target draws noise and σ itself
# (flux_train_utils.get_noisy_model_input_and_timesteps: no offset noise, no timestep range), its get_noise_scheduler
# is a flow-matching one, and its post_process_loss returns the loss as it is
ANIMA_UNUSED = tuple(K[k] for k in (
    "train.noise_offset", "train.noise_offset_random_strength", "train.adaptive_noise_scale",
    "train.multires_noise_iterations", "train.multires_noise_discount", "train.min_timestep", "train.max_timestep",
    "train.min_snr_gamma", "train.scale_v_pred_loss_like_noise_pred", "train.v_pred_like_loss",
    "train.debiased_estimation_loss", "train.zero_terminal_snr", "train.clip_skip", "train.max_token_length",
    "train.no_half_vae")) + ("v2", "v_parameterization")
# Anima's memory strategies (the same result) and what sd-scripts itself turns off for Anima
ANIMA_NO_EFFECT = {
    "blocks_to_swap": "memory strategy (the same result)",
    "cpu_offload_checkpointing": "memory strategy (the same result)",
    "unsloth_offload_checkpointing": "memory strategy (the same result; sd-scripts turns gradient checkpointing on)",
    "split_attn": "attention one sample at a time: memory strategy (the same result)",
    "text_encoder_batch_size": "caching batch size (the same result)",
    "fp8_base": "sd-scripts turns it off for Anima", "fp8_base_unet": "sd-scripts turns it off for Anima",
    "fp8_scaled": "sd-scripts turns it off for Anima",
}
ANIMA_TOKENS = 512  # qwen3_max_token_length and t5_max_token_length: sd-scripts' default, and what lorafw encodes


@dataclass
class Imported:
    """What a file said, as lorafw settings, and what was left behind with why."""

    dialect: str = ""
    groups: dict[str, str] = field(default_factory=dict)  # config group → option (base_model, optimizer)
    values: dict[str, Any] = field(default_factory=dict)  # dotted lorafw key → value
    no_effect: list[Problem] = field(default_factory=list)
    not_honoured: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    imported_from: dict[str, str] = field(default_factory=dict)  # lorafw key → the kohya key it came from


def optimizer_aliases() -> dict[str, str]:
    """kohya optimizer_type (lower case) → a lorafw optimizer the catalog has."""
    out = {alias: name for alias, name in OPTIMIZER_ALIASES.items() if name in OPTIMIZERS}
    for name, info in OPTIMIZERS.items():
        out[name.lower()] = name
        for alias in getattr(info, "kohya", ()) or ():
            out[str(alias).lower()] = name
        path = getattr(info, "cls_path", "").replace(":", ".").lower()
        if path:
            out[path] = name
    return out


def coerce(value: Any, tp: Any) -> Any:
    """A kohya value (TOML/JSON, often a string in GUI files) as the lorafw key's type. Raises ValueError."""
    inner, optional = _unwrap(tp)
    if value is None or value == "":
        if optional:
            return None
        raise ValueError("empty")
    origin = typing.get_origin(inner)
    if origin is Literal:
        allowed = typing.get_args(inner)
        for a in allowed:
            if str(a) == str(value).strip() or (isinstance(a, int) and _is_number(value) and float(value) == a):
                return a
        raise ValueError(f"not one of {', '.join(map(str, allowed))}")
    if inner is bool:
        if isinstance(value, bool):
            return value
        if str(value).strip().lower() in ("true", "false", "1", "0"):
            return str(value).strip().lower() in ("true", "1")
        raise ValueError("not true or false")
    if inner is int:
        f = float(value)
        if not f.is_integer():
            raise ValueError("not a whole number")
        return int(f)
    if inner is float:
        return float(value)
    if origin is tuple:
        seq = value if isinstance(value, (list, tuple)) else str(value).split(",")
        item = typing.get_args(inner)[0]
        return [coerce(x, item) for x in seq]
    if inner is str:
        return str(value)
    return value


def _class_path(v: Any) -> bool:
    """`module.Class`: dotted, each part an identifier, the last one a class name."""
    parts = str(v).split(".")
    return len(parts) > 1 and all(p.isidentifier() for p in parts) and parts[-1][:1].isupper()


def _is_number(v: Any) -> bool:
    try:
        float(v)
        return not isinstance(v, bool)
    except (TypeError, ValueError):
        return False


def _same(a: Any, b: Any) -> bool:
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, bool):
        return a.strip().lower() == str(b).lower()
    return a == b or (isinstance(a, str) and isinstance(b, str) and a.strip() == b.strip())


class Classifier:
    """Runs once per import; `imp` collects the result."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.imp = Imported(dialect=src.dialect, no_effect=list(src.no_effect), not_honoured=list(src.problems),
                            notes=list(src.notes))
        self.direct = kohya_names(RunSpec)

    # -- helpers ---------------------------------------------------------------------------------------
    def set(self, key: str, value: Any, origin: str) -> None:
        self.imp.values[key] = value
        self.imp.imported_from[key] = origin

    def refuse(self, key: str, value: Any, why: str) -> None:
        self.imp.not_honoured.append(Problem(key, value, why))

    def none(self, key: str, value: Any, why: str = "") -> None:
        self.imp.no_effect.append(Problem(key, value, why))

    def direct_value(self, kohya: str, value: Any) -> None:
        path = self.direct[kohya]
        try:
            self.set(path, coerce(value, TYPES[path]), kohya)
        except (ValueError, TypeError) as e:
            self.refuse(kohya, value, f"malformed for {path} ({e})")

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> Imported:
        args = dict(self.src.args)
        folders = self.dataset(args)
        flux = [k for k in FLUX_KEYS if args.get(k) not in (None, "", False)]
        for k in flux + [k for k in FLOW_KEYS if flux and k in args]:
            self.refuse(k, args.pop(k), "a FLUX.1 setting: FLUX.1 is not an architecture lorafw trains "
                                        "(SD1.5, SDXL and Anima)")
        if self.src.arch == "anima":
            self.anima(args)
        else:
            for k in [k for k in FLOW_KEYS if k in args]:
                self.none(k, args.pop(k), f"train_network.py / sdxl_train_network.py have no such argument "
                                          f"(sd-scripts' rectified-flow trainers do: {self.src.arch or 'this'} "
                                          "is not trained with rectified flow)")
        self.optimizer(args)
        self.scheduler(args)
        self.network(args)
        self.translated(args)
        for k, v in args.items():
            if v is None:
                continue
            if k in NEUTRAL and any(_same(v, n) for n in NEUTRAL[k]):
                self.none(k, v, "kohya's default: off")
            elif k in BUCKET_KEYS and _same(args.get(K["dataset.enable_bucket"], False), False):
                self.none(k, v, "enable_bucket = false: no buckets")
            elif k in self.direct:
                self.direct_value(k, v)
            elif k in NO_EFFECT:
                self.none(k, v, NO_EFFECT[k])
            else:
                self.refuse(k, v, WHY.get(k, "lorafw has no such setting"))
        if self.imp.values.get("network.algo") == "ia3":
            for key in ("network.dropout", "network.rank_dropout"):  # LyCORIS' IA3Module.forward never reads them
                if key in self.imp.values:
                    value, origin = self.imp.values.pop(key), self.imp.imported_from.pop(key)
                    self.none(origin, value, "LyCORIS' IA3 applies only module_dropout; it ignores this")
        self.kohya_network_only()
        self.kohya_defaults(args)
        if folders:
            self.set("dataset.folders", folders, "subsets")
        self.architecture()
        return self.imp

    def kohya_network_only(self) -> None:
        """LyCORIS's rank_dropout_scale and train_norm where the network has no such switch: kohya's networks.lora
        takes unknown network_args and ignores them (and always rescales rank dropout by 1/(1-p), as lorafw's
        lora/locon/DoRA do); LyCORIS's IA3 has no rank dropout."""
        algo = self.imp.values.get("network.algo")
        why = {"network.rank_dropout_scale": {
                   "lora": "kohya's networks.lora ignores it and always rescales rank_dropout by 1/(1-p), as lorafw "
                           "does",
                   "locon": "lorafw's locon drops ranks as kohya's networks.lora does, always rescaled by 1/(1-p)",
                   "ia3": "LyCORIS' IA3 has no rank dropout"},
               "network.train_norm": {"lora": "kohya's networks.lora ignores it (it trains no norm layers)"}}
        for key, by_algo in why.items():
            if algo in by_algo and key in self.imp.values:
                value, origin = self.imp.values.pop(key), self.imp.imported_from.pop(key)
                self.none(origin, value, by_algo[algo] if value else "kohya's default: off")

    def anima(self, args: dict[str, Any]) -> None:
        """anima_train_network.py's own arguments, and train_network.py's that it does not apply; the rest (qwen3,
        llm_adapter_path, the flow keys, …) map through the schema like any other key."""
        for k in ANIMA_FINETUNE_ONLY:
            if args.get(k) is not None:
                self.none(k, args.pop(k), "anima_train_network.py never reads it (only anima_train.py, full "
                                          "fine-tuning, does); a LoRA run sets per-module learning rates with "
                                          "network_args network_reg_lrs, which lorafw imports for the LLM adapter "
                                          f"({K['optimizer.llm_adapter_lr']})")
        for k in ANIMA_UNUSED:
            if k in args:
                self.none(k, args.pop(k), "sd-scripts' Anima trainer does not apply it (rectified flow draws its own "
                                          "noise and σ; its loss has no SNR weighting; Qwen3 has no CLIP layers)")
        for k, why in ANIMA_NO_EFFECT.items():
            if k in args:
                self.none(k, args.pop(k), why)
        for k in ("qwen3_max_token_length", "t5_max_token_length"):
            v = args.pop(k, None)
            if v is None or _same(v, ANIMA_TOKENS):
                if v is not None:
                    self.none(k, v, "sd-scripts' default, as lorafw encodes")
            else:
                self.refuse(k, v, f"lorafw's Anima family encodes captions to {ANIMA_TOKENS} tokens, as sd-scripts "
                                  f"does by default; remove it or set {ANIMA_TOKENS}")
        v = args.pop("t5_tokenizer_path", None)
        if v not in (None, ""):
            self.refuse("t5_tokenizer_path", v, "the LLM adapter's T5 token ids come from the tokenizer lorafw's "
                                                "Anima family bundles (the one sd-scripts bundles in configs/t5_old); "
                                                "remove it")
        mode = args.pop("attn_mode", None)
        if mode in (None, "", "torch", "sdpa"):
            if mode:
                self.none("attn_mode", mode, "PyTorch attention, lorafw's train.attention=sdpa")
        elif mode == "xformers":
            self.set("train.attention", "xformers", "attn_mode")
        elif mode == "flash":
            self.none("attn_mode", mode, "an attention kernel (the same result); lorafw picks PyTorch's "
                                         "(train.attention)")
        else:
            self.refuse("attn_mode", mode, "sd-scripts cannot train with it (inference only); lorafw trains with "
                                           "train.attention=sdpa or xformers")
        chunk = args.pop("vae_chunk_size", None)
        if chunk not in (None, "", 0):
            self.refuse("vae_chunk_size", chunk, "encodes latents in spatial chunks, not as the official VAE does "
                                                 "(sd-scripts' help); lorafw encodes whole images: remove it")
        elif chunk is not None:
            self.none("vae_chunk_size", chunk, "0: no chunking")
        off = args.pop("vae_disable_cache", None)
        if off is True or str(off).lower() == "true":
            self.refuse("vae_disable_cache", off, "\"differs from official behavior\" (sd-scripts' help); lorafw "
                                                  "encodes as the official VAE does: remove it")
        elif off is not None:
            self.none("vae_disable_cache", off, "off")
        to_disk = args.pop("cache_text_encoder_outputs_to_disk", None)
        if to_disk is True or str(to_disk).lower() == "true":
            self.set("dataset.cache_text_encoder_outputs", True, "cache_text_encoder_outputs_to_disk")
            args.pop(K["dataset.cache_text_encoder_outputs"], None)
            self.imp.notes.append("cache_text_encoder_outputs_to_disk: lorafw caches the Qwen3 outputs (in memory); "
                                  "sd-scripts turns cache_text_encoder_outputs on with it, as here")
        elif to_disk is not None:
            self.none("cache_text_encoder_outputs_to_disk", to_disk, "off")

    def dataset(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """kohya's fallbacks: subset > [[datasets]] > [general] > config-file arguments > defaults."""
        doc = self.src.dataset
        if not doc:
            return []
        for k in (K["dataset.root"], K["dataset.reg_root"], "in_json"):
            if args.get(k):
                self.none(k, args.pop(k), "sd-scripts ignores it when a dataset config is given")
        general = dict(doc.get("general", {}))
        datasets = list(doc.get("datasets", []))
        subsets: list[dict[str, Any]] = []
        level: dict[str, Any] = {}
        for i, d in enumerate(datasets):
            own = {k: v for k, v in d.items() if k != "subsets"}
            if i == 0:
                level = own
            elif own != level:
                diff = sorted(k for k in set(own) | set(level) if own.get(k) != level.get(k))
                self.refuse(f"datasets[{i}]", {k: own.get(k) for k in diff},
                            "several [[datasets]] with different settings; lorafw has one dataset-wide setting each")
            subsets += list(d.get("subsets", []))
        merged = {**general, **level}
        config_name, dataset_name = KEYS["train.batch_size"].kohya  # train_batch_size, and the dataset config's
        if dataset_name in merged:
            args.pop(config_name, None)
        args.update(merged)  # dataset config values win over the config file's
        folders = []
        folder_fields = {f.name: f for f in dataclasses.fields(FolderSpec)}
        folder_types = typing.get_type_hints(FolderSpec)
        for i, sub in enumerate(subsets):
            entry: dict[str, Any] = {}
            for k, v in sub.items():
                name = FOLDER_KEYS.get(k, k)
                if v is None:
                    continue
                if name in folder_fields:
                    try:
                        entry[name] = coerce(v, folder_types[name])
                    except (ValueError, TypeError) as e:
                        self.refuse(f"subsets[{i}].{k}", v, f"malformed ({e})")
                elif k in NEUTRAL and any(_same(v, n) for n in NEUTRAL[k]):
                    self.none(f"subsets[{i}].{k}", v, "kohya's default: off")
                elif k in ("name",):
                    self.none(f"subsets[{i}].{k}", v, "a label")
                else:
                    self.refuse(f"subsets[{i}].{k}", v, WHY.get(k, "lorafw has no such per-folder setting"))
            entry.setdefault("repeats", 1)  # kohya's num_repeats default
            folders.append(entry)
        return folders

    def optimizer(self, args: dict[str, Any]) -> None:
        raw = args.pop("optimizer_type", None) or "AdamW"
        if args.pop("use_8bit_adam", False):
            raw = "AdamW8bit"
        name = optimizer_aliases().get(str(raw).lower())
        problems: list[Problem] = []
        opt_args = literal_args(args.pop("optimizer_args", None), "optimizer_args", problems)
        self.imp.not_honoured += problems
        if name is None and _class_path(raw):  # kohya's "any optimizer": module.Class, built with optimizer_args
            self.set("optimizer.name", str(raw), "optimizer_type")
            for k, v in opt_args.items():
                self.set(f"optimizer.args.{k}", list(v) if isinstance(v, tuple) else v, f"optimizer_args.{k}")
            return
        if name is None:
            self.refuse("optimizer_type", raw, f"not an optimizer lorafw has ({', '.join(OPTIMIZERS)}), "
                                               "nor a module.Class")
            return
        from pathlib import Path

        if (Path(conf_dir()) / "optimizer" / f"{name}.yaml").is_file():
            self.imp.groups["optimizer"] = name  # its option file holds the library's defaults
        self.set("optimizer.name", name, "optimizer_type")
        info = OPTIMIZERS[name]
        for k, v in opt_args.items():
            if k == "weight_decay" and _is_number(v):
                self.set("optimizer.weight_decay", float(v), "optimizer_args.weight_decay")
            elif k == "betas" and isinstance(v, (list, tuple)) and all(_is_number(b) for b in v):
                self.set("optimizer.betas", [float(b) for b in v], "optimizer_args.betas")
            elif k in info.args:
                self.set(f"optimizer.args.{k}", list(v) if isinstance(v, tuple) else v, f"optimizer_args.{k}")
            else:
                self.refuse(f"optimizer_args.{k}", v, f"not an argument lorafw's {name} takes "
                                                      f"(weight_decay, betas, {', '.join(sorted(info.args))})")

    def scheduler(self, args: dict[str, Any]) -> None:
        name_raw = args.pop("lr_scheduler", None) or "constant"
        cls = args.pop("lr_scheduler_type", None)
        key, raw = ("lr_scheduler_type", cls) if cls else ("lr_scheduler", name_raw)
        name = SCHEDULER_CLASSES.get(str(raw).lower(), str(raw).lower())
        if cls and name == str(cls).lower():
            self.custom_scheduler(args, str(cls), name_raw)  # kohya builds the class itself
            return
        if name is not None and name.startswith("adafactor"):
            name = "adafactor"
        if name not in SCHEDULERS:
            self.refuse(key, raw, f"not a scheduler lorafw has ({', '.join(SCHEDULERS)})")
            for k in ("lr_scheduler_args", "lr_warmup_steps", K["scheduler.warmup_ratio"], K["scheduler.num_cycles"],
                      "lr_scheduler_power"):
                if args.get(k) not in (None, "", []):
                    self.refuse(k, args.pop(k), f"goes with {key} = {raw}, refused above")
            return
        if cls:
            self.none("lr_scheduler", name_raw, f"lr_scheduler_type = {cls} takes its place")
        used = SCHEDULERS[name]
        self.set("scheduler.name", name, key)
        fields = {f.name for f in dataclasses.fields(SchedulerSpec)}
        problems: list[Problem] = []
        rex_warmup = None  # the REX class's warmup_steps: per cycle
        for k, v in literal_args(args.pop("lr_scheduler_args", None), "lr_scheduler_args", problems).items():
            if name == "rex" and k == "warmup_steps" and _is_number(v) and float(v).is_integer() and v >= 0:
                rex_warmup = int(v)
            elif name == "rex" and k == "first_cycle_max_steps" and _is_number(v):
                self.none(f"lr_scheduler_args.{k}", v, "lorafw makes each cycle all steps // num_cycles, the Colab's "
                                                        "own rule for this value")
            elif k in fields and k != "name" and (k in used or not used):
                self.set(f"scheduler.{k}", v, f"lr_scheduler_args.{k}")
            elif name == "rex" and k == "cycle_multiplier" and _same(v, 1):
                self.none(f"lr_scheduler_args.{k}", v, "1: every cycle as long")
            else:
                self.refuse(f"lr_scheduler_args.{k}", v, f"not a setting of lorafw's {name} scheduler")
        self.imp.not_honoured += problems
        ratio_key = None
        if K["scheduler.warmup_ratio"] in args:
            ratio_key, ratio = K["scheduler.warmup_ratio"], args.pop(K["scheduler.warmup_ratio"])
        elif "lr_warmup_steps" in args:
            ratio_key, ratio = "lr_warmup_steps", args.pop("lr_warmup_steps")
        else:
            ratio = 0
        if isinstance(ratio, str) and ratio.endswith("%"):
            ratio = float(ratio[:-1]) / 100
        warm_steps = _is_number(ratio) and float(ratio) >= 1
        if rex_warmup is not None and not (_is_number(ratio) and float(ratio)):
            if ratio_key:
                self.none(str(ratio_key), ratio, "0: lr_scheduler_args.warmup_steps gives REX its warmup")
        elif "warmup_ratio" in used:
            if warm_steps and "warmup_steps" in fields:
                self.set("scheduler.warmup_steps", int(float(ratio)), str(ratio_key))
            elif warm_steps:
                self.refuse(str(ratio_key), ratio, "a warmup in steps; lorafw takes it as a ratio of the run's steps "
                                                   "(scheduler.warmup_ratio)")
                self.imp.values["scheduler.warmup_ratio"] = 0.0  # what a --lenient recipe trains (its header says so)
            else:
                self.set("scheduler.warmup_ratio", float(ratio or 0), str(ratio_key or "lr_warmup_steps"))
        elif ratio_key and _is_number(ratio) and float(ratio):
            self.none(str(ratio_key), ratio, f"the {name} scheduler has no warmup (as in sd-scripts)")
        cycles = args.pop(K["scheduler.num_cycles"], None)
        if "num_cycles" in used:
            self.set("scheduler.num_cycles", int(float(cycles or 1)), K["scheduler.num_cycles"])
        if rex_warmup is not None:  # lorafw's REX warmup_steps is the run's, split over the cycles
            self.set("scheduler.warmup_steps", rex_warmup * int(float(cycles or 1)), "lr_scheduler_args.warmup_steps")
        elif cycles is not None:
            self.none(K["scheduler.num_cycles"], cycles, f"not used by the {name} scheduler")
        power = args.pop("lr_scheduler_power", None)
        if power is not None:
            if "power" in used:
                self.set("scheduler.power", float(power), "lr_scheduler_power")
            elif name != "polynomial":
                self.none("lr_scheduler_power", power, f"not used by the {name} scheduler")
            else:
                self.refuse("lr_scheduler_power", power, "lorafw's polynomial scheduler has no power setting")

    def custom_scheduler(self, args: dict[str, Any], cls: str, name_raw: Any) -> None:
        """kohya's lr_scheduler_type: the class (bare = torch.optim.lr_scheduler) built with lr_scheduler_args
        only; sd-scripts (get_scheduler_fix) ignores num_cycles and power and stops on a warmup."""
        self.set("scheduler.type", cls, "lr_scheduler_type")
        self.none("lr_scheduler", name_raw, f"lr_scheduler_type = {cls} takes its place")
        problems: list[Problem] = []
        for k, v in literal_args(args.pop("lr_scheduler_args", None), "lr_scheduler_args", problems).items():
            self.set(f"scheduler.args.{k}", list(v) if isinstance(v, tuple) else v, f"lr_scheduler_args.{k}")
        self.imp.not_honoured += problems
        for k in (K["scheduler.num_cycles"], "lr_scheduler_power"):
            if args.get(k) not in (None, ""):
                self.none(k, args.pop(k), f"sd-scripts passes only lr_scheduler_args to {cls}")
        for k in ("lr_warmup_steps", K["scheduler.warmup_ratio"]):
            v = args.pop(k, None)
            if _is_number(v) and float(v):
                self.refuse(k, v, f"sd-scripts stops with 'does not require num_warmup_steps' for {cls}; "
                                  "give the class its own warmup in lr_scheduler_args")
            elif v is not None:
                self.none(k, v, "no warmup")

    def network(self, args: dict[str, Any]) -> None:
        module = str(args.pop("network_module", None) or "networks.lora")
        problems: list[Problem] = []
        nargs = network_args(args.pop("network_args", None), problems)
        self.imp.not_honoured += problems
        algos = typing.get_args(_unwrap(typing.get_type_hints(NetworkSpec)["algo"])[0])
        fields = typing.get_type_hints(NetworkSpec)
        if module.endswith(("_flux", "lora_sd3", "lora_hunyuan_image", "lora_lumina", "oft_flux")):
            self.refuse("network_module", module, "not an architecture lorafw trains (SD1.5, SDXL and Anima)")
            return
        if module == ANIMA_MODULE and self.src.arch != "anima":
            return  # the dialect names the mix (dialects.from_sd_scripts)
        if module == ANIMA_MODULE:
            self.anima_network(nargs)
            module = "networks.lora"  # the rest as kohya's LoRA: dim, alpha, dropouts, LoRA+
        if module == "lycoris.kohya":
            algo = (nargs.pop("algo", "lora") or "lora").lower().strip("'")
            if algo in ("lora", "locon"):
                algo = "locon"
                # LyCORIS: conv_dim and conv_alpha default to the network's, whose kohya defaults are 4 and 1
                nargs.setdefault("conv_dim", str(args.get(K["network.dim"]) or KEYS["network.dim"].kohya_default))
                nargs.setdefault("conv_alpha", str(args.get(K["network.alpha"]) or 1))
        elif module == "networks.lora":
            algo = "locon" if "conv_dim" in nargs else "lora"
            if algo == "locon":
                nargs.setdefault("conv_alpha", "1")  # kohya's networks.lora default
        elif module in ("networks.loha", "networks.lokr"):
            algo = module.rsplit(".", 1)[1]
        else:
            self.refuse("network_module", module, "a network lorafw does not train (it has "
                                                  f"{', '.join(algos)})")
            return
        if algo not in algos:
            if module == "lycoris.kohya":
                self.refuse("network_args.algo", algo, f"lorafw trains {', '.join(algos)}")
                self.none("network_module", module, "LyCORIS: network_args.algo names the network")
            else:
                self.refuse("network_module", module, f"a {algo} network; lorafw trains {', '.join(algos)}")
            for k, text in nargs.items():
                self.refuse(f"network_args.{k}", text, f"goes with the {algo} network, refused above")
            return
        self.set("network.algo", algo, "network_module")
        if "use_cp" in nargs:  # LyCORIS: use_tucker = use_cp or use_tucker (use_cp is the older name)
            cp = nargs.pop("use_cp")
            if cp.strip().lower() == "true" or "use_tucker" not in nargs:
                nargs["use_tucker"] = cp
        for k, text in nargs.items():
            target = self.direct.get(k) or (f"network.{k}" if k in fields else None)
            if target == "network.dropout" and module == "lycoris.kohya":
                target = None if text.lower() in ("0", "0.0", "none") else target
            if target:
                tp = _unwrap(TYPES.get(target, fields.get(k)))[0]
                try:
                    value = coerce(text, tp) if typing.get_origin(tp) is tuple else network_value(
                        text, tp if tp in (bool, int, float) else str)  # block_dims=2,4,… is a list
                    self.set(target, value, f"network_args.{k}")
                except ValueError as e:
                    self.refuse(f"network_args.{k}", text, f"malformed ({e})")
            elif k in NETWORK_NEUTRAL and text.strip().lower().strip("'") in NETWORK_NEUTRAL[k]:
                self.none(f"network_args.{k}", text, "kohya's default: off")
            else:
                self.refuse(f"network_args.{k}", text, f"lorafw's {algo} has no such setting")

    def anima_network(self, nargs: dict[str, str]) -> None:
        """networks/lora_anima.py's own network_args (create_network's kwargs), taken out of `nargs`."""
        if "train_llm_adapter" in nargs:  # sd-scripts: "true" (any case) is true, anything else false
            self.set("network.train_llm_adapter", nargs.pop("train_llm_adapter").strip().lower() == "true",
                     "network_args.train_llm_adapter")
        if "verbose" in nargs:
            self.none("network_args.verbose", nargs.pop("verbose"), "logging")
        for k in ("exclude_patterns", "include_patterns"):
            if k in nargs:
                self.refuse(f"network_args.{k}", nargs.pop(k), "lorafw's Anima adapters go where sd-scripts' do by "
                                                               "default (the DiT blocks' self_attn, cross_attn and "
                                                               "mlp; the LLM adapter's blocks with "
                                                               "network.train_llm_adapter); other module selections "
                                                               "are not supported: remove it")
        if "network_reg_dims" in nargs:
            self.refuse("network_args.network_reg_dims", nargs.pop("network_reg_dims"),
                        "lorafw gives every adapter network.dim; remove it")
        if "network_reg_lrs" in nargs:
            text = nargs.pop("network_reg_lrs")
            lr = llm_adapter_lr(text)
            if lr is None:
                self.refuse("network_args.network_reg_lrs", text,
                            "lorafw has one learning rate for the DiT (optimizer.unet_lr) and one for the LLM adapter "
                            f"({K['optimizer.llm_adapter_lr']} = optimizer.llm_adapter_lr, imported from "
                            "network_reg_lrs=.*llm_adapter.*=LR alone); other patterns are not supported")
            else:
                self.set("optimizer.llm_adapter_lr", lr, "network_args.network_reg_lrs")

    def translated(self, args: dict[str, Any]) -> None:
        """Keys whose values need translating before they are lorafw values."""
        res, precision, sampler = K["dataset.resolution"], K["train.mixed_precision"], K["sample.sampler"]
        if res in args:
            v = args.pop(res)
            seq = [x for x in (v if isinstance(v, (list, tuple)) else str(v).split(","))]
            try:
                sides = [int(float(x)) for x in seq]
            except ValueError:
                sides = []
            if len(sides) == 1 or (len(sides) == 2 and sides[0] == sides[1]):
                self.set("dataset.resolution", sides[0], res)
            elif len(sides) == 2:  # kohya's W,H: buckets of about W·H pixels, or exactly W×H without buckets
                self.set("dataset.resolution", sides, res)
            else:
                self.refuse(res, v, "not N or W,H (sd-scripts' prepare_dataset_args refuses it too)")
        if precision in args:
            v = str(args.pop(precision))
            if v in ("no", "fp16", "bf16"):
                self.set("train.mixed_precision", v, precision)
            else:
                self.refuse(precision, v, "not no, fp16 or bf16")
        if sampler in args:
            v = args.pop(sampler)
            if str(v).lower() in SAMPLERS:
                self.set("sample.sampler", SAMPLERS[str(v).lower()], sampler)
            else:
                self.none(sampler, v, "previews only; lorafw renders them with euler_a")
        if "num_processes" in args:  # accelerate's data-parallel processes (the GUI saves it)
            try:
                self.set("train.num_processes", int(float(args.pop("num_processes"))), "num_processes")
            except (TypeError, ValueError):
                self.refuse("num_processes", args.get("num_processes"), "not a whole number")
        if "v_parameterization" in args and _same(args["v_parameterization"], True):
            self.set("train.prediction_type", "v_prediction", args.pop("v_parameterization") and "v_parameterization")
        if "sample_prompt_lines" in args:
            self.set("sample.prompts", args.pop("sample_prompt_lines"), K["sample.prompt_file"])
        te, unet = K["optimizer.text_encoder_lr"], K["optimizer.unet_lr"]
        te_only = args.pop("network_train_text_encoder_only", False)
        unet_only = args.pop("network_train_unet_only", False)
        if unet_only is False or str(unet_only).lower() == "false":
            self.none("network_train_unet_only", unet_only, "off")
        if te_only is False or str(te_only).lower() == "false":
            self.none("network_train_text_encoder_only", te_only, "off")
        if unet_only is True or str(unet_only).lower() == "true":
            self.set("optimizer.text_encoder_lr", 0.0, "network_train_unet_only")
            if args.get(te) not in (None, 0, 0.0):
                self.none(te, args.pop(te), "network_train_unet_only: no text-encoder training")
            elif args.get(te) is not None:
                self.none(te, args.pop(te), "0: the same as network_train_unet_only")
        elif unet_only is not None and str(unet_only).lower() != "false":
            self.refuse("network_train_unet_only", unet_only, "not true or false")
        if te_only is True or str(te_only).lower() == "true":
            self.set("optimizer.unet_lr", 0.0, "network_train_text_encoder_only")
            if args.get(unet) not in (None, 0, 0.0):
                self.none(unet, args.pop(unet), "network_train_text_encoder_only: no UNet training")
        for k in ("xformers", "mem_eff_attn"):
            if args.get(k) is True and k == "xformers":
                self.set("train.attention", "xformers", "xformers")
                args.pop(k)
            elif k in args and not args[k]:
                self.none(k, args.pop(k), "off")
        if isinstance(args.get(te), (list, tuple)):  # the GUI's [te1, te2] list
            lrs = args.pop(te)
            if len(set(lrs)) == 1:
                self.set("optimizer.text_encoder_lr", float(lrs[0]), te)
            else:
                self.refuse(te, lrs, "one learning rate per text encoder; lorafw has one for both")

    def kohya_defaults(self, args: dict[str, Any]) -> None:
        """A key the file leaves out means kohya's default: state it where lorafw's differs."""
        given = set(self.imp.imported_from.values()) | set(args)
        for path, k in KEYS.items():
            if k.kohya_default is SAME or any(n in given for n in k.kohya) or path in self.imp.values:
                continue
            if DEFAULTS.get(path) != k.kohya_default:
                self.set(path, coerce(k.kohya_default, TYPES[path]), f"{k.kohya[0]} (kohya's default)")
        self.run_length()

    def run_length(self) -> None:
        """sd-scripts counts the run in max_train_epochs when given (it overrides max_train_steps), else in
        max_train_steps, 1600 when left out. lorafw's train.epochs has a default, so a run counted in steps sets it
        to null (planning/budget.py)."""
        epochs, steps = K["train.epochs"], K["train.max_steps"]
        if "train.epochs" in self.imp.values or any(p.key == epochs for p in self.imp.not_honoured):
            return
        if any(p.key == steps for p in self.imp.not_honoured):
            return
        self.set("train.epochs", None, f"{epochs} (not set: {steps} counts the run)")
        if "train.max_steps" not in self.imp.values:
            self.set("train.max_steps", KOHYA_DEFAULT_STEPS, f"{steps} (kohya's default)")

    def architecture(self) -> None:
        src = self.src
        if src.arch:
            self.imp.groups["base_model"] = src.arch
            self.imp.notes.append(f"base_model={src.arch}: {src.arch_why}")
        else:
            self.imp.groups["base_model"] = "auto"
            self.imp.notes.append("base_model=auto: the architecture comes from the checkpoint's own tensors")


LLM_ADAPTER_PATTERN = ".*llm_adapter.*"  # sd-scripts' doc's pattern for the LLM adapter's modules


def llm_adapter_lr(text: str) -> float | None:
    """network_reg_lrs (comma-separated `regex=lr`, matched by re.fullmatch against sd-scripts' module names) → the
    LLM adapter's learning rate, where it holds exactly one pattern and that pattern selects the LLM adapter's
    modules and none of the DiT blocks' (the only per-module rate lorafw has); otherwise None."""
    import re

    pairs = [p.strip().rsplit("=", 1) for p in text.split(",") if p.strip()]
    if len(pairs) != 1 or len(pairs[0]) != 2:
        return None
    pattern, value = pairs[0][0].strip(), pairs[0][1].strip()
    try:
        lr, rx = float(value), re.compile(pattern)
    except (ValueError, re.error):
        return None
    adapter = ("llm_adapter.blocks.0.self_attn.q_proj", "llm_adapter.blocks.5.mlp.2")
    dit = ("blocks.0.self_attn.q_proj", "blocks.0.cross_attn.k_proj", "blocks.27.mlp.layer2")
    if all(rx.fullmatch(n) for n in adapter) and not any(rx.fullmatch(n) for n in dit):
        return lr
    return None


def classify(src: Source) -> Imported:
    return Classifier(src).run()
