"""Anima's three files with random weights, in the layouts users download (ComfyUI's split files), built in code:
tests train a tiny one end to end in seconds, and the benchmark builds one at Anima's real sizes (`FULL`).

    DiT           one .safetensors, `net.` + the Cosmos names (`net.blocks.0.self_attn.q_proj.weight`), the LLM
                  adapter inside (`net.llm_adapter.…`) and the RoPE buffers Cosmos files keep
    text encoder  Qwen3 as ComfyUI keeps it (`model.layers.0.…`), with Qwen3's real vocabulary (the real tokenizer
                  works on it)
    VAE           the Qwen-Image VAE in ComfyUI's Wan layout (`encoder.downsamples.0.residual.0.gamma`, `conv1`)
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from lorafw.archs.anima.codec import to_comfyui
from lorafw.archs.anima.dit import ROPE_SCALE, to_original
from lorafw.archs.anima.files import ADAPTER

QWEN3_VOCAB, T5_VOCAB = 151936, 32128


@dataclass(frozen=True)
class Sizes:
    blocks: int = 2
    channels: int = 64  # the DiT's width
    heads: int = 4
    adaln_lora_dim: int = 16
    text_dim: int = 64  # the adapter's output = the DiT's cross-attention context width
    adapter_layers: int = 2
    adapter_heads: int = 4
    qwen_layers: int = 2
    qwen_hidden: int = 64
    qwen_heads: int = 4
    qwen_kv_heads: int = 2
    qwen_head_dim: int = 16
    qwen_intermediate: int = 128
    vae_base_dim: int = 8
    rope_positions: int = 256  # per spatial axis, in patches: Anima's 512-pixel max_img_h / patch 2 … × 4 extrapolation


TINY = Sizes()
FULL = Sizes(blocks=28, channels=2048, heads=16, adaln_lora_dim=256, text_dim=1024, adapter_layers=6,
             adapter_heads=16, qwen_layers=28, qwen_hidden=1024, qwen_heads=16, qwen_kv_heads=8, qwen_head_dim=128,
             qwen_intermediate=3072, vae_base_dim=96)


@dataclass(frozen=True)
class AnimaFiles:
    dit: Path
    text_encoder: Path
    vae: Path


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Modules made in `dtype` from the start: FULL's DiT is 8 GB in fp32, 4 GB in bf16."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def dit_state(s: Sizes) -> dict[str, torch.Tensor]:
    """The DiT and its LLM adapter as Anima's file holds them (`net.` + Cosmos names)."""
    from diffusers import CosmosTransformer3DModel
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner

    dit = CosmosTransformer3DModel(
        in_channels=17, out_channels=16, num_attention_heads=s.heads, attention_head_dim=s.channels // s.heads,
        num_layers=s.blocks, text_embed_dim=s.text_dim, adaln_lora_dim=s.adaln_lora_dim, rope_scale=ROPE_SCALE,
        concat_padding_mask=False, extra_pos_embed_type=None)
    adapter = AnimaTextConditioner(source_dim=s.qwen_hidden, target_dim=s.text_dim, model_dim=s.text_dim,
                                   num_layers=s.adapter_layers, num_attention_heads=s.adapter_heads)
    _spread(dit)
    _spread(adapter)
    state = {f"net.{to_original(k)}": v for k, v in dit.state_dict().items()}
    state.update({f"net.{ADAPTER}{k}": v for k, v in adapter.state_dict().items()})
    # the RoPE buffers of sd-scripts' VideoRopePosition3DEmb (persistent, so the files carry them)
    head = s.channels // s.heads
    dim_h, dim_t = head // 6 * 2, head - 2 * (head // 6 * 2)
    state["net.pos_embedder.seq"] = torch.arange(s.rope_positions, dtype=torch.float32)
    state["net.pos_embedder.dim_spatial_range"] = torch.arange(0, dim_h, 2)[: dim_h // 2].float() / dim_h
    state["net.pos_embedder.dim_temporal_range"] = torch.arange(0, dim_t, 2)[: dim_t // 2].float() / dim_t
    return state


def qwen3_state(s: Sizes) -> dict[str, torch.Tensor]:
    from transformers import Qwen3Config, Qwen3Model

    cfg = Qwen3Config(vocab_size=QWEN3_VOCAB, hidden_size=s.qwen_hidden, intermediate_size=s.qwen_intermediate,
                      num_hidden_layers=s.qwen_layers, num_attention_heads=s.qwen_heads,
                      num_key_value_heads=s.qwen_kv_heads, head_dim=s.qwen_head_dim, tie_word_embeddings=True)
    return {f"model.{k}": v for k, v in Qwen3Model(cfg).state_dict().items()}


def vae_state(s: Sizes) -> dict[str, torch.Tensor]:
    from diffusers import AutoencoderKLQwenImage

    vae = AutoencoderKLQwenImage(base_dim=s.vae_base_dim, z_dim=16)
    return {to_comfyui(k): v for k, v in vae.state_dict().items()}


def _spread(module: torch.nn.Module) -> None:
    """Small random values where diffusers initialises zeros or ones (norm scales), so every tensor matters."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 1 and ("norm" in name):
                p.add_(0.1 * torch.randn_like(p))


def write(folder: str | Path, sizes: Sizes = TINY, seed: int = 0, dtype: torch.dtype = torch.float32) -> AnimaFiles:
    """The three files under `folder` (anima.safetensors, qwen_3_06b_base.safetensors, qwen_image_vae.safetensors),
    weights from `seed`, stored in `dtype` (bf16 for FULL: about 6 GB instead of 12)."""
    from safetensors.torch import save_file

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    files = AnimaFiles(out / "anima.safetensors", out / "qwen_3_06b_base.safetensors",
                       out / "qwen_image_vae.safetensors")
    for path, make in ((files.dit, dit_state), (files.text_encoder, qwen3_state), (files.vae, vae_state)):
        with default_dtype(dtype):  # one part in memory at a time, made in the file's dtype
            state = make(sizes)
        rope = {k: v.float() for k, v in state.items() if "pos_embedder" in k}  # fp32 buffers, as Cosmos files keep
        save_file({k: v.contiguous() for k, v in (state | rope).items()}, str(path), metadata={"format": "pt"})
        del state
    return files
