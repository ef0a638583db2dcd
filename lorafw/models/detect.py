"""Infer a checkpoint's architecture and every component's config from tensor names and shapes.

The idea is ComfyUI's model detection: the state dict says what the model is. One path
then loads NovelAI animefull, any SD1.5 finetune, Pony Diffusion V6 XL and the tests' tiny
models alike, with no architecture flags and no config download. What shapes cannot tell
(attention heads, norm groups) follows the rules the real families use:
SD1.5 UNets have 8 heads per attention, SDXL UNets 64 channels per head, CLIP 64 per head,
and every GroupNorm 32 groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from lorafw.config.prediction import Declared, from_header
from lorafw.errors import ModelError

UNET = "model.diffusion_model."
VAE = "first_stage_model."
CLIP_SD15 = "cond_stage_model.transformer."
OPENCLIP_SD2 = "cond_stage_model.model."
SDXL_TE1 = "conditioner.embedders.0.transformer."
SDXL_TE2 = "conditioner.embedders.1.model."

VAE_SCALING = {"sd15": 0.18215, "sdxl": 0.13025}
SAMPLE_SIZE = {"sd15": 64, "sdxl": 128}
ARCH_NAMES = {"sd15": "SD1.5", "sdxl": "SDXL"}

Shapes = dict[str, tuple[int, ...]]


@dataclass
class ModelInfo:
    """What a checkpoint holds, as diffusers/transformers config dicts."""

    arch: str  # "sd15" | "sdxl"
    unet: dict[str, Any]
    vae: dict[str, Any] | None  # None: the file has no VAE (an external one is needed)
    text_encoders: list[dict[str, Any]] = field(default_factory=list)
    unet_params: int = 0
    prediction: Declared = field(default_factory=Declared)  # what the file says it predicts (ε / v, ZTSNR)

    def describe(self) -> str:
        n_te = len(self.text_encoders)
        return (
            f"{ARCH_NAMES[self.arch]} (UNet {self.unet_params / 1e6:.1f}M parameters, "
            f"cross-attention width {self.unet['cross_attention_dim']}, {n_te} text encoder{'s' if n_te != 1 else ''})"
        )


def _count(shapes: Shapes, prefix: str) -> int:
    n = 0
    for k, s in shapes.items():
        if k.startswith(prefix):
            c = 1
            for d in s:
                c *= d
            n += c
    return n


def _indices(shapes: Shapes, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in shapes if (m := rx.match(k))})


def classify(shapes: Shapes) -> str:
    """'sd15', 'sdxl', or a ModelError that says what the file is instead."""
    keys = shapes.keys()
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lycoris_")) for k in keys):
        raise ModelError("this is a LoRA/LyCORIS file, not a base model; point base_model.path at the checkpoint it was made for")
    if any(m in k for k in keys for m in (".joint_blocks.", ".double_blocks.", "joint_blocks.", "double_blocks.")):
        raise ModelError("this is an SD3/Flux-family checkpoint, which lorafw does not train (SD1.5 and SDXL only)")
    has_unet = any(k.startswith(UNET + "input_blocks.") for k in keys)
    if not has_unet:
        if any(k.startswith(("encoder.down.", "decoder.up.")) for k in keys):
            raise ModelError("this is a VAE file, not a base model; pass it as base_model.vae and point base_model.path at the checkpoint")
        if any(k.startswith(("down_blocks.", "up_blocks.")) for k in keys):
            raise ModelError(
                "this is a lone diffusers UNet file; point base_model.path at the whole diffusers folder "
                "(the one holding model_index.json) or at a single-file checkpoint"
            )
        raise ModelError("no Stable Diffusion UNet in this file (no model.diffusion_model.* tensors)")
    if any(k.startswith(UNET + "label_emb.") for k in keys) or any(k.startswith(SDXL_TE2) for k in keys):
        return "sdxl"
    if any(k.startswith(OPENCLIP_SD2) for k in keys):
        raise ModelError("this is an SD2.x checkpoint (OpenCLIP text encoder), which lorafw does not train (SD1.5 and SDXL only)")
    return "sd15"


def detect(shapes: Shapes, metadata: dict[str, str] | None = None) -> ModelInfo:
    """Every component's config from a single-file checkpoint's tensor shapes; its prediction type from its
    marker tensors and metadata (config/prediction.py)."""
    arch = classify(shapes)
    unet = _unet_config(shapes, arch)
    vae = _vae_config(shapes, arch) if any(k.startswith(VAE) for k in shapes) else None
    tes: list[dict[str, Any]] = []
    if arch == "sd15":
        if any(k.startswith(CLIP_SD15) for k in shapes):
            tes.append(_clip_config(shapes, CLIP_SD15, "quick_gelu"))
    else:
        if any(k.startswith(SDXL_TE1) for k in shapes):
            tes.append(_clip_config(shapes, SDXL_TE1, "quick_gelu"))
        if any(k.startswith(SDXL_TE2) for k in shapes):
            tes.append(_openclip_config(shapes, SDXL_TE2))
    want = 1 if arch == "sd15" else 2
    if len(tes) != want:
        raise ModelError(
            f"this {ARCH_NAMES[arch]} checkpoint has {len(tes)} of its {want} text encoder(s); "
            "use a full checkpoint (UNet, VAE and text encoders), not a UNet-only one"
        )
    if arch == "sdxl":
        pooled = tes[1]["projection_dim"]
        extra = unet["projection_class_embeddings_input_dim"] - pooled
        if extra <= 0 or extra % 6:
            raise ModelError(f"SDXL UNet's size-conditioning width {unet['projection_class_embeddings_input_dim']} does not fit text encoder 2")
        unet["addition_time_embed_dim"] = extra // 6
    return ModelInfo(arch=arch, unet=unet, vae=vae, text_encoders=tes, unet_params=_count(shapes, UNET),
                     prediction=from_header(shapes.keys(), metadata or {}))


def _shape(shapes: Shapes, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise ModelError(f"expected tensor {key} is missing; the checkpoint is incomplete or not Stable Diffusion")
    return shapes[key]


def _unet_config(shapes: Shapes, arch: str) -> dict[str, Any]:
    u = UNET
    in_ch = _shape(shapes, u + "input_blocks.0.0.weight")[1]
    out_ch = _shape(shapes, u + "out.2.weight")[0]
    blocks = _indices(shapes, re.escape(u) + r"input_blocks\.(\d+)\.")
    downs = [i for i in blocks if u + f"input_blocks.{i}.0.op.weight" in shapes]
    levels: list[list[int]] = [[]]
    for i in blocks[1:]:
        if i in downs:
            levels.append([])
        else:
            levels[-1].append(i)
    layers_per_block = len(levels[0])
    if any(len(lv) != layers_per_block for lv in levels):
        raise ModelError("UNet levels have different numbers of ResNet blocks; not a supported SD UNet")
    channels, attn, depth = [], [], []
    context_dim, linear_proj = None, None
    for lv in levels:
        first = lv[0]
        channels.append(_shape(shapes, u + f"input_blocks.{first}.0.out_layers.3.weight")[0])
        has_attn = any(k.startswith(u + f"input_blocks.{first}.1.") for k in shapes)
        attn.append(has_attn)
        if has_attn:
            depth.append(len(_indices(shapes, re.escape(u + f"input_blocks.{first}.1.transformer_blocks.") + r"(\d+)\.")))
            context_dim = _shape(shapes, u + f"input_blocks.{first}.1.transformer_blocks.0.attn2.to_k.weight")[1]
            linear_proj = len(_shape(shapes, u + f"input_blocks.{first}.1.proj_in.weight")) == 2
        else:
            depth.append(1)
    if context_dim is None:
        raise ModelError("UNet has no cross-attention blocks; not a text-to-image Stable Diffusion model")
    n = len(levels)
    cfg: dict[str, Any] = {
        "sample_size": SAMPLE_SIZE[arch],
        "in_channels": in_ch,
        "out_channels": out_ch,
        "block_out_channels": channels,
        "layers_per_block": layers_per_block,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)],
        "cross_attention_dim": context_dim,
        "use_linear_projection": bool(linear_proj),
        "norm_num_groups": 32,
    }
    if any(d != 1 for d in depth) or arch == "sdxl":
        mid_depth = len(_indices(shapes, re.escape(u + "middle_block.1.transformer_blocks.") + r"(\d+)\."))
        cfg["transformer_layers_per_block"] = depth[:-1] + [mid_depth] if not attn[-1] else depth
    if arch == "sd15":
        cfg["attention_head_dim"] = 8  # SD1.5: 8 heads in every attention (diffusers' historical name)
    else:
        cfg["attention_head_dim"] = [max(1, c // 64) for c in channels]  # SDXL: 64 channels per head
        cfg["addition_embed_type"] = "text_time"
        cfg["projection_class_embeddings_input_dim"] = _shape(shapes, u + "label_emb.0.0.weight")[1]
    assert n == len(cfg["down_block_types"])
    return cfg


def _vae_config(shapes: Shapes, arch: str) -> dict[str, Any]:
    v = VAE
    levels = _indices(shapes, re.escape(v) + r"encoder\.down\.(\d+)\.")
    per = len(_indices(shapes, re.escape(v) + r"encoder\.down\.0\.block\.(\d+)\."))
    return {
        "in_channels": _shape(shapes, v + "encoder.conv_in.weight")[1],
        "out_channels": _shape(shapes, v + "decoder.conv_out.weight")[0],
        "block_out_channels": [_shape(shapes, v + f"encoder.down.{i}.block.0.conv1.weight")[0] for i in levels],
        "down_block_types": ["DownEncoderBlock2D"] * len(levels),
        "up_block_types": ["UpDecoderBlock2D"] * len(levels),
        "layers_per_block": per,
        "latent_channels": _shape(shapes, v + "encoder.conv_out.weight")[0] // 2,
        "norm_num_groups": 32,
        "sample_size": SAMPLE_SIZE[arch] * 8,
        "scaling_factor": VAE_SCALING[arch],
    }


def _clip_config(shapes: Shapes, prefix: str, act: str) -> dict[str, Any]:
    p = prefix + ("text_model." if any(k.startswith(prefix + "text_model.") for k in shapes) else "")
    vocab, hidden = _shape(shapes, p + "embeddings.token_embedding.weight")
    layers = len(_indices(shapes, re.escape(p + "encoder.layers.") + r"(\d+)\."))
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _shape(shapes, p + "encoder.layers.0.mlp.fc1.weight")[0],
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": _shape(shapes, p + "embeddings.position_embedding.weight")[0],
        "hidden_act": act,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "projection_dim": hidden,
        "layer_norm_eps": 1e-5,
    }


def _openclip_config(shapes: Shapes, prefix: str) -> dict[str, Any]:
    vocab, hidden = _shape(shapes, prefix + "token_embedding.weight")
    layers = len(_indices(shapes, re.escape(prefix + "transformer.resblocks.") + r"(\d+)\."))
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": _shape(shapes, prefix + "transformer.resblocks.0.mlp.c_fc.weight")[0],
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 64),
        "max_position_embeddings": _shape(shapes, prefix + "positional_embedding")[0],
        "hidden_act": "gelu",
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 1,
        "projection_dim": _shape(shapes, prefix + "text_projection")[1],
        "layer_norm_eps": 1e-5,
    }


def classify_unet_config(cfg: dict[str, Any]) -> str:
    """'sd15' / 'sdxl' from a diffusers UNet config (diffusers folders carry their configs)."""
    if cfg.get("addition_embed_type") == "text_time":
        return "sdxl"
    if cfg.get("addition_embed_type") or cfg.get("class_embed_type") or cfg.get("in_channels", 4) != 4:
        raise ModelError("this diffusers UNet is not a plain text-to-image SD1.5/SDXL UNet (inpainting or conditioned)")
    if isinstance(cfg.get("attention_head_dim"), (list, tuple)) or cfg.get("use_linear_projection"):
        raise ModelError("this diffusers model looks like SD2.x, which lorafw does not train (SD1.5 and SDXL only)")
    return "sd15"
