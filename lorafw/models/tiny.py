"""Tiny models of the real architectures, built in code and saved the way users' models are saved.

Nothing may be downloaded, so the demo and the tests make their own base models: the same
classes and block structure as SD1.5 (3 cross-attention levels + 1 plain level, 8-head
attention, a 4-level VAE that downsamples 8×, a CLIP text encoder with the real 49,408-token
vocabulary) at a few MB, written as a single original-layout .safetensors or a diffusers folder
and loaded back through exactly the code path a real checkpoint takes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lorafw.models.detect import CLIP_SD15, SDXL_TE1, SDXL_TE2, UNET, VAE
from lorafw.models.ldm_layout import UNetLayout, unet_to_original, vae_to_original
from lorafw.models.tokenizer import clip_tokenizer_dir

TINY_SD15_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 32, 64, 64],
    "layers_per_block": 1,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [32, 32, 32, 32],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
TINY_CLIP_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 1,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 1,
    "projection_dim": 32,
    "layer_norm_eps": 1e-5,
}


# SDXL's block structure: a plain first level, then two cross-attention levels with deeper transformers.
TINY_SDXL_UNET: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 1, 2],
    "attention_head_dim": [1, 1, 1],  # SDXL: 64 channels per head (at least one head)
    "cross_attention_dim": 64,  # CLIP-L width + bigG width
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,  # pooled bigG projection + 6 size numbers
    "norm_num_groups": 32,
}
TINY_BIGG: dict[str, Any] = {**TINY_CLIP_L, "hidden_act": "gelu", "projection_dim": 32}


def build_sdxl(seed: int = 0) -> dict[str, torch.nn.Module]:
    """A tiny SDXL-architecture UNet, VAE, CLIP-L and OpenCLIP-bigG-like text encoders, seeded."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_SDXL_UNET)
    vae = AutoencoderKL(**{**TINY_VAE, "scaling_factor": 0.13025})
    te1 = CLIPTextModel(CLIPTextConfig(**TINY_CLIP_L))
    te2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_BIGG))
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": te1.eval(), "text_encoder_2": te2.eval()}


def openclip_original_keys(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """CLIPTextModelWithProjection → OpenCLIP's own layout (what SDXL checkpoints store for bigG):
    q/k/v fused into in_proj, `text_projection` stored transposed (used as x @ P)."""
    sd = {k.removeprefix("text_model."): v for k, v in sd.items() if not k.endswith("position_ids")}
    out = {
        prefix + "token_embedding.weight": sd["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": sd["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": sd["final_layer_norm.weight"],
        prefix + "ln_final.bias": sd["final_layer_norm.bias"],
        prefix + "text_projection": sd["text_projection.weight"].T.contiguous(),
    }
    n = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    rename = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
              "self_attn.out_proj": "attn.out_proj"}
    for i in range(n):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat([sd[f"{src}self_attn.{q}_proj.{kind}"] for q in "qkv"])
            for a, b in rename.items():
                out[f"{dst}{b}.{kind}"] = sd[f"{src}{a}.{kind}"]
    return out


def build_sd15(seed: int = 0) -> dict[str, torch.nn.Module]:
    """A tiny SD1.5-architecture UNet, VAE and CLIP text encoder with seeded random weights."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_SD15_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    te = CLIPTextModel(CLIPTextConfig(**TINY_CLIP_L))
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": te.eval()}


def _clip_original_keys(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        if k.endswith("position_ids"):
            continue
        k = k[len("text_model.") :] if k.startswith("text_model.") else k
        out[f"{prefix}text_model.{k}"] = v
    return out


def original_state_dict(parts: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """diffusers/transformers modules → one state dict in the original SD1.5 or SDXL checkpoint layout."""
    unet, vae, te = parts["unet"], parts["vae"], parts["text_encoder"]
    lay = UNetLayout.from_config(dict(unet.config))
    out: dict[str, torch.Tensor] = {}
    for k, v in unet.state_dict().items():
        out[UNET + unet_to_original(k, lay)] = v
    n_levels = len(vae.config.block_out_channels)
    for k, v in vae.state_dict().items():
        nk = VAE + vae_to_original(k, n_levels)
        if ".mid.attn_1." in nk and v.ndim == 2:
            v = v[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        out[nk] = v
    if "text_encoder_2" in parts:  # SDXL: conditioner.embedders.0 (CLIP-L) and .1 (OpenCLIP bigG)
        out.update(_clip_original_keys(te.state_dict(), SDXL_TE1))
        out.update(openclip_original_keys(parts["text_encoder_2"].state_dict(), SDXL_TE2))
    else:
        out.update(_clip_original_keys(te.state_dict(), CLIP_SD15))
    return out


def save_single_file(parts: dict[str, torch.nn.Module], path: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `parts` as one original-layout .safetensors, as community checkpoints are shared."""
    from safetensors.torch import save_file

    sd = {k: v.detach().to(dtype).contiguous() for k, v in original_state_dict(parts).items()}
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(p), metadata={"format": "pt"})
    return p


def save_diffusers_folder(parts: dict[str, torch.nn.Module], path: str | Path) -> Path:
    """Write `parts` as a diffusers folder (model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import DDPMScheduler

    p = Path(path)
    sdxl = "text_encoder_2" in parts
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if name in parts:
            parts[name].save_pretrained(str(p / name), safe_serialization=True)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    sched.save_pretrained(str(p / "scheduler"))
    src = clip_tokenizer_dir()
    for folder, pad in (("tokenizer", "<|endoftext|>"), ("tokenizer_2", "!")) if sdxl else (("tokenizer", "<|endoftext|>"),):
        tok = p / folder
        tok.mkdir(parents=True, exist_ok=True)
        for f in ("vocab.json", "merges.txt"):
            (tok / f).write_bytes((src / f).read_bytes())
        (tok / "tokenizer_config.json").write_text(
            json.dumps({"model_max_length": 77, "pad_token": pad, "tokenizer_class": "CLIPTokenizer"})
        )
    index: dict[str, Any] = {
        "_class_name": "StableDiffusionXLPipeline" if sdxl else "StableDiffusionPipeline",
        "_diffusers_version": "0.30.0",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    if sdxl:
        index.update(text_encoder_2=["transformers", "CLIPTextModelWithProjection"], tokenizer_2=["transformers", "CLIPTokenizer"],
                     force_zeros_for_empty_prompt=True)
    else:
        index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
    (p / "model_index.json").write_text(json.dumps(index, indent=2))
    return p
