"""kohya sd-scripts and GUI-trainer TOML files ↔ lorafw recipes. Pure functions over parsed TOML.

Two layouts come in (FORMATS.md): sd-scripts' `--config_file` (flat keys in any sections) with its
`--dataset_config` ([general], [[datasets]], [[datasets.subsets]]), and the GUI trainer's saved TOML
([[subsets]], [general_args.args], [network_args.args.network_args], [optimizer_args.args.optimizer_args]
…, where optimizer arguments are strings such as betas = "0.9,0.99"). Both become one flat kohya dict
plus subsets, then lorafw settings. Every key is mapped, known to have no effect in lorafw, or listed
as not understood — nothing is dropped silently.

Export writes the kohya pair that repeats a run in sd-scripts, plus a [lorafw] section (sd-scripts
ignores unknown keys) holding what kohya has no key for, so import(export(spec)) is the same spec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorafw.config.schema import kohya_names
from lorafw.config.spec import RunSpec

# optimizer_type (any case, class paths too) → lorafw optimizer
OPTIMIZER_NAMES = {
    "adamw": "adamw", "torch.optim.adamw": "adamw",
    "adamw8bit": "adamw8bit", "bitsandbytes.optim.adamw8bit": "adamw8bit",
    "prodigy": "prodigy", "prodigyopt.prodigy": "prodigy",
    "came": "came", "came_pytorch.came": "came", "loraeasycustomoptimizer.came.came": "came",
}
OPTIMIZER_EXPORT = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "prodigy": "Prodigy", "came": "came_pytorch.CAME"}
REX_CLASS = "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts"
SCHEDULER_NAMES = {
    "constant": "constant", "constant_with_warmup": "constant_with_warmup", "cosine_with_restarts": "cosine_with_restarts",
    "rex": "rex", "rex_annealing_warm_restarts_(rawr)": "rex", REX_CLASS.lower(): "rex",
}
SAMPLERS = {"euler_a": "euler_a", "k_euler_a": "euler_a", "euler": "euler", "k_euler": "euler", "ddim": "ddim",
            "dpmsolver++": "dpmpp_2m", "dpmpp_2m": "dpmpp_2m", "k_dpm_2": None, "lms": "lms", "k_lms": "lms"}

# kohya key → lorafw key, for values that carry over as they are: read from the schema's `kohya=` names
# (lorafw/config/spec.py); the keys below have values that need translating, done in `to_lorafw`.
TRANSLATED = {"resolution", "mixed_precision", "sample_sampler"}
DIRECT = {k: v for k, v in kohya_names(RunSpec).items() if k not in TRANSLATED}
# Keys that mean nothing for lorafw (its behaviour is fixed, or the setting is about the other tool).
NO_EFFECT = {
    "save_model_as": "lorafw always writes .safetensors", "save_toml": "lorafw saves config.yaml and run.json",
    "persistent_data_loader_workers": "lorafw's loader threads cost nothing to start",
    "log_with": "lorafw writes TensorBoard and metrics.jsonl", "logging_dir": "see above", "log_prefix": "see above",
    "save_state": "lorafw always saves resumable state", "save_last_n_epochs_state": "state.pt is replaced each time",
    "sdxl": "the architecture comes from base_model", "network_module": "network.algo says it",
    "lowram": "", "mem_eff_attn": "", "sdpa": "train.attention=sdpa is the default", "xformers": "train.attention",
    "lr_warmup_steps": "read as scheduler.warmup_ratio",
    "network_train_unet_only": "optimizer.text_encoder_lr=0 says it", "network_train_text_encoder_only": "optimizer.unet_lr=0",
    "name": "", "train_mode": "", "wandb_api_key": "",
}


@dataclass
class Imported:
    """What a TOML said, as lorafw settings."""

    groups: dict[str, str] = field(default_factory=dict)  # base_model / network / optimizer / scheduler / dataset option
    values: dict[str, Any] = field(default_factory=dict)  # dotted lorafw key → value
    no_effect: dict[str, Any] = field(default_factory=dict)  # kohya key → value (and why, in NO_EFFECT)
    unknown: dict[str, Any] = field(default_factory=dict)  # kohya key → value lorafw does not understand
    notes: list[str] = field(default_factory=list)


def truthy(v: Any) -> bool:
    return v if isinstance(v, bool) else str(v).strip().lower() in ("true", "1", "yes", "on")


def number(v: Any) -> Any:
    """'0.1' → 0.1, '2' → 2, 'True' → True, '0.9,0.99' → [0.9, 0.99]; anything else unchanged."""
    if not isinstance(v, str):
        return v
    s = v.strip()
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    if s.lower() in ("none", "null"):
        return None
    if "," in s:
        return [number(x) for x in s.split(",")]
    for conv in (int, float):
        try:
            return conv(s)
        except ValueError:
            continue
    return s


def kv_list(items: Any) -> dict[str, Any]:
    """kohya's ["weight_decay=0.1", "betas=0.9,0.99"] (or a dict, as the GUI writes) → {key: value}."""
    if isinstance(items, dict):
        return {k: number(v) for k, v in items.items()}
    if isinstance(items, str):
        items = items.split()
    out = {}
    for item in items or []:
        k, _, v = str(item).partition("=")
        out[k.strip()] = number(v)
    return out


def flatten_gui(doc: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """The GUI trainer's sections → (flat kohya keys, subsets, dataset-wide keys)."""
    flat: dict[str, Any] = {}
    dataset: dict[str, Any] = {}
    for section, body in doc.items():
        if section == "subsets" or not isinstance(body, dict):
            if section != "subsets":
                flat[section] = body
            continue
        for part, values in body.items():
            if not isinstance(values, dict):
                flat[part] = values
                continue
            for k, v in values.items():
                if k in ("network_args", "optimizer_args", "lr_scheduler_args") and isinstance(v, dict):
                    flat[k] = v
                else:
                    (dataset if part == "dataset_args" else flat)[k] = v
    return flat, list(doc.get("subsets", [])), dataset


def flatten_kohya(config: dict[str, Any], dataset_config: dict[str, Any] | None) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """sd-scripts' config file (keys in any sections) and dataset config → (flat keys, subsets, dataset-wide keys)."""
    flat: dict[str, Any] = {}
    for section, body in config.items():
        if isinstance(body, dict) and section != "lorafw":
            flat.update(body)
        elif section != "lorafw":
            flat[section] = body
    subsets: list[dict[str, Any]] = []
    dataset: dict[str, Any] = {}
    if dataset_config:
        dataset.update(dataset_config.get("general", {}))
        datasets = dataset_config.get("datasets", [])
        if len(datasets) > 1:
            dataset["__several_datasets__"] = len(datasets)
        for d in datasets[:1]:
            dataset.update({k: v for k, v in d.items() if k != "subsets"})
            subsets = list(d.get("subsets", []))
    return flat, subsets, dataset


def resolution(v: Any) -> tuple[int | None, str | None]:
    """768, "768", "768,768", [768, 768] → 768; a non-square resolution is not something lorafw does."""
    v = number(v)
    if isinstance(v, (list, tuple)):
        if len(v) == 2 and v[0] == v[1]:
            return int(v[0]), None
        return None, f"non-square resolution {v}: lorafw trains at resolution² area (buckets keep the shape); use the larger side"
    return int(v), None


def to_lorafw(flat: dict[str, Any], subsets: list[dict[str, Any]], dataset: dict[str, Any],
              extra: dict[str, Any] | None = None) -> Imported:
    """Flat kohya keys + subsets + dataset-wide keys → lorafw groups and values."""
    imp = Imported()
    keys = {**dataset, **flat}  # the dataset config's values apply to the dataset; flat ones are explicit overrides
    v = imp.values
    for k, val in keys.items():
        if k in DIRECT:
            v[DIRECT[k]] = number(val)
        elif k == "resolution":
            res, problem = resolution(val)
            if res is None:
                imp.unknown[k] = val
                imp.notes.append(problem or "")
            else:
                v["dataset.resolution"] = res
        elif k == "optimizer_type":
            name = OPTIMIZER_NAMES.get(str(val).lower())
            if name is None:
                imp.unknown[k] = val
                imp.notes.append(f"optimizer {val!r} is not one lorafw has (adamw, adamw8bit, prodigy, came)")
            else:
                imp.groups["optimizer"] = name
        elif k in ("lr_scheduler", "lr_scheduler_type"):
            name = SCHEDULER_NAMES.get(str(val).lower())
            if name is None:
                if k == "lr_scheduler_type" and not val:
                    continue
                imp.unknown[k] = val
                imp.notes.append(f"scheduler {val!r} is not one lorafw has (constant, constant_with_warmup, cosine_with_restarts, rex)")
            elif k == "lr_scheduler_type" or "scheduler" not in imp.groups:
                imp.groups["scheduler"] = name
        elif k == "optimizer_args":
            for ak, av in kv_list(val).items():
                if ak == "weight_decay":
                    v["optimizer.weight_decay"] = float(av)
                elif ak == "betas":
                    v["optimizer.betas"] = [float(b) for b in (av if isinstance(av, list) else [av])]
                else:
                    v[f"optimizer.args.{ak}"] = av
        elif k == "lr_scheduler_args":
            for ak, av in kv_list(val).items():
                if ak in ("min_lr", "gamma", "d"):
                    v[f"scheduler.{ak}"] = float(av)
                elif ak in ("first_cycle_max_steps", "warmup_steps", "cycle_multiplier"):
                    imp.no_effect[f"lr_scheduler_args.{ak}"] = av  # lorafw derives them from the step count
                else:
                    imp.unknown[f"lr_scheduler_args.{ak}"] = av
        elif k == "network_args":
            args = kv_list(val)
            algo = str(args.pop("algo", "lora")).lower()
            if algo not in ("lora", "locon"):
                imp.unknown["network_args.algo"] = algo
                imp.notes.append(f"LyCORIS algo {algo!r} is not one lorafw trains (lora, locon)")
            dora = truthy(args.pop("dora_wd", False))
            conv = {a: args.pop(a) for a in ("conv_dim", "conv_alpha") if a in args}
            if algo == "locon" or conv:
                imp.groups["network"] = "dora" if dora else "locon"
                v["network.algo"] = "locon"
                v.update({f"network.{a}": number(x) for a, x in conv.items()})
            elif dora:
                imp.groups["network"] = "lora"
                v["network.dora_wd"] = True
            for ak, av in args.items():
                if ak == "dropout":
                    v["network.dropout"] = float(av)
                else:
                    imp.unknown[f"network_args.{ak}"] = av
        elif k == "lr_warmup_steps":
            w = number(val)
            if isinstance(w, float) and w < 1:
                v["scheduler.warmup_ratio"] = w
            elif w:
                imp.unknown[k] = val
                imp.notes.append("lr_warmup_steps as a step count: lorafw takes a ratio (scheduler.warmup_ratio)")
        elif k == "mixed_precision":
            v["train.mixed_precision"] = {"no": "no", "fp16": "fp16", "bf16": "bf16"}.get(str(val), "auto")
        elif k in ("xformers", "sdpa", "mem_eff_attn"):
            if k == "xformers" and truthy(val):
                v["train.attention"] = "xformers"
            imp.no_effect[k] = val
        elif k == "network_train_unet_only" and truthy(val):
            v["optimizer.text_encoder_lr"] = 0.0
            imp.no_effect[k] = val
        elif k == "network_train_text_encoder_only" and truthy(val):
            v["optimizer.unet_lr"] = 0.0
            imp.no_effect[k] = val
        elif k == "sdxl":
            if truthy(val):
                imp.groups["base_model"] = "sdxl"
            imp.no_effect[k] = val
        elif k == "network_module":
            if "lycoris" not in str(val) and "networks.lora" not in str(val):
                imp.unknown[k] = val
            else:
                imp.no_effect[k] = val
        elif k == "sample_sampler":
            s = SAMPLERS.get(str(val).lower())
            if s:
                v["sample.sampler"] = s
            else:
                imp.unknown[k] = val
        elif k in NO_EFFECT:
            imp.no_effect[k] = val
        elif k == "v_parameterization":
            if truthy(val):
                v["train.prediction_type"] = "v_prediction"
            else:
                imp.no_effect[k] = val  # false: lorafw's train.prediction_type=auto reads the checkpoint
        elif k == "v2" and not truthy(val):
            imp.no_effect[k] = val
        else:
            imp.unknown[k] = val
    if "train.max_token_length" in v and v["train.max_token_length"] is None:
        v["train.max_token_length"] = 75
    if subsets:
        folders = []
        for i, sub in enumerate(subsets):
            entry: dict[str, Any] = {}
            for sk, sv in sub.items():
                target = {"image_dir": "path", "num_repeats": "repeats", "keep_tokens": "keep_tokens", "is_reg": "is_reg",
                          "caption_extension": "caption_extension", "shuffle_caption": "shuffle_caption",
                          "flip_aug": "flip_aug", "caption_dropout_rate": "caption_dropout_rate",
                          "caption_tag_dropout_rate": "caption_tag_dropout_rate", "keep_tokens_separator": "keep_tokens_separator",
                          "conditioning_data_dir": "mask_dir"}.get(sk)
                if target:
                    entry[target] = number(sv) if target not in ("path", "caption_extension", "keep_tokens_separator", "mask_dir") else sv
                elif sk in ("name",) or (sk in ("random_crop", "color_aug", "face_crop_aug_range", "alpha_mask") and not truthy(sv) and sv is not None):
                    imp.no_effect[f"subsets[{i}].{sk}"] = sv
                else:
                    imp.unknown[f"subsets[{i}].{sk}"] = sv
            folders.append(entry)
        v["dataset.folders"] = folders
        v.pop("dataset.root", None) if not _root_matches(v.get("dataset.root"), folders) else v.pop("dataset.folders")
    if "__several_datasets__" in dataset:
        imp.notes.append(f"{dataset['__several_datasets__']} [[datasets]] blocks: only the first was imported")
        imp.no_effect.pop("__several_datasets__", None)
        imp.unknown.pop("__several_datasets__", None)
    for key, value in (extra or {}).items():  # a [lorafw] section (written by `lorafw export`) is exact
        if key.startswith("groups."):
            imp.groups[key[len("groups."):]] = value
        else:
            v[key] = value
    return imp


def _root_matches(root: Any, folders: list[dict[str, Any]]) -> bool:
    """Subsets that are exactly a root's REPEATS_NAME folders collapse back to dataset.root (export's round trip)."""
    if not root:
        return False
    from pathlib import Path

    from lorafw.data.folders import parse_folder_name

    want = []
    r = Path(str(root))
    if r.is_dir():
        for d in sorted(p for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")):
            reps, _ = parse_folder_name(d.name)
            if reps is not None:
                want.append((str(d), reps))
    have = [(str(Path(f.get("path", ""))), f.get("repeats")) for f in folders]
    return bool(want) and sorted(have) == sorted(want) and all(set(f) <= {"path", "repeats"} for f in folders)


def recipe_yaml(imp: Imported, source: str) -> str:
    """A lorafw recipe file: `# @package _global_`, group overrides, then the values (nested YAML)."""
    from omegaconf import OmegaConf

    nested: dict[str, Any] = {}
    for key, value in sorted(imp.values.items()):
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    lines = ["# @package _global_", f"# Imported by `lorafw import` from {source}.",
             "# Run it: lorafw +recipe=THIS_FILE.yaml   (print it resolved: lorafw +recipe=THIS_FILE.yaml --cfg job)"]
    if imp.groups:
        lines.append("defaults:")
        lines += [f"  - override /{g}: {o}" for g, o in sorted(imp.groups.items())]
    body = OmegaConf.to_yaml(OmegaConf.create(nested)) if nested else ""
    text = "\n".join(lines) + "\n\n" + body
    tail = []
    if imp.no_effect:
        tail.append("# Settings with no effect in lorafw:")
        tail += [f"#   {k} = {v!r}" + (f"  ({NO_EFFECT[k]})" if NO_EFFECT.get(k) else "") for k, v in imp.no_effect.items()]
    if imp.unknown:
        tail.append("# Settings lorafw did not understand (not imported):")
        tail += [f"#   {k} = {v!r}" for k, v in imp.unknown.items()]
    tail += [f"# note: {n}" for n in imp.notes if n]
    return text + ("\n" + "\n".join(tail) + "\n" if tail else "")


# -- export ------------------------------------------------------------------------------------------
def export_kohya(spec: Any, total_steps: int | None = None, dataset_dirs: list[tuple[str, int, dict[str, Any]]] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A spec → (config_file dict, dataset_config dict) for sd-scripts, with a [lorafw] section for the rest."""
    s = spec
    net_args = []
    if s.network.algo == "locon" or s.network.dora_wd:
        net_args.append(f"algo={s.network.algo}")
        if s.network.conv_dim is not None:
            net_args += [f"conv_dim={s.network.conv_dim}", f"conv_alpha={s.network.conv_alpha:g}"]
        if s.network.dora_wd:
            net_args.append("dora_wd=True")
    opt_args = [f"weight_decay={s.optimizer.weight_decay:g}", "betas=" + ",".join(f"{b:g}" for b in s.optimizer.betas)]
    for k, val in s.optimizer.args.items():
        opt_args.append(f"{k}={','.join(f'{x:g}' for x in val) if isinstance(val, (list, tuple)) else val}")
    config: dict[str, Any] = {
        "model_arguments": {"pretrained_model_name_or_path": s.base_model.path, "v2": False,
                            "v_parameterization": _v_parameterization(s),
                            **({"vae": s.base_model.vae} if s.base_model.vae else {})},
        "network_arguments": {"network_module": "lycoris.kohya" if net_args else "networks.lora", "network_dim": s.network.dim,
                              "network_alpha": s.network.alpha, "network_dropout": s.network.dropout,
                              **({"network_args": net_args} if net_args else {}),
                              **({"network_train_unet_only": True} if s.optimizer.text_encoder_lr == 0 else {})},
        "optimizer_arguments": {"optimizer_type": OPTIMIZER_EXPORT[s.optimizer.name], "optimizer_args": opt_args,
                                "learning_rate": s.optimizer.lr, "unet_lr": s.optimizer.unet_lr,
                                "text_encoder_lr": s.optimizer.text_encoder_lr, "max_grad_norm": s.train.max_grad_norm},
        "training_arguments": {
            "seed": s.seed, "max_train_epochs": s.train.epochs, "train_batch_size": s.train.batch_size,
            "gradient_accumulation_steps": s.train.gradient_accumulation_steps,
            "gradient_checkpointing": s.train.gradient_checkpointing, "mixed_precision": "bf16" if s.train.mixed_precision == "bf16" else "fp16",
            "full_bf16": s.train.full_bf16, "no_half_vae": s.train.no_half_vae, "clip_skip": s.train.clip_skip,
            "max_token_length": s.train.max_token_length, "noise_offset": s.train.noise_offset,
            "sdpa": s.train.attention == "sdpa", "xformers": s.train.attention == "xformers",
            "cache_latents": s.dataset.cache_latents, "vae_batch_size": s.dataset.vae_batch_size,
            **({"max_data_loader_n_workers": s.dataset.workers} if s.dataset.workers is not None else {}),
            "cache_latents_to_disk": s.dataset.cache_latents_to_disk,
            "cache_text_encoder_outputs": s.dataset.cache_text_encoder_outputs, "prior_loss_weight": s.dataset.prior_loss_weight,
            "masked_loss": s.dataset.masked_loss,
            **({"min_snr_gamma": s.train.min_snr_gamma} if s.train.min_snr_gamma else {}),
            **objective_args(s),
            **({"torch_compile": True, "dynamo_backend": s.train.compile_backend} if s.train.compile else {}),
        },
        "saving_arguments": {"output_dir": s.output.dir or "", "output_name": s.output.name or "lora", "save_model_as": "safetensors",
                             "save_precision": s.output.save_precision, "save_every_n_epochs": s.output.save_every_n_epochs},
    }
    sched = s.scheduler
    o = config["optimizer_arguments"]
    if sched.name == "rex":
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
            o["lr_warmup_steps"] = sched.warmup_ratio
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


def dotted(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} → {"a.b": 1}; lists stay lists."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


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
    from lorafw.errors import LorafwError
    from lorafw.paths import expand

    try:
        from lorafw.models.load import inspect_base_model

        return inspect_base_model(expand(s.base_model.path)).prediction.prediction == "v_prediction"
    except (LorafwError, OSError):
        return False


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
