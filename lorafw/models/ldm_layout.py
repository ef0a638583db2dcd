"""Module names in diffusers' layout ↔ the original Stable Diffusion (LDM/SGM) layout.

Why we need both directions: checkpoints ship in the original layout (we read them with
diffusers' own converters), the tests and the demo must *write* tiny checkpoints in that layout,
and SDXL LoRA files name UNet modules the original way (`lora_unet_input_blocks_4_1_…`).
The maps are derived from a UNet/VAE config, so they hold for real and tiny models alike;
tests check them against diffusers' converters.
"""

from __future__ import annotations

from dataclasses import dataclass

# Inside a ResNet block the two layouts name the same layers differently.
UNET_RESNET = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
]
VAE_RESNET = [("conv_shortcut", "nin_shortcut")]
VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


@dataclass(frozen=True)
class UNetLayout:
    n_levels: int
    layers_per_block: int
    down_attn: tuple[bool, ...]  # which down levels have transformer blocks
    has_add_embedding: bool  # SDXL's label_emb / add_embedding

    @classmethod
    def from_config(cls, cfg: dict) -> "UNetLayout":
        downs = tuple(cfg["down_block_types"])
        return cls(
            n_levels=len(downs),
            layers_per_block=int(cfg["layers_per_block"]),
            down_attn=tuple("CrossAttn" in t for t in downs),
            has_add_embedding=cfg.get("addition_embed_type") == "text_time",
        )


def unet_block_map(lay: UNetLayout) -> list[tuple[str, str, str]]:
    """(diffusers prefix, original prefix, kind) for every block; kind is resnet/attn/plain."""
    m: list[tuple[str, str, str]] = [
        ("time_embedding.linear_1", "time_embed.0", "plain"),
        ("time_embedding.linear_2", "time_embed.2", "plain"),
        ("conv_in", "input_blocks.0.0", "plain"),
        ("conv_norm_out", "out.0", "plain"),
        ("conv_out", "out.2", "plain"),
    ]
    if lay.has_add_embedding:
        m += [("add_embedding.linear_1", "label_emb.0.0", "plain"), ("add_embedding.linear_2", "label_emb.0.2", "plain")]
    per = lay.layers_per_block + 1  # original layout: each level's resnets, then its downsampler
    for i in range(lay.n_levels):
        for j in range(lay.layers_per_block):
            idx = per * i + j + 1
            m.append((f"down_blocks.{i}.resnets.{j}", f"input_blocks.{idx}.0", "resnet"))
            if lay.down_attn[i]:
                m.append((f"down_blocks.{i}.attentions.{j}", f"input_blocks.{idx}.1", "attn"))
        if i < lay.n_levels - 1:
            m.append((f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{per * (i + 1)}.0.op", "plain"))
    m += [
        ("mid_block.resnets.0", "middle_block.0", "resnet"),
        ("mid_block.attentions.0", "middle_block.1", "attn"),
        ("mid_block.resnets.1", "middle_block.2", "resnet"),
    ]
    up_attn = tuple(reversed(lay.down_attn))
    for i in range(lay.n_levels):
        for j in range(per):
            idx = per * i + j
            m.append((f"up_blocks.{i}.resnets.{j}", f"output_blocks.{idx}.0", "resnet"))
            if up_attn[i]:
                m.append((f"up_blocks.{i}.attentions.{j}", f"output_blocks.{idx}.1", "attn"))
        if i < lay.n_levels - 1:
            m.append((f"up_blocks.{i}.upsamplers.0", f"output_blocks.{per * i + lay.layers_per_block}.{2 if up_attn[i] else 1}", "plain"))
    return m


def _swap_prefix(name: str, blocks: list[tuple[str, str, str]]) -> str | None:
    """A diffusers UNet name → its original-layout name through the block map; None if no block holds it."""
    for dif, orig, kind in blocks:
        if name == dif or name.startswith(dif + "."):
            rest = name[len(dif) :]
            if kind == "resnet":
                for a, b in UNET_RESNET:
                    if rest == "." + a or rest.startswith("." + a + "."):
                        rest = "." + b + rest[len(a) + 1 :]
                        break
            return orig + rest
    return None


def unet_to_original(name: str, lay: UNetLayout) -> str:
    """`down_blocks.1.attentions.0.proj_in` → `input_blocks.4.1.proj_in` (module or parameter names)."""
    out = _swap_prefix(name, unet_block_map(lay))
    if out is None:
        raise KeyError(f"no original-layout name for UNet module {name!r}")
    return out


def vae_to_original(name: str, n_levels: int) -> str:
    """diffusers AutoencoderKL parameter name → original `first_stage_model` name (without prefix)."""
    parts = name.split(".")
    top = parts[0]
    if top in ("quant_conv", "post_quant_conv"):
        return name
    rest = ".".join(parts[1:])
    rest = rest.replace("conv_norm_out", "norm_out")
    if rest.startswith("down_blocks."):
        i, sub = parts[2], ".".join(parts[3:])
        if sub.startswith("resnets."):
            j, tail = sub.split(".", 2)[1], sub.split(".", 2)[2]
            rest = f"down.{i}.block.{j}.{_rename(tail, VAE_RESNET)}"
        else:  # downsamplers.0.conv.*
            rest = f"down.{i}.downsample." + sub.split(".", 2)[2]
    elif rest.startswith("up_blocks."):
        i, sub = int(parts[2]), ".".join(parts[3:])
        k = n_levels - 1 - i  # the original decoder numbers its levels bottom-up
        if sub.startswith("resnets."):
            j, tail = sub.split(".", 2)[1], sub.split(".", 2)[2]
            rest = f"up.{k}.block.{j}.{_rename(tail, VAE_RESNET)}"
        else:  # upsamplers.0.conv.*
            rest = f"up.{k}.upsample." + sub.split(".", 2)[2]
    elif rest.startswith("mid_block.resnets."):
        j, tail = rest.split(".", 3)[2], rest.split(".", 3)[3]
        rest = f"mid.block_{int(j) + 1}.{_rename(tail, VAE_RESNET)}"
    elif rest.startswith("mid_block.attentions.0."):
        rest = "mid.attn_1." + _rename(rest[len("mid_block.attentions.0.") :], VAE_ATTN)
    return f"{top}.{rest}"


def _rename(tail: str, table: list[tuple[str, str]]) -> str:
    for a, b in table:
        if tail == a or tail.startswith(a + "."):
            return b + tail[len(a) :]
    return tail
