"""Which Anima file is which, from a .safetensors header alone (no weights), and what the DiT file describes.

Anima ships as ComfyUI's split files, and users swap them: the DiT (`net.blocks.N.…`, `net.llm_adapter.…`;
ComfyUI and sd-scripts also read it without `net.`), the Qwen3-0.6B text encoder (`model.layers.N.…`, as
ComfyUI keeps it), the Qwen-Image VAE (the Wan 2.1 layout ComfyUI keeps: `encoder.downsamples.N.…`, `conv1`;
or diffusers' names) and, rarely, the LLM adapter alone. `role` names what a header holds, so a file given
under the wrong key is refused with the key it belongs in; an SD checkpoint is named with the recipe that
trains it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lorafw.config.prediction import Declared
from lorafw.errors import ModelError
from lorafw.models.header import Header, read_header

Role = Literal["dit", "llm_adapter", "text_encoder", "vae", "sd_vae", "sd15", "sdxl", "lora", "unknown"]
DIT_PREFIXES = ("net.", "model.diffusion_model.net.", "model.diffusion_model.", "")  # tried in this order
QWEN3_PREFIXES = ("model.", "")
ADAPTER = "llm_adapter."
# where each file goes, and what it is, for the messages
KEYS = {"dit": "base_model.path", "llm_adapter": "base_model.llm_adapter", "text_encoder": "base_model.text_encoder",
        "vae": "base_model.vae"}
WHAT = {"dit": "the Anima DiT", "llm_adapter": "Anima's LLM adapter alone", "text_encoder": "the Qwen3 text encoder",
        "vae": "the Qwen-Image VAE", "sd_vae": "a Stable Diffusion VAE (4 latent channels), not the Qwen-Image VAE "
        "Anima uses", "sd15": "an SD1.5 checkpoint", "sdxl": "an SDXL checkpoint", "lora": "a LoRA/LyCORIS file",
        "unknown": "an unknown file"}
RECIPE = {"sd15": "base_model=sd15 (or +recipe=sd15_character)", "sdxl": "base_model=sdxl (or +recipe=pdxl)"}
ANIMA_PREDICTION = Declared("flow", None, "Anima is a rectified-flow model")


# the files Anima needs besides base_model.path (the DiT), by base_model key
SIDE_FILES = {"text_encoder": "its Qwen3-0.6B text encoder: ComfyUI's qwen_3_06b_base.safetensors "
                              "(split_files/text_encoders) or a Qwen3-0.6B folder",
              "vae": "the Qwen-Image VAE: ComfyUI's qwen_image_vae.safetensors (split_files/vae)"}

def dit_prefix(keys: set[str] | dict) -> str | None:
    """The prefix the DiT's tensors carry in this file (`net.` in Anima's own files), or None: no DiT."""
    for p in DIT_PREFIXES:
        if f"{p}x_embedder.proj.1.weight" in keys and f"{p}blocks.0.mlp.layer1.weight" in keys:
            return p
    return None


def qwen3_prefix(keys: set[str] | dict) -> str | None:
    for p in QWEN3_PREFIXES:
        if f"{p}embed_tokens.weight" in keys and f"{p}layers.0.self_attn.q_norm.weight" in keys:
            return p
    return None


def role(header: Header) -> Role:
    """What the file holds."""
    keys = header.tensors
    if any(k.startswith(("lora_unet_", "lora_te", "lycoris_")) for k in keys):
        return "lora"
    if dit_prefix(keys) is not None:
        return "dit"
    if any(k.startswith("model.diffusion_model.input_blocks.") for k in keys):
        from lorafw.models.detect import classify

        try:
            return "sdxl" if classify(header.shapes()) == "sdxl" else "sd15"
        except ModelError:
            return "unknown"
    if qwen3_prefix(keys) is not None:
        return "text_encoder"
    if any(k.startswith(tuple(f"{p}{ADAPTER}blocks.0.cross_attn." for p in DIT_PREFIXES)) for k in keys) or (
            "embed.weight" in keys and "blocks.0.cross_attn.q_proj.weight" in keys):
        return "llm_adapter"
    if ("encoder.conv1.weight" in keys and "decoder.head.2.weight" in keys) or (
            "encoder.conv_in.weight" in keys and len(keys["encoder.conv_in.weight"].shape) == 5):
        return "vae"
    if any(k.startswith(("encoder.down.", "first_stage_model.encoder.")) for k in keys):
        return "sd_vae"
    return "unknown"


def check_role(path: str | Path, want: Role, key: str) -> Header:
    """The header of the file given as `key`, or a ModelError saying what it is and where it belongs."""
    p = Path(path)
    if p.is_dir():
        raise ModelError(f"{key}={path} is a folder; give {WHAT[want]} as a single .safetensors file")
    if not p.is_file():
        raise ModelError(f"{key}={path} does not exist")
    if p.suffix != ".safetensors":
        raise ModelError(f"{key}={path}: Anima's files are .safetensors (ComfyUI's split files); convert or "
                         "re-download that one")
    header = read_header(p)
    found = role(header)
    if found == want:
        return header
    if found == "unknown":
        raise ModelError(f"{key}={path} is not {WHAT[want]}: it holds none of Anima's tensors (no net.blocks.N, Qwen3 "
                         "layers.N or Qwen-Image VAE ones); Anima needs the DiT in base_model.path, Qwen3-0.6B in "
                         "base_model.text_encoder and the Qwen-Image VAE in base_model.vae")
    msg = f"{key}={path} is {WHAT[found]}, not {WHAT[want]}"
    if found in KEYS:
        msg += f"; put it in {KEYS[found]}"
    elif found in RECIPE:
        msg += f", which the {'SD1.5' if found == 'sd15' else 'SDXL'} family trains: use {RECIPE[found]}"
    elif found == "lora":
        msg += "; point base_model.path at the base model it was made for"
    raise ModelError(msg)


@dataclass(frozen=True)
class AnimaInfo:
    """What the DiT file says about the model, from its tensor shapes (blocks counted as ComfyUI counts them)."""

    prefix: str  # the DiT's key prefix in the file ("net.")
    blocks: int
    channels: int  # model_channels (2048)
    heads: int
    patch: int  # spatial patch size (2)
    in_channels: int  # latent channels, without the padding-mask channel (16)
    text_dim: int  # the cross-attention context width (1024)
    adaln_lora_dim: int
    mlp_ratio: float
    adapter: bool  # the LLM adapter is inside the file (net.llm_adapter.*)
    adapter_layers: int
    rope_positions: int  # the RoPE table's length per spatial axis, in patches (256: 4096 px)
    prediction: Declared = field(default=ANIMA_PREDICTION)

    def describe(self) -> str:
        size = "Anima" if self.adapter else "Cosmos-Predict2 DiT (no LLM adapter)"
        return (f"{size} ({self.blocks} blocks × {self.channels}, {self.heads} heads"
                + (f", LLM adapter {self.adapter_layers} layers" if self.adapter else "") + ")")


def _count(keys: dict, pattern: str) -> int:
    rx = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := rx.match(k))}
    return max(found) + 1 if found else 0


def describe_dit(header: Header, path: str | Path) -> AnimaInfo:
    """The DiT's shape from its header; a ModelError when a tensor the DiT needs is missing."""
    shapes = header.shapes()
    p = dit_prefix(shapes)
    assert p is not None
    try:
        x_emb = shapes[f"{p}x_embedder.proj.1.weight"]  # (channels, (in + mask) · patch²)
        final = shapes[f"{p}final_layer.linear.weight"]  # (patch² · out, channels)
        head_dim = shapes[f"{p}blocks.0.self_attn.q_norm.weight"][0]
        text_dim = shapes[f"{p}blocks.0.cross_attn.k_proj.weight"][1]
        adaln = shapes[f"{p}blocks.0.adaln_modulation_self_attn.1.weight"][0]
        mlp = shapes[f"{p}blocks.0.mlp.layer1.weight"][0]
    except KeyError as e:
        raise ModelError(f"{path}: the DiT is incomplete (no {e.args[0]}); re-download the file") from None
    channels = x_emb[0]
    out = 16  # the Qwen-Image VAE's latent channels: the patch size follows from the final layer
    patch = round((final[0] / out) ** 0.5)
    in_ch = x_emb[1] // (patch * patch) - 1
    if patch * patch * out != final[0] or in_ch != out:
        raise ModelError(f"{path}: a Cosmos DiT for {in_ch}-channel latents (final layer {final}); Anima's takes the "
                         "16 channels of the Qwen-Image VAE, so this is another Cosmos model")
    seq = shapes.get(f"{p}pos_embedder.seq")
    return AnimaInfo(
        prefix=p, blocks=_count(shapes, re.escape(p) + r"blocks\.(\d+)\."), channels=channels,
        heads=channels // head_dim, patch=patch, in_channels=in_ch, text_dim=text_dim, adaln_lora_dim=adaln,
        mlp_ratio=mlp / channels, adapter=any(k.startswith(p + ADAPTER) for k in shapes),
        adapter_layers=_count(shapes, re.escape(p + ADAPTER) + r"blocks\.(\d+)\."),
        rope_positions=seq[0] if seq else 256)


def inspect(path: str | Path) -> AnimaInfo:
    """The Anima DiT at `path`, described from its header, or a ModelError naming what the file is."""
    header = check_role(path, "dit", "base_model.path")
    return describe_dit(header, path)
