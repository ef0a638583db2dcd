"""Which layers get an adapter, and what the LoRA file calls them. Pure functions over layer lists.

Targets follow kohya sd-scripts (what users' files contain): LoRA adapts every Linear and
1×1 convolution inside the UNet's transformer blocks and the text encoder's attention and MLP;
LoCon adds the ResNet blocks and the down/up-samplers, their k×k convolutions at `conv_dim`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Protocol

UNET_ATTN_CONTAINERS = ("Transformer2DModel",)
UNET_CONV_CONTAINERS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TE_CONTAINERS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")

Kind = Literal["linear", "conv1x1", "conv", "norm"]  # norm: a LayerNorm/GroupNorm (network.train_norm)


@dataclass(frozen=True)
class Layer:
    name: str  # module path in the diffusers/transformers model
    kind: Kind
    container: str  # class name of the block it sits in


@dataclass(frozen=True)
class Target:
    name: str
    kind: Kind
    rank: int
    alpha: float


def select(layers: list[Layer], containers: tuple[str, ...], conv_containers: tuple[str, ...], dim: int, alpha: float,
           conv_dim: int | None, conv_alpha: float | None) -> list[Target]:
    """The adapted layers: linear/1×1 in `containers` (and `conv_containers` for LoCon) at dim/alpha, k×k at conv_dim."""
    use_conv = conv_dim is not None
    out = []
    for layer in layers:
        in_attn = layer.container in containers
        in_conv = use_conv and layer.container in conv_containers
        if not (in_attn or in_conv):
            continue
        if layer.kind == "conv":
            if in_conv:
                assert conv_alpha is not None
                out.append(Target(layer.name, layer.kind, conv_dim, conv_alpha))  # type: ignore[arg-type]
            continue
        out.append(Target(layer.name, layer.kind, dim, alpha))
    return out


def kohya_name(prefix: str, module_path: str) -> str:
    """('lora_unet', 'down_blocks.0.attentions.0.proj_in') → 'lora_unet_down_blocks_0_attentions_0_proj_in'."""
    return f"{prefix}_{module_path.replace('.', '_')}"


def te_module_path(path: str) -> str:
    """Text-encoder paths as the UIs expect them: with the `text_model.` level transformers 5 dropped.

    A1111/Forge match `lora_te_text_model_encoder_layers_(\\d+)_(.+)`; only diffusers forgives its absence.
    """
    return path if path.startswith("text_model.") else f"text_model.{path}"


def unet_namer(to_original: Callable[[str], str] | None) -> Callable[[str], str]:
    """SD1.5 files use diffusers module names; SDXL files the original layout's (`input_blocks_4_1_…`)."""
    if to_original is None:
        return lambda p: kohya_name("lora_unet", p)
    return lambda p: kohya_name("lora_unet", to_original(p))


class _Family(Protocol):
    te_prefixes: tuple[str, ...]


def text_encoder_names(arch: _Family, text_encoders: list) -> list[Callable[[str], str]] | None:
    """Each text encoder's layer names in the file, from the family's optional `text_encoder_namer(prefix, te)`
    (Anima's Qwen3: `lora_te_layers_0_…`); None: kohya's CLIP names (`lora_te_text_model_…`)."""
    namer = getattr(arch, "text_encoder_namer", None)
    if namer is None:
        return None
    return [namer(p, te) for p, te in zip(arch.te_prefixes, text_encoders)]
