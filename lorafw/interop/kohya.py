"""lorafw runs → kohya sd-scripts TOML files (`lorafw export`). Pure functions over a spec.

Export writes the kohya pair that repeats a run in sd-scripts, plus a [lorafw] section (sd-scripts
ignores unknown keys) holding what kohya has no key for, so import(export(spec)) is the same spec.
Import lives in dialects.py (files → kohya arguments) and classify.py (kohya arguments → lorafw keys).
"""

from __future__ import annotations

from typing import Any, Callable

from lorafw.config.prediction import FLOW_ONLY
from lorafw.config.schema import iter_keys, kohya_keys, kohya_names, kohya_of, value_at
from lorafw.config.spec import NetworkSpec, RunSpec
from lorafw.data.buckets import RESIZE_INTERPOLATION
from lorafw.errors import LorafwError
from lorafw.models.load import inspect_base_model
from lorafw.paths import expand

OPTIMIZER_EXPORT = {"adamw": "AdamW", "adamw8bit": "AdamW8bit", "prodigy": "Prodigy", "came": "came_pytorch.CAME"}
REX_CLASS = "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts"
KEYS = kohya_keys(RunSpec)  # lorafw key → its declaration, for every key with a kohya name (config/spec.py)
DEFAULTS = {k.path: k.default for k in iter_keys(RunSpec)}
NULLS = "null"  # the [lorafw] section's list of keys set to null (TOML has no null)
K = kohya_of(RunSpec)  # lorafw key → its sd-scripts argument name
# kohya key → lorafw key, for values that carry over as they are: read from the schema's `kohya=` names
# (lorafw/config/spec.py); the keys below have values that need translating (classify.Classifier.translated).
TRANSLATED = {K[k] for k in ("dataset.resolution", "train.mixed_precision", "sample.sampler")}
DIRECT = {k: v for k, v in kohya_names(RunSpec).items() if k not in TRANSLATED}


# -- export ------------------------------------------------------------------------------------------
# keys with a kohya name that the export leaves out, and why; every key with a kohya name that export_kohya does not
# place itself goes into [training_arguments] under that name, so a new `key(kohya=...)` is exported without code here
NOT_EXPORTED = {"sample.every_n_steps": "previews only: the export renders them per epoch (sample_every_n_epochs)",
                "optimizer.llm_adapter_lr": "anima_train_network.py never reads llm_adapter_lr (anima_train.py does): "
                                            "an Anima export writes it as network_args network_reg_lrs"}
# rectified flow's keys: sd-scripts' Anima trainer reads them; train_network.py / sdxl_train_network.py have none
FLOW = tuple(f"train.{k}" for k in FLOW_ONLY)
ANIMA_ONLY = FLOW + ("base_model.text_encoder", "base_model.llm_adapter")  # exported for Anima runs only
ANIMA_SCRIPT, ANIMA_NETWORK = "anima_train_network.py", "networks.lora_anima"
ANIMA_ALGOS = ("lora",)  # networks.lora_anima trains LoRA (its LoHa/LoKr are experimental and named otherwise)
LLM_ADAPTER_PATTERN = ".*llm_adapter.*"  # network_reg_lrs' pattern for the LLM adapter (sd-scripts' doc)


def script_of(spec: RunSpec) -> str:
    """The sd-scripts script that trains what `spec` trains."""
    return {"sdxl": "sdxl_train_network.py", "anima": ANIMA_SCRIPT}.get(spec.base_model.arch, "train_network.py")


class _Placed:
    """kohya arguments by lorafw key, remembering which keys export_kohya has placed (the rest go in as they are)."""

    def __init__(self, spec: Any) -> None:
        self.spec = spec
        self.keys: set[str] = set()  # lorafw keys placed so far

    def args(self, *paths: str, when: Callable[[Any], bool] = lambda v: v is not None) -> dict[str, Any]:
        """{kohya name: value} of each key whose value passes `when` (TOML has no null: unset ones left out)."""
        self.keys.update(paths)
        return {K[p]: v for p in paths if when(v := value_at(self.spec, p))}

    def name(self, path: str) -> str:
        """The kohya name of a key whose value the caller writes itself."""
        self.keys.add(path)
        return K[path]

    def rest(self) -> dict[str, Any]:
        """Every key with a kohya name not placed yet (nor in NOT_EXPORTED), in declaration order."""
        return self.args(*(p for p in KEYS if p not in self.keys and p not in NOT_EXPORTED))


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
    return {**({K["train.clip_skip"]: clip_skip} if clip_skip > 1 else {}),
            **({K["train.max_token_length"]: max_token_length} if max_token_length != 75 else {})}


def export_kohya(spec: Any, total_steps: int | None = None, dataset_dirs: list[tuple[str, int, dict[str, Any]]] | None = None,
                 precision: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """A spec → (config_file dict, dataset_config dict) for sd-scripts, with a [lorafw] section for the rest.
    `precision`: what the run resolved train.mixed_precision=auto to, when it ran."""
    s = spec
    put = _Placed(s)
    anima = s.base_model.arch == "anima"
    if anima and (s.network.algo not in ANIMA_ALGOS or s.network.dora_wd):
        raise LorafwError(f"lorafw export: sd-scripts trains Anima LoRAs with {ANIMA_NETWORK}, which has no "
                          f"{'DoRA' if s.network.dora_wd else s.network.algo}; export a network=lora run")
    if not anima and s.train.prediction_type == "flow":
        raise LorafwError("lorafw export: sd-scripts has no rectified-flow SDXL trainer (sdxl_train_network.py trains "
                          "ε or v only; sd-scripts#2278), so this run cannot be exported; lorafw trains it as it is")
    net_args = network_args_of(s.network) if not anima else anima_network_args(s)
    if not anima:
        put.keys.update(ANIMA_ONLY)
    opt_args = [f"weight_decay={s.optimizer.weight_decay!r}", f"betas={literal(s.optimizer.betas)}"]
    opt_args += [f"{k}={literal(val)}" for k, val in s.optimizer.args.items()]
    compiled = {put.name("train.compile"): True, put.name("train.compile_backend"): s.train.compile_backend}
    config: dict[str, Any] = {
        "model_arguments": {**put.args("base_model.path"),
                            **({} if anima else {"v2": False, "v_parameterization": _v_parameterization(s)}),
                            **put.args("base_model.vae", "base_model.text_encoder", "base_model.llm_adapter",
                                       when=bool)},
        "network_arguments": {"network_module": ANIMA_NETWORK if anima else
                              "lycoris.kohya" if is_lycoris(s.network) else "networks.lora",
                              **put.args("network.dim", "network.alpha", "network.dropout"),
                              **put.args("network.init_weights", "network.dim_from_weights", when=bool),
                              **({"network_args": net_args} if net_args else {}),
                              **({"network_train_unet_only": True} if s.optimizer.text_encoder_lr == 0 else {})},
        "optimizer_arguments": {"optimizer_type": OPTIMIZER_EXPORT.get(s.optimizer.name, s.optimizer.name), "optimizer_args": opt_args,
                                **put.args("optimizer.lr", "optimizer.unet_lr", "optimizer.text_encoder_lr",
                                           "train.max_grad_norm")},
        "training_arguments": {
            **put.args("seed", "train.epochs", "train.batch_size", "train.gradient_accumulation_steps",
                       "train.gradient_checkpointing"),
            put.name("train.mixed_precision"): kohya_mixed_precision(s.train.mixed_precision, precision),
            **put.args("train.full_bf16", "train.full_fp16", "train.no_half_vae"),
            **({} if anima else kohya_text_window(s.train.clip_skip, s.train.max_token_length)),
            **put.args("train.noise_offset"),
            "sdpa": s.train.attention == "sdpa", "xformers": s.train.attention == "xformers",
            **put.args("dataset.cache_latents", "dataset.vae_batch_size"), "resize_interpolation": RESIZE_INTERPOLATION,
            **put.args("dataset.workers", "dataset.cache_latents_to_disk", "dataset.cache_text_encoder_outputs",
                       "dataset.prior_loss_weight", "dataset.masked_loss", "train.min_snr_gamma"),
        },
        "saving_arguments": {put.name("output.dir"): s.output.dir or "", put.name("output.name"): s.output.name or "lora",
                             "save_model_as": "safetensors",
                             **put.args("output.save_precision", "output.save_every_n_epochs", "output.comment")},
    }
    put.keys.update(("train.clip_skip", "train.max_token_length"))  # kohya_text_window
    sched = s.scheduler
    o = config["optimizer_arguments"]
    cycles = put.name("scheduler.num_cycles")
    put.keys.add("scheduler.warmup_ratio")  # written as lr_warmup_steps, which sd-scripts reads as a ratio below 1
    if sched.type:  # kohya builds the class with lr_scheduler_args only
        o["lr_scheduler_type"] = sched.type
        o["lr_scheduler_args"] = [f"{k}={literal(v)}" for k, v in sched.args.items()]
    elif sched.name == "rex":
        o["lr_scheduler_type"] = REX_CLASS
        rex_args = [f"min_lr={sched.min_lr:g}", f"gamma={sched.gamma:g}", f"d={sched.d:g}"]
        if total_steps:
            n = sched.num_cycles or 1
            rex_args += [f"first_cycle_max_steps={total_steps // n}",
                         f"warmup_steps={round(total_steps * (sched.warmup_ratio or 0)) // n}"]
        o["lr_scheduler_args"] = rex_args
    else:
        o["lr_scheduler"] = sched.name
        if sched.num_cycles is not None:
            o[cycles] = sched.num_cycles
        if sched.warmup_ratio:
            o["lr_warmup_steps"] = sched.warmup_ratio  # sd-scripts reads a value below 1 as a ratio
        elif sched.warmup_steps:
            o["lr_warmup_steps"] = sched.warmup_steps
        if sched.power is not None:
            o["lr_scheduler_power"] = sched.power
    sample = put.args("sample.prompt_file", "sample.sampler", "sample.every_n_epochs")
    if s.sample.prompt_file:
        config["sample_prompt_arguments"] = sample
    dataset_args = put.args("dataset.root", "dataset.reg_root", when=bool)
    if s.dataset.root:
        config["dataset_arguments"] = dataset_args
    general = put.args("dataset.shuffle_caption", "dataset.keep_tokens", "dataset.caption_extension", "dataset.flip_aug",
                       "dataset.random_crop", "dataset.caption_dropout_rate", "dataset.caption_tag_dropout_rate")
    general |= put.args("dataset.keep_tokens_separator", when=bool)
    # a dataset config takes N or [W, H] (config_util's scalar_or_twodim; its "W,H" string is --resolution's form)
    ds: dict[str, Any] = {put.name("dataset.resolution"): s.dataset.resolution if isinstance(s.dataset.resolution, int)
                          else list(s.dataset.size),
                          KEYS["train.batch_size"].kohya[1]: s.train.batch_size,  # the dataset config's name for it
                          **put.args("dataset.enable_bucket", "dataset.min_bucket_reso", "dataset.max_bucket_reso",
                                     "dataset.bucket_reso_steps", "dataset.bucket_no_upscale")}
    ds["subsets"] = [{"image_dir": path, "num_repeats": repeats, **extra} for path, repeats, extra in dataset_dirs or []]
    config["training_arguments"] |= put.rest()  # the objective's settings, and any key added since
    if s.train.compile:
        config["training_arguments"] |= compiled
    dataset_config = {"general": general, "datasets": [ds]}
    config["lorafw"] = lorafw_section(s)
    return config, dataset_config


def anima_network_args(s: RunSpec) -> list[str]:
    """networks/lora_anima.py's network_args for an Anima run: the LLM adapter's adapters, at their own learning
    rate (sd-scripts' per-module rates: network_reg_lrs); then the fields kohya's LoRA shares (dropouts, LoRA+)."""
    out = [a for a in network_args_of(s.network) if a.split("=", 1)[0] in ("rank_dropout", "module_dropout",
                                                                            "loraplus_lr_ratio",
                                                                            "loraplus_unet_lr_ratio",
                                                                            "loraplus_text_encoder_lr_ratio")]
    if s.network.train_llm_adapter:
        out.append("train_llm_adapter=True")
        if s.optimizer.llm_adapter_lr is not None:
            out.append(f"network_reg_lrs={LLM_ADAPTER_PATTERN}={s.optimizer.llm_adapter_lr:g}")
    return out


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
        if f.name == "algo" or f"network.{f.name}" in KEYS:  # sd-scripts' own arguments (network_dim, …)
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
    TOML has no null, so unset values are left out (they come back unset). What an earlier import left behind
    (`imported`) is not the run's: the import of this file records its own."""
    out: dict[str, Any] = {}
    nulls = [k for k, v in dotted(spec.to_dict()).items() if v is None and DEFAULTS.get(k) is not None]
    for k, v in dotted(spec.to_dict()).items():
        if k in ("resume", "output.dir") or k.startswith("imported.") or v is None or v == {}:
            continue
        if isinstance(v, list):
            v = [{a: b for a, b in x.items() if b is not None} if isinstance(x, dict) else x for x in v]
        out[k] = v
    for g, option in groups_of(spec).items():
        out[f"groups.{g}"] = option
    if nulls:  # set to null where the default is not (train.epochs=null: the run counted in steps)
        out[NULLS] = nulls
    return out


def groups_of(spec: Any) -> dict[str, str]:
    net = "dora" if spec.network.algo == "locon" and spec.network.dora_wd else spec.network.algo
    sched = {"cosine_with_restarts": "cosine_restarts"}.get(spec.scheduler.name, spec.scheduler.name)
    return {"base_model": spec.base_model.arch, "network": net, "optimizer": spec.optimizer.name, "scheduler": sched}
