"""The run benchmarks/vs_kohya.py trains through both trainers: lorafw's overrides for it, and the table of
each setting as lorafw's spec and as the kohya TOML pair written by `lorafw export` have it (pure functions).
Two families: SD1.5 (train_network.py) and Anima (anima_train_network.py, `anima_run`).

The table is read from the files each trainer is given, not from what was asked for: a setting the exporter
got wrong shows up as a row whose values differ (marked ≠), and the benchmark says so before it times anything.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Callable

from lorafw.interop.kohya import dotted

PRECISIONS = {"fp32": "no", "bf16": "bf16"}  # --precision → lorafw's train.mixed_precision (= kohya's mixed_precision)


@dataclass(frozen=True)
class Run:
    """The reference run (issue 20): batch 2, LoRA 16/8 on the UNet and text encoder, AdamW, cached latents,
    clip_skip 2, 75 tokens, 4 steps per epoch, 2 epochs, 256 px. `arch` anima: see anima_run."""

    arch: str = "sd15"
    batch: int = 2
    dim: int = 16
    alpha: float = 8.0
    lr: float = 1e-4
    seed: int = 42
    clip_skip: int = 2
    steps_per_epoch: int = 4
    epochs: int = 2
    resolution: int = 256
    device: str = "auto"

    @property
    def images(self) -> int:
        return self.batch * self.steps_per_epoch  # one folder, 1 repeat: steps_per_epoch batches

    @property
    def steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def anima_run(steps_per_epoch: int = 4, epochs: int = 2, device: str = "auto") -> Run:
    """Issue 25's Anima run: 256 px, batch 2, LoRA 8/1 on the DiT's blocks (sd-scripts' lora_anima default targets,
    alpha 1 as its guide has it), latents and Qwen3's outputs cached (so the text encoder is not trained), AdamW,
    constant 1e-4. Qwen3 and T5 take 512 tokens (both trainers' fixed default)."""
    return Run(arch="anima", dim=8, alpha=1.0, clip_skip=1, steps_per_epoch=steps_per_epoch, epochs=epochs,
               device=device)


def lorafw_overrides(run: Run, model: str, data: str, precision: str, clip_skip: int, text_encoder: str | None = None,
                     vae: str | None = None) -> list[str]:
    """lorafw's key=value list for `run` (everything stated, so a default that changes cannot change the run).
    Anima: `model` is the DiT, `text_encoder` Qwen3's file, `vae` the VAE's; clip_skip does not apply."""
    if run.arch == "anima":
        if not (text_encoder and vae):
            raise ValueError("an Anima run needs the text encoder's and the VAE's files")
        family = [f"base_model.text_encoder={text_encoder}", f"base_model.vae={vae}",
                  "dataset.cache_text_encoder_outputs=true", "optimizer.text_encoder_lr=0",
                  "network.train_llm_adapter=false", "train.prediction_type=flow", "train.timestep_sampling=sigmoid", "train.sigmoid_scale=1.0", "train.discrete_flow_shift=1.0",
                  "train.weighting_scheme=uniform"]
    else:
        family = ["dataset.cache_text_encoder_outputs=false", f"train.clip_skip={clip_skip}",
                  "train.max_token_length=75"]
    return [
        f"base_model.path={model}", f"base_model.arch={run.arch}", *family, f"dataset.root={data}",
        f"dataset.resolution={run.resolution}", "dataset.enable_bucket=true", "dataset.min_bucket_reso=256",
        "dataset.max_bucket_reso=1024", "dataset.cache_latents=true", "dataset.cache_latents_to_disk=false",
        "dataset.shuffle_caption=false", "dataset.flip_aug=false", "dataset.caption_dropout_rate=0",
        "dataset.caption_tag_dropout_rate=0", "dataset.workers=0",  # kohya: max_data_loader_n_workers = 0
        "network.algo=lora", f"network.dim={run.dim}", f"network.alpha={run.alpha:g}",
        "optimizer.name=adamw", f"optimizer.lr={run.lr:g}", "optimizer.weight_decay=0.01", "optimizer.betas=[0.9,0.999]",
        "scheduler.name=constant", f"train.batch_size={run.batch}", f"train.epochs={run.epochs}",
        f"train.mixed_precision={PRECISIONS[precision]}", "train.max_grad_norm=1.0", "train.gradient_checkpointing=false",
        "train.attention=sdpa", f"train.device={run.device}",
        f"seed={run.seed}", "output.name=bench", "output.save_every_n_epochs=1", "output.save_precision=fp16",
        "log.tensorboard=true", "log.every_n_steps=1",
    ]


# -- the table -------------------------------------------------------------------------------------------------
def _opt_arg(name: str) -> Callable[[dict], Any]:
    def get(k: dict) -> Any:
        for a in k.get("optimizer_args") or []:
            key, _, value = str(a).partition("=")
            if key.strip() == name:
                return ast.literal_eval(value.strip())
        return None
    return get


def _get(key: str) -> Callable[[dict], Any]:
    return lambda k: k.get(key)


def _net_arg(name: str, unset: Any) -> Callable[[dict], Any]:
    """A network_args entry (`name=value`, read as sd-scripts' lora_anima does: "true" in any case is True)."""
    def get(k: dict) -> Any:
        for a in k.get("network_args") or []:
            key, _, value = str(a).partition("=")
            if key.strip() == name:
                v = value.strip()
                return v.lower() == "true" if v.lower() in ("true", "false") else v
        return unset
    return get


# (what, lorafw's dotted key, kohya's value from the merged kohya arguments, how lorafw's value reads in kohya's terms)
ROWS: list[tuple[str, str, Callable[[dict], Any], Callable[[Any], Any] | None]] = [
    ("base model", "base_model.path", _get("pretrained_model_name_or_path"), None),
    ("precision", "train.mixed_precision", _get("mixed_precision"), None),
    ("batch size", "train.batch_size", _get("batch_size"), None),
    ("epochs", "train.epochs", _get("max_train_epochs"), None),
    ("resolution", "dataset.resolution", _get("resolution"), None),
    ("buckets", "dataset.enable_bucket", _get("enable_bucket"), None),
    ("smallest bucket side", "dataset.min_bucket_reso", _get("min_bucket_reso"), None),
    ("largest bucket side", "dataset.max_bucket_reso", _get("max_bucket_reso"), None),
    ("network", "network.algo", _get("network_module"), lambda v: "networks.lora" if v == "lora" else "lycoris.kohya"),
    ("LoRA dim", "network.dim", _get("network_dim"), None),
    ("LoRA alpha", "network.alpha", _get("network_alpha"), None),
    ("text encoder trained", "optimizer.text_encoder_lr > 0", lambda k: not k.get("network_train_unet_only", False), None),
    ("optimizer", "optimizer.name", _get("optimizer_type"), lambda v: {"adamw": "AdamW"}.get(v, v)),
    ("learning rate", "optimizer.lr", _get("learning_rate"), None),
    ("UNet lr", "optimizer.unet_lr", _get("unet_lr"), None),
    ("text encoder lr", "optimizer.text_encoder_lr", _get("text_encoder_lr"), None),
    ("weight decay", "optimizer.weight_decay", _opt_arg("weight_decay"), None),
    ("betas", "optimizer.betas", _opt_arg("betas"), lambda v: list(v)),
    ("lr scheduler", "scheduler.name", _get("lr_scheduler"), None),
    ("max grad norm", "train.max_grad_norm", _get("max_grad_norm"), None),
    ("clip_skip", "train.clip_skip", _get("clip_skip"), lambda v: v if v != 1 else None),  # sd-scripts: unset = 1
    ("max token length", "train.max_token_length", _get("max_token_length"), lambda v: v if v != 75 else None),  # unset = 75
    ("cache latents", "dataset.cache_latents", _get("cache_latents"), None),
    ("cache latents to disk", "dataset.cache_latents_to_disk", _get("cache_latents_to_disk"), None),
    ("cache text-encoder outputs", "dataset.cache_text_encoder_outputs", _get("cache_text_encoder_outputs"), None),
    ("gradient checkpointing", "train.gradient_checkpointing", _get("gradient_checkpointing"), None),
    ("attention", "train.attention", lambda k: "sdpa" if k.get("sdpa") else "xformers" if k.get("xformers") else "default", None),
    ("min-SNR gamma", "train.min_snr_gamma", _get("min_snr_gamma"), None),
    ("noise offset", "train.noise_offset", _get("noise_offset"), None),
    ("loss", "train.loss_type", _get("loss_type"), None),
    ("seed", "seed", _get("seed"), None),
    ("shuffle captions", "dataset.shuffle_caption", _get("shuffle_caption"), None),
    ("flip", "dataset.flip_aug", _get("flip_aug"), None),
    ("caption dropout", "dataset.caption_dropout_rate", _get("caption_dropout_rate"), None),
    ("data loader workers", "dataset.workers", _get("max_data_loader_n_workers"), None),
    ("save every n epochs", "output.save_every_n_epochs", _get("save_every_n_epochs"), None),
    ("save precision", "output.save_precision", _get("save_precision"), None),
    ("training state saved each epoch", "output.save_state_every_n_epochs == 1", lambda k: bool(k.get("save_state")), None),
]


# Anima (anima_train_network.py): its own model files, networks.lora_anima, attn_mode instead of sdpa, the flow keys;
# SD's clip_skip and token window do not apply (Qwen3 and T5 take 512 tokens on both sides)
SD_ONLY = ("network", "clip_skip", "max token length", "attention")
ANIMA_ROWS: list[tuple[str, str, Callable[[dict], Any], Callable[[Any], Any] | None]] = [
    ROWS[0],  # base model: the DiT
    ("text encoder (Qwen3)", "base_model.text_encoder", _get("qwen3"), None),
    ("VAE", "base_model.vae", _get("vae"), None),
    *[r for r in ROWS[1:] if r[0] not in SD_ONLY],
    ("network", "network.algo", _get("network_module"), lambda v: "networks.lora_anima" if v == "lora" else v),
    ("LLM adapter trained", "network.train_llm_adapter", _net_arg("train_llm_adapter", False), None),
    ("attention", "train.attention",  # anima_train_network: attn_mode (unset = torch, i.e. SDPA) overrides --sdpa
     lambda k: {None: "sdpa", "torch": "sdpa", "sdpa": "sdpa"}.get(k.get("attn_mode"), k.get("attn_mode")), None),
    ("prediction", "train.prediction_type", lambda k: "flow", None),  # anima_train_network trains the flow only
    ("timestep sampling", "train.timestep_sampling", _get("timestep_sampling"), None),
    ("sigmoid scale", "train.sigmoid_scale", _get("sigmoid_scale"), None),
    ("discrete flow shift", "train.discrete_flow_shift", _get("discrete_flow_shift"), None),
    ("weighting scheme", "train.weighting_scheme", _get("weighting_scheme"), None),
]


def rows_for(arch: str) -> list[tuple[str, str, Callable[[dict], Any], Callable[[Any], Any] | None]]:
    return ANIMA_ROWS if arch == "anima" else ROWS


def kohya_arguments(config: dict, dataset: dict, cli: dict[str, Any] | None = None) -> dict[str, Any]:
    """What train_network.py ends up with: the config file's sections flattened (as read_config_from_file does,
    the [lorafw] section left out), the dataset config's [general] < [[datasets]][0] < its first subset on top,
    and the command line's arguments over all."""
    out: dict[str, Any] = {}
    for section, values in config.items():
        if section == "lorafw":
            continue
        if isinstance(values, dict):
            out.update(values)
        else:
            out[section] = values
    out.update(dataset.get("general", {}))
    first = (dataset.get("datasets") or [{}])[0]
    out.update({k: v for k, v in first.items() if k != "subsets"})
    out.update((first.get("subsets") or [{}])[0])
    out.update(cli or {})
    return out


def _lorafw_value(flat: dict[str, Any], key: str) -> Any:
    """A dotted key's value, or `KEY > N` / `KEY == N` (a yes/no setting kohya has as a flag)."""
    name, op, number = key.partition(" > ") if " > " in key else key.partition(" == ")
    value = flat.get(name)
    if not op:
        return value
    return value is not None and (float(value) > float(number) if op == " > " else float(value) == float(number))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def settings_rows(spec: dict[str, Any], kohya: dict[str, Any]) -> list[tuple[str, Any, Any, bool]]:
    """(setting, lorafw's value, kohya's value, the same?) for every row of the spec's family (rows_for); `spec` is
    lorafw's spec as a dict (RunSpec.to_dict()), `kohya` the merged arguments (kohya_arguments)."""
    flat = dotted(spec)
    out = []
    for label, key, kget, as_kohya in rows_for(str(flat.get("base_model.arch"))):
        ours = _lorafw_value(flat, key)
        theirs = kget(kohya)
        out.append((label, ours, theirs, _same(as_kohya(ours) if as_kohya else ours, theirs)))
    return out


def render_rows(rows: list[tuple[str, Any, Any, bool]], expected_differences: set[str] = frozenset()) -> str:
    """The settings table as Markdown; a row that differs is marked ≠ (and (expected) when it is listed)."""
    lines = ["| setting | lorafw | kohya sd-scripts | |", "|---|---|---|---|"]
    for label, ours, theirs, same in rows:
        mark = "" if same else ("≠ (by design)" if label in expected_differences else "≠")
        lines.append(f"| {label} | {_fmt(ours)} | {_fmt(theirs, 'unset')} | {mark} |")
    return "\n".join(lines)


def _fmt(v: Any, none: str = "null") -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return none if v is None else str(v)
