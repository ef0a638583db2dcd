"""Load a base model (single original-layout .safetensors or diffusers folder) into diffusers modules.

One path for every checkpoint: `inspect_base_model` reads only the header (or the folder's
configs) and says what the model is; `load_components` then builds the modules from those
configs and fills them with diffusers' own original→diffusers converters. Offline throughout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafw.config.prediction import Resolved, from_scheduler_config
from lorafw.errors import ModelError
from lorafw.models.detect import (
    ARCH_NAMES,
    CLIP_SD15,
    SDXL_TE1,
    SDXL_TE2,
    ModelInfo,
    _vae_config,
    classify_unet_config,
    detect,
)
from lorafw.models.header import read_header
from lorafw.models.tokenizer import check_vocab, model_tokenizers

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def inspect_base_model(path: str | Path) -> ModelInfo:
    """What the checkpoint at `path` is, from its header or configs alone (no torch, no tensors).

    A pickle checkpoint has no header: it is read (weights-only) to see its tensors' shapes.
    """
    p = Path(path)
    if p.is_dir():
        return _inspect_folder(p)
    if p.suffix.lower() in PICKLE_SUFFIXES:
        try:
            return detect({k: tuple(v.shape) for k, v in _pickle_state(p).items()})
        except ModelError as e:
            raise ModelError(f"{p}: {e}") from None
    header = read_header(p)
    try:
        return detect(header.shapes(), header.metadata)
    except ModelError as e:
        raise ModelError(f"{p}: {e}") from None


def _read_json(p: Path) -> dict[str, Any]:
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ModelError(f"{p} is missing; the diffusers folder is incomplete") from None
    except json.JSONDecodeError:
        raise ModelError(f"{p} is not valid JSON; the diffusers folder is damaged") from None


def _inspect_folder(p: Path) -> ModelInfo:
    unet = _read_json(p / "unet" / "config.json")
    try:
        arch = classify_unet_config(unet)
    except ModelError as e:
        raise ModelError(f"{p}: {e}") from None
    vae = _read_json(p / "vae" / "config.json") if (p / "vae").is_dir() else None
    tes = [_read_json(p / "text_encoder" / "config.json")]
    if arch == "sdxl":
        tes.append(_read_json(p / "text_encoder_2" / "config.json"))
    sched = p / "scheduler" / "scheduler_config.json"
    declared = from_scheduler_config(_read_json(sched) if sched.is_file() else None)
    return ModelInfo(arch=arch, unet=unet, vae=vae, text_encoders=tes, prediction=declared)


def check_arch(info: ModelInfo, expected: str, path: str) -> None:
    """Refuse a checkpoint of another architecture than the config asked for, naming what was found."""
    if info.arch != expected:
        fix = {"sdxl": "base_model=sdxl (or +recipe=pdxl)", "sd15": "base_model=sd15 (or +recipe=sd15_character)"}[info.arch]
        raise ModelError(
            f"base_model.path={path} is an {info.describe()} checkpoint, but the config trains "
            f"{ARCH_NAMES.get(expected, expected)} (base_model.arch={expected}); use {fix}"
        )


@dataclass
class Components:
    """The diffusers/transformers modules of one base model, in fp32 on CPU after loading."""

    arch: str
    info: ModelInfo
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    noise_scheduler: Any


def noise_scheduler(prediction_type: str = "epsilon", zero_terminal_snr: bool = False):
    """The DDPM schedule every SD1.5/SDXL model was trained with (and kohya trains with); see
    objective/schedule.py for the v-prediction and zero-terminal-SNR variants."""
    from lorafw.objective.schedule import noise_scheduler as make  # heavy (torch): validation reads headers here

    return make(prediction_type, zero_terminal_snr)


def load_components(path: str | Path, vae_path: str | Path | None = None, expected_arch: str | None = None,
                    objective: Any = None) -> Components:
    """Build and fill the UNet, VAE and text encoder(s) of the model at `path` (file or diffusers folder).
    The noise schedule follows `objective` (an objective.prediction.Resolved), else what the file declares."""
    p = Path(path)
    info = inspect_base_model(p)
    if expected_arch is not None:
        check_arch(info, expected_arch, str(path))
    if p.is_dir():
        unet, vae, tes = _load_folder(p, info)
    else:
        unet, vae, tes = _load_single_file(p, info)
    if vae_path is not None:
        vae = load_vae(vae_path, info.arch)
    if vae is None:
        raise ModelError(f"{p} has no VAE; pass one with base_model.vae=/path/to/vae.safetensors")

    toks, sources = model_tokenizers(p, info.arch)  # a diffusers folder's own, else the bundled CLIP tokenizer(s)
    check_vocab(toks, tes, sources, str(p))
    for m in (unet, vae, *tes):
        m.requires_grad_(False)
        m.eval()
    if objective is None:
        d = info.prediction
        objective = Resolved(d.prediction or "epsilon", bool(d.ztsnr), d.source, d.source)
    sched = noise_scheduler(objective.prediction, objective.zero_terminal_snr)
    return Components(info.arch, info, unet, vae, tes, toks, sched)


_PICKLE_CACHE: dict[tuple[str, float], dict[str, Any]] = {}


def _pickle_state(path: Path) -> dict[str, Any]:
    """A .ckpt's tensors by weights-only unpickling: tensors and plain containers only, never code."""
    import pickle

    import torch

    key = (str(path.resolve()), path.stat().st_mtime)
    if key not in _PICKLE_CACHE:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ModelError(
                f"{path}: refused: it holds Python objects other than tensors, which weights-only loading will not "
                f"run ({str(e).splitlines()[0][:160]}); use a .safetensors copy of the model"
            ) from None
        except (EOFError, RuntimeError, OSError) as e:
            raise ModelError(f"{path}: cannot be read as a checkpoint ({str(e).splitlines()[0]}); it may be truncated") from None
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
        if not isinstance(sd, dict):
            raise ModelError(f"{path}: holds no state dict of tensors")
        _PICKLE_CACHE.clear()  # one at a time: a checkpoint is gigabytes
        _PICKLE_CACHE[key] = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    return _PICKLE_CACHE[key]


def _load_state(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    if path.suffix.lower() in PICKLE_SUFFIXES:
        return _pickle_state(path)
    read_header(path)  # a clear error for truncated/corrupt files before safetensors' own
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ModelError(f"{path}: cannot read the tensors ({e}); the file is damaged, re-download it") from None


def _fill(module: Any, state: dict[str, Any], what: str, path: Path) -> Any:
    missing, unexpected = _diff_keys(module, state)
    if missing or unexpected:
        raise ModelError(
            f"{path}: the {what} weights do not match the detected architecture "
            f"(missing {len(missing)}, e.g. {missing[:3]}; unexpected {len(unexpected)}, e.g. {unexpected[:3]})"
        )
    module.load_state_dict(state, strict=True, assign=True)
    return module


def _diff_keys(module: Any, state: dict[str, Any]) -> tuple[list[str], list[str]]:
    want = set(module.state_dict().keys())
    have = set(state)
    return sorted(want - have), sorted(have - want)


def _build(cls: Any, config: Any) -> Any:
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return cls(config) if not isinstance(config, dict) else cls(**config)


def _clip_state(sd: dict[str, Any], prefix: str, model: Any) -> dict[str, Any]:
    """Original CLIP-L keys → the module's own keys (transformers 5 dropped the `text_model.` level)."""
    wants_text_model = any(k.startswith("text_model.") for k in model.state_dict())
    out = {}
    for k, v in sd.items():
        if not k.startswith(prefix) or k.endswith("position_ids"):
            continue
        rest = k[len(prefix) :]
        rest = rest[len("text_model.") :] if rest.startswith("text_model.") else rest
        out[("text_model." if wants_text_model else "") + rest] = v
    return out


def _clip_text_model(cfg: dict[str, Any]) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    return _build(CLIPTextModel, CLIPTextConfig(**cfg))


def _load_single_file(p: Path, info: ModelInfo) -> tuple[Any, Any, list[Any]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint

    sd = _load_state(p)
    unet = _fill(_build(UNet2DConditionModel, info.unet), convert_ldm_unet_checkpoint(sd, info.unet), "UNet", p)
    vae = None
    if info.vae is not None:
        vae = _fill(_build(AutoencoderKL, info.vae), convert_ldm_vae_checkpoint(sd, info.vae), "VAE", p)
    te = _clip_text_model(info.text_encoders[0])
    prefix = CLIP_SD15 if info.arch == "sd15" else SDXL_TE1
    te = _fill(te, _clip_state(sd, prefix, te), "text encoder", p)
    if info.arch == "sd15":
        return unet, vae, [te]
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    te2 = _build(CLIPTextModelWithProjection, CLIPTextConfig(**info.text_encoders[1]))
    te2_state = {k: v for k, v in convert_open_clip_checkpoint(te2, sd, prefix=SDXL_TE2).items() if not k.endswith("position_ids")}
    te2 = _fill(te2, te2_state, "second text encoder (OpenCLIP bigG)", p)
    return unet, vae, [te, te2]


def _load_folder(p: Path, info: ModelInfo) -> tuple[Any, Any, list[Any]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    try:
        unet = UNet2DConditionModel.from_pretrained(str(p), subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(str(p), subfolder="vae", local_files_only=True) if info.vae else None
        tes = [CLIPTextModel.from_pretrained(str(p), subfolder="text_encoder", local_files_only=True)]
        if info.arch == "sdxl":
            tes.append(CLIPTextModelWithProjection.from_pretrained(str(p), subfolder="text_encoder_2", local_files_only=True))
    except (OSError, ValueError) as e:
        raise ModelError(f"{p}: cannot load the diffusers folder ({str(e).splitlines()[0]})") from None
    return unet, vae, tes


def load_vae(path: str | Path, arch: str) -> Any:
    """An external VAE: a single file (original or diffusers key layout) or a diffusers VAE folder."""
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    p = Path(path)
    if p.is_dir():
        sub = "vae" if (p / "vae" / "config.json").is_file() else None
        try:
            return AutoencoderKL.from_pretrained(str(p), subfolder=sub, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ModelError(f"base_model.vae={p}: cannot load the VAE folder ({str(e).splitlines()[0]})") from None
    shapes = read_header(p).shapes()
    sd = _load_state(p)
    if any(k.startswith(("encoder.down_blocks.", "vae.encoder.down_blocks.")) for k in shapes):
        raise ModelError(
            f"base_model.vae={p}: a lone diffusers-layout VAE file; pass the folder that holds it and its config.json"
        )
    prefix = next((pre for pre in ("first_stage_model.", "vae.", "") if f"{pre}encoder.conv_in.weight" in shapes), None)
    if prefix is None:
        raise ModelError(f"base_model.vae={p}: no VAE weights in this file (no encoder.conv_in.weight)")
    stripped = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
    cfg = _vae_config({"first_stage_model." + k: v for k, v in stripped.items()}, arch)
    return _fill(_build(AutoencoderKL, cfg), convert_ldm_vae_checkpoint(sd, cfg), "VAE", p)
