"""The config dialects users arrive with, each turned into what sd-scripts would run. Pure functions.

Every adapter returns a `Source`: the kohya arguments (what sd-scripts' argparse namespace would hold after
reading the file), a --dataset_config document, the architecture where the dialect decides it (the script
it runs, the GUI's model type), and the dialect's own keys that never reach sd-scripts (UI state), each
with why it has no effect. lorafw/interop/classify.py then maps the arguments onto lorafw keys.

Dialects, told apart by their content (FORMATS.md, "Config dialects users arrive with"):
- sd-scripts `--config_file` TOML: keys in any sections (sections only group), plus its `--dataset_config`;
- the guide's Colab pair `training_config.toml` + `dataset_config.toml` (XL: [network_arguments],
  [training_arguments] with `lowram`, [saving_arguments] with `log_prefix`; it runs sdxl_train_network.py and
  never writes `sdxl = true`. SD1.5: [additional_network_arguments] and [dreambooth_arguments], train_network.py);
- the derrian GUI trainer's TOML ([[subsets]], [general_args.args], [network_args.args.network_args], …);
- the bmaltais kohya_ss GUI's saved JSON (LoRA_type, epoch, max_resolution, lr_warmup in percent, …), turned
  into sd-scripts arguments the way its kohya_gui/lora_gui.py `train_model` does.

An sd-scripts argument that lorafw has a key for is named here as `K[lorafw key]` (its `kohya=` name in
config/spec.py); the bmaltais GUI's JSON uses sd-scripts' names for those too.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from typing import Any

from lorafw.config.schema import kohya_of
from lorafw.config.spec import RunSpec
from lorafw.interop.argstrings import Problem, items_of

K = kohya_of(RunSpec)  # lorafw key → its sd-scripts argument name


@dataclass
class Source:
    """One imported file (or pair) as sd-scripts would see it."""

    dialect: str
    args: dict[str, Any] = field(default_factory=dict)  # kohya argument → value
    dataset: dict[str, Any] | None = None  # a --dataset_config document: {general, datasets: [{…, subsets}]}
    arch: str | None = None  # sd15 / sdxl where the dialect decides it; None = from the checkpoint
    arch_why: str = ""
    no_effect: list[Problem] = field(default_factory=list)  # dialect-only keys: (key, value, why)
    problems: list[Problem] = field(default_factory=list)  # not honoured before any mapping (malformed, FLUX…)
    notes: list[str] = field(default_factory=list)
    lorafw: dict[str, Any] | None = None  # the [lorafw] section `lorafw export` writes (exact values)


SDXL_SCRIPT = "the guide's XL Colab runs sdxl_train_network.py (its config never says sdxl = true)"


def detect(doc: dict[str, Any], is_json: bool) -> str:
    """The dialect of a parsed file, from its content."""
    if is_json:
        if "LoRA_type" in doc or ("max_resolution" in doc and "optimizer" in doc):
            return "bmaltais GUI JSON"
        return "unknown JSON"
    if isinstance(doc.get("subsets"), list) or any(
            isinstance(v, dict) and ("args" in v or "dataset_args" in v) for v in doc.values()):
        return "GUI trainer TOML"
    sections = {k for k, v in doc.items() if isinstance(v, dict)}
    if {"network_arguments", "training_arguments", "saving_arguments"} <= sections and (
            "lowram" in doc["training_arguments"] or "log_prefix" in doc["saving_arguments"]):
        return "Colab XL"
    if {"additional_network_arguments", "dreambooth_arguments"} <= sections:
        return "Colab"
    return "sd-scripts TOML"


def flat_sections(doc: dict[str, Any]) -> dict[str, Any]:
    """sd-scripts' read_config_from_file: every section's keys in one namespace (later sections win)."""
    out: dict[str, Any] = {}
    for section, body in doc.items():
        if section == "lorafw":
            continue
        if isinstance(body, dict):
            out.update(body)
        else:
            out[section] = body
    return out


def from_sd_scripts(doc: dict[str, Any], dataset: dict[str, Any] | None, dialect: str = "sd-scripts TOML") -> Source:
    """sd-scripts' --config_file (+ --dataset_config); the Colab writes the same pair."""
    src = Source(dialect, flat_sections(doc), dataset, lorafw=doc.get("lorafw"))
    src.args.pop("dataset_config", None)
    if dialect == "Colab XL":
        src.arch, src.arch_why = "sdxl", SDXL_SCRIPT
    elif dialect == "Colab":
        src.arch, src.arch_why = "sd15", "the guide's Colab runs train_network.py (SD1.5; SD2 with v2 = true)"
    if src.args.get("sdxl") is True and src.arch is None:
        src.arch, src.arch_why = "sdxl", "sdxl = true"
    anima = anima_why(src.args)
    if anima and src.arch in (None, "anima"):
        src.arch, src.arch_why = "anima", anima
    elif anima:
        src.problems.append(Problem("network_module", src.args.get("network_module"),
                                    f"{anima}, but {src.arch_why}: the file mixes two architectures"))
    return src


ANIMA_NETWORK = "networks.lora_anima"


def anima_why(args: dict[str, Any]) -> str:
    """Why a config is for sd-scripts' anima_train_network.py (its network module, its Qwen3 text encoder), or ''."""
    why = []
    if str(args.get("network_module", "")).strip() == ANIMA_NETWORK:
        why.append(f"network_module = {ANIMA_NETWORK}")
    if args.get(K["base_model.text_encoder"]) not in (None, ""):
        why.append(f"{K['base_model.text_encoder']} names the Qwen3 text encoder")
    return " and ".join(why) + " (anima_train_network.py)" if why else ""


# -- the derrian GUI trainer ---------------------------------------------------------------------------
def from_gui_trainer(doc: dict[str, Any]) -> Source:
    """The GUI trainer's TOML, as its backend (utils/validation.py) turns it into sd-scripts arguments:
    "false"/empty values are left out, network_args with `algo` mean lycoris.kohya, `sdxl` picks the script."""
    src = Source("GUI trainer TOML")
    general: dict[str, Any] = {}
    for section, body in doc.items():
        if section == "subsets" or not isinstance(body, dict):
            continue
        for part, values in body.items():
            if not isinstance(values, dict):
                src.args[part] = values
                continue
            for k, v in values.items():
                if part == "dataset_args":
                    if v not in (None, "", False) and not (k == K["train.max_token_length"] and v == 75):
                        general[k] = v
                    continue
                if k == "network_args" and isinstance(v, dict):
                    if "algo" in v:
                        src.args["network_module"] = "lycoris.kohya"
                    elif "unit" in v:
                        src.args["network_module"] = "networks.dylora"
                    src.args[k] = items_of(v)
                elif k in ("optimizer_args", "lr_scheduler_args") and isinstance(v, dict):
                    src.args[k] = items_of(v, optimizer=k == "optimizer_args")
                elif k == "fa":
                    if v:
                        src.args["network_module"] = "networks.lora_fa"
                elif isinstance(v, str) and v.lower() in ("true", "false"):
                    if v.lower() == "true":
                        src.args[k] = True
                elif v not in (None, ""):
                    src.args[k] = v
    src.dataset = {"general": general, "datasets": [{"subsets": list(doc.get("subsets", []))}]}
    if src.args.pop("sdxl", False):
        src.arch, src.arch_why = "sdxl", "sdxl = true (the GUI trainer runs sdxl_train_network.py)"
    else:
        src.arch, src.arch_why = "sd15", "no sdxl = true (the GUI trainer runs train_network.py)"
    return src


# -- the bmaltais kohya_ss GUI ------------------------------------------------------------------------
# JSON keys that only steer the GUI (or the machine), never sd-scripts' training: why each has no effect.
GUI_ONLY = {
    "num_cpu_threads_per_process": "CPU threads of accelerate", "gpu_ids": "which GPUs", "main_process_port": "",
    "num_machines": "", "multi_gpu": "", "extra_accelerate_launch_args": "",
    "model_list": "the GUI's model picker", "save_as_bool": "GUI state", "save_model_as": "lorafw writes .safetensors",
    "log_with": "lorafw writes TensorBoard and metrics.jsonl", "logging_dir": "", "log_prefix": "", "log_config": "",
    "log_tracker_name": "", "log_tracker_config": "", "wandb_api_key": "", "wandb_run_name": "",
    "huggingface_repo_id": "uploading", "huggingface_token": "", "huggingface_repo_type": "",
    "huggingface_repo_visibility": "", "huggingface_path_in_repo": "", "save_state_to_huggingface": "",
    "resume_from_huggingface": "", "async_upload": "",
    "metadata_author": "file metadata", "metadata_description": "", "metadata_license": "", "metadata_tags": "",
    "metadata_title": "", "persistent_data_loader_workers": "lorafw's loader threads cost nothing to start",
    "save_state": "lorafw always saves resumable state", "save_state_on_train_end": "",
    "save_last_n_steps_state": "", "save_last_n_epochs_state": "", "highvram": "memory strategy", "lowvram": "",
    "mem_eff_save": "", "skip_cache_check": "",
}


# values the GUI leaves out of the command line when they are 0 (whatever 0 would mean to sd-scripts)
GUI_ZERO_UNSET = tuple(K[k] for k in (
    "train.clip_skip", "train.min_snr_gamma", "train.min_timestep", "train.max_timestep", "train.ip_noise_gamma",
    "train.v_pred_like_loss", "dataset.vae_batch_size", "seed", "output.save_every_n_epochs", "sample.every_n_epochs",
    "sample.every_n_steps", "output.save_every_n_steps", "output.save_last_n_steps", "output.save_last_n_epochs"))
# values the GUI passes as whole numbers (its number fields save floats or strings)
GUI_INTEGERS = tuple(K[k] for k in (
    "dataset.keep_tokens", "train.max_token_length", "train.gradient_accumulation_steps", "dataset.workers",
    "dataset.bucket_reso_steps", "dataset.min_bucket_reso", "dataset.max_bucket_reso", "train.batch_size")) + (
    "caption_dropout_every_n_epochs",)


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return 0.0


def from_gui_json(doc: dict[str, Any]) -> Source:
    """The bmaltais GUI's saved JSON → the sd-scripts arguments its train_model() would pass."""
    src = Source("bmaltais GUI JSON")
    d = {k: v for k, v in doc.items()}
    take = d.pop
    a = src.args
    lora_type = str(take("LoRA_type", "Standard"))
    sdxl = bool(take("sdxl", False))
    for flag in ("flux1_checkbox", "sd3_checkbox", "hunyuan_image_checkbox", "lumina_checkbox"):
        if take(flag, False):
            src.problems.append(Problem(flag, True, f"{flag.split('_')[0].upper()} is not an architecture lorafw trains "
                                                    "(it trains SD1.5, SDXL and Anima)"))
    if lora_type.startswith(("Flux", "HunyuanImage", "Lumina")) or "sd3" in lora_type.lower():
        src.problems.append(Problem("LoRA_type", lora_type, f"{lora_type}: not an architecture lorafw trains "
                                                            "(it trains SD1.5, SDXL and Anima)"))
    anima = bool(take("anima_checkbox", False))
    src.arch = "sdxl" if sdxl else "sd15"
    src.arch_why = f"the GUI's model type: sdxl = {str(sdxl).lower()}" + ("" if sdxl else " (train_network.py)")
    if anima or lora_type == "Anima":
        src.arch, src.arch_why = "anima", "the GUI's Anima checkbox (anima_train_network.py)"
        _gui_anima(d, a, src)
    if take("v2", False):
        a["v2"] = True

    epochs = K["train.epochs"]
    epoch = int(_num(take("epoch", 1)) or 1)
    steps = K["train.max_steps"]
    mte, mts = _num(take(epochs, "")), _num(take(steps, ""))
    if mte:
        a[epochs] = int(mte)
    elif mts:
        a[steps] = int(mts)
    else:
        a[epochs] = epoch
        src.notes.append(f"epoch = {epoch}: the GUI turns it into max_train_steps from its folder count; "
                         f"lorafw trains {epoch} epochs")
    if "max_resolution" in d:
        a[K["dataset.resolution"]] = take("max_resolution")
    warm, warm_steps = _num(take("lr_warmup", 0)), _num(take("lr_warmup_steps", 0))
    if warm_steps > 0:
        a["lr_warmup_steps"] = int(warm_steps)
    elif warm:
        a["lr_warmup_steps"] = warm / 100.0  # a fraction of the run's steps, as the GUI computes it
    cycles = take(K["scheduler.num_cycles"], "")
    a[K["scheduler.num_cycles"]] = int(_num(cycles)) if cycles not in ("", None) else epoch  # the GUI's rule
    power = take("lr_scheduler_power", "")
    if power not in ("", None):
        a["lr_scheduler_power"] = _num(power)
    if d.get("lr_scheduler_type") in ("", None):
        d.pop("lr_scheduler_type", None)
    a["optimizer_type"] = take("optimizer", "AdamW")
    for k in ("optimizer_args", "lr_scheduler_args"):
        if k in d:
            a[k] = items_of(take(k), optimizer=k == "optimizer_args")

    # noise: the GUI passes the offset or the multires settings, as noise_offset_type says
    kind = take("noise_offset_type", "Original")
    original = (K["train.noise_offset"], K["train.adaptive_noise_scale"], K["train.noise_offset_random_strength"])
    multires = (K["train.multires_noise_iterations"], K["train.multires_noise_discount"])
    for k in original + multires:
        if k not in d:
            continue
        v = take(k)
        if (k in original) == (kind == "Original"):
            if v not in ("", None, 0, 0.0, False) or k == K["train.multires_noise_discount"]:
                a[k] = _num(v) if not isinstance(v, bool) else v
        else:
            src.no_effect.append(Problem(k, v, f"noise_offset_type = {kind}: the GUI does not pass it"))

    attn = take("xformers", "none")
    if attn is True or attn == "xformers":
        a["xformers"] = True
    elif attn == "sdpa":
        a["sdpa"] = True
    if take("sdxl_no_half_vae", False) and sdxl:
        a[K["train.no_half_vae"]] = True
    if take("sdxl_cache_text_encoder_outputs", False) and sdxl:
        a[K["dataset.cache_text_encoder_outputs"]] = True
    te_key, unet_key = K["optimizer.text_encoder_lr"], K["optimizer.unet_lr"]
    te, unet = take(te_key, None), take(unet_key, None)
    if te not in ("", None):
        a[te_key] = _num(te)
        if _num(te) == 0:
            a["network_train_unet_only"] = True
    if unet not in ("", None):
        if _num(unet) == 0:
            a["network_train_text_encoder_only"] = True
            a[unet_key] = 0.0
        else:
            a[unet_key] = _num(unet)
    stop_te = take("stop_text_encoder_training", 0)
    if _num(stop_te):
        src.no_effect.append(Problem("stop_text_encoder_training", stop_te, "the GUI ignores it ('not yet supported')"))
    take("stop_text_encoder_training_pct", None)
    for k in GUI_ZERO_UNSET:  # "0 means off" values the GUI leaves out
        if k in d:
            v = take(k)
            if _num(v):
                a[k] = int(_num(v)) if float(_num(v)).is_integer() and k != K["train.min_snr_gamma"] else _num(v)
    for k in GUI_INTEGERS:
        if d.get(k) not in ("", None):
            a[k] = int(_num(take(k)))
    if K["sample.prompt_file"] in d:
        prompts = take(K["sample.prompt_file"])
        if prompts:
            a["sample_prompt_lines"] = [ln.strip() for ln in str(prompts).splitlines() if ln.strip()]

    _gui_network(lora_type, d, a, src)

    for k in ("lora_network_weights", K["network.init_weights"]):
        v = take(k, "")
        if v:
            a[K["network.init_weights"]] = v
    extra = take("additional_parameters", "")
    for k, v in d.items():  # the rest keep sd-scripts' names (the GUI passes them as they are)
        if k in GUI_ONLY:
            src.no_effect.append(Problem(k, v, GUI_ONLY[k] or "not a training setting"))
        elif v not in ("", None):
            a[k] = v
    if extra:
        a.update(_additional(str(extra), src))
    return src


# what each LoRA_type passes as network_args (kohya_gui/lora_gui.py); the others are UI state for that type
_LYCORIS = {
    "LyCORIS/LoCon": ("locon", ["conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "bypass_mode", "dora_wd",
                                "module_dropout", "use_scalar", "rank_dropout_scale", "train_norm"]),
    "LoCon": ("locon", ["conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "bypass_mode", "dora_wd",
                        "module_dropout", "use_scalar", "rank_dropout_scale", "train_norm"]),
    "LyCORIS/LoHa": ("loha", ["conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "bypass_mode", "dora_wd",
                              "module_dropout", "use_scalar", "rank_dropout_scale", "train_norm"]),
    "LyCORIS/LoKr": ("lokr", ["conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "bypass_mode", "dora_wd",
                              "module_dropout", "factor", "use_cp", "use_scalar", "decompose_both",
                              "rank_dropout_scale", "train_norm"]),
    "LyCORIS/iA3": ("ia3", ["conv_dim", "conv_alpha", "train_on_input"]),
    "LyCORIS/GLoRA": ("glora", ["conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "module_dropout",
                                "rank_dropout_scale", "train_norm"]),
    "LyCORIS/DyLoRA": ("dylora", ["conv_dim", "conv_alpha", "use_tucker", "unit", "rank_dropout", "module_dropout",
                                  "train_norm"]),
    "LyCORIS/BOFT": ("boft", ["conv_dim", "conv_alpha", "module_dropout", "use_tucker", "rank_dropout",
                              "rank_dropout_scale", "train_norm"]),
    "LyCORIS/Diag-OFT": ("diag-oft", ["conv_dim", "conv_alpha", "module_dropout", "use_tucker", "rank_dropout",
                                      "rank_dropout_scale", "constrain", "rescaled", "train_norm"]),
    "LyCORIS/Native Fine-Tuning": ("full", ["rank_dropout", "module_dropout", "rank_dropout_scale", "train_norm"]),
}
_KOHYA_BLOCKS = ["down_lr_weight", "mid_lr_weight", "up_lr_weight", "block_lr_zero_threshold", "block_dims",
                 "block_alphas", "conv_block_dims", "conv_block_alphas", "rank_dropout", "module_dropout"]
_NETWORK_UI = set(_KOHYA_BLOCKS) | {"conv_dim", "conv_alpha", "use_tucker", "bypass_mode", "dora_wd", "use_scalar",
                                    "rank_dropout_scale", "train_norm", "factor", "use_cp", "decompose_both",
                                    "train_on_input", "unit", "constrain", "rescaled", "LyCORIS_preset",
                                    "conv_dims", "conv_alphas", "loraplus_lr_ratio", "loraplus_unet_lr_ratio",
                                    "loraplus_text_encoder_lr_ratio"}
_RENAME = {"constrain": "constraint", "unit": "block_size"}


def _gui_network(lora_type: str, d: dict[str, Any], a: dict[str, Any], src: Source) -> None:
    args: list[str] = []
    preset = d.pop("LyCORIS_preset", "full")
    if lora_type in _LYCORIS:
        algo, keys = _LYCORIS[lora_type]
        a["network_module"] = "lycoris.kohya"
        args.append(f"preset={preset or 'full'}")
        args += [f"{_RENAME.get(k, k)}={d.pop(k)}" for k in keys if k in d]
        args.append(f"algo={algo}")
    elif lora_type in ("Standard", "Kohya LoCon", "LoRA-FA", "Kohya DyLoRA"):
        a["network_module"] = {"LoRA-FA": "networks.lora_fa", "Kohya DyLoRA": "networks.dylora"}.get(lora_type, "networks.lora")
        if lora_type in ("Kohya LoCon", "Kohya DyLoRA"):
            args += [f"{k}={d.pop(k)}" for k in ("conv_dim", "conv_alpha") if k in d]
        for k in _KOHYA_BLOCKS + (["unit"] if lora_type == "Kohya DyLoRA" else []):
            v = d.pop(k, None)
            if v not in (None, "", 0, 0.0, "0"):
                args.append(f"{k}={v}")
    elif lora_type == "Anima" or src.arch == "anima":
        a["network_module"] = ANIMA_NETWORK  # networks.lora_anima reads none of the SD block settings
    elif lora_type in ("Kohya LoHa", "Kohya LoKr"):
        a["network_module"] = "networks.loha" if lora_type == "Kohya LoHa" else "networks.lokr"
        for k in ("conv_dim", "conv_alpha", "use_tucker", "rank_dropout", "module_dropout") + (
                ("factor",) if lora_type == "Kohya LoKr" else ()):
            v = d.pop(k, None)
            if v not in (None, "", 0, 0.0, False):
                args.append(f"{k}={v}")
    elif not any(p.key == "LoRA_type" for p in src.problems):
        src.problems.append(Problem("LoRA_type", lora_type, "a LoRA type this importer does not know"))
    for k in ("loraplus_lr_ratio", "loraplus_unet_lr_ratio", "loraplus_text_encoder_lr_ratio"):
        v = d.pop(k, None)
        if _num(v):
            args.append(f"{k}={v}")
    for k in sorted(_NETWORK_UI & set(d)):
        src.no_effect.append(Problem(k, d.pop(k), f"not used by LoRA_type = {lora_type}"))
    if args:
        a["network_args"] = args


# the GUI's Anima accordion (kohya_gui/class_anima.py): `anima_X` in the JSON is sd-scripts' `X`
GUI_ANIMA = tuple(K[k] for k in ("base_model.text_encoder", "base_model.vae", "base_model.llm_adapter",
                                  "train.discrete_flow_shift", "train.timestep_sampling", "train.sigmoid_scale",
                                  "dataset.cache_text_encoder_outputs")) + (
    "t5_tokenizer_path", "qwen3_max_token_length", "t5_max_token_length", "attn_mode", "split_attn", "vae_chunk_size",
    "vae_disable_cache", "cache_text_encoder_outputs_to_disk", "unsloth_offload_checkpointing")


def _gui_anima(d: dict[str, Any], a: dict[str, Any], src: Source) -> None:
    """The Anima accordion's values under sd-scripts' names; empty paths and a 0 chunk size are left out, as the GUI
    leaves them off the command line."""
    for name in GUI_ANIMA:
        v = d.pop(f"anima_{name}", None)
        if v in (None, "") or (name == "vae_chunk_size" and not _num(v)):
            continue
        a[name] = v
    vae = K["base_model.vae"]
    if a.get(vae) and d.get(vae) not in (None, "", a[vae]):
        src.no_effect.append(Problem(vae, d.pop(vae), "the Anima accordion's VAE takes its place"))


def _additional(text: str, src: Source) -> dict[str, Any]:
    """The GUI's free-text `additional_parameters` (appended to the command line) → {argument: value}."""
    out: dict[str, Any] = {}
    try:
        words = shlex.split(text)
    except ValueError as e:
        src.problems.append(Problem("additional_parameters", text, f"cannot be split as a command line ({e})"))
        return out
    key: str | None = None
    for w in words:
        if w.startswith("--"):
            name, eq, value = w[2:].partition("=")
            if eq:
                out[name], key = value, None
            else:
                out[name], key = True, name
        elif key is not None:
            out[key] = w if out[key] is True else (out[key] if isinstance(out[key], list) else [out[key]]) + [w]
        else:
            src.problems.append(Problem("additional_parameters", w, "a word that belongs to no --option"))
    return out
