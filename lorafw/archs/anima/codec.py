"""Anima's latent codec: the Qwen-Image VAE (diffusers' AutoencoderKLQwenImage, a video VAE) seen by the trainer as an
image VAE with normalised latents.

The trainer (data/latents.py, trainers/batch.py, sampling) calls `vae.encode(pixels).latent_dist` (.mean, .std,
.sample()), `vae.decode(z).sample`, `vae.config.scaling_factor`, `vae.dtype`. The codec takes (B, 3, H, W) pixels in
[−1, 1], adds the frame axis, and returns sd-scripts' latents (qwen_image_autoencoder_kl.encode_pixels_to_latents):
the posterior's mode normalised per channel, z = (mode − latents_mean) · (1 / latents_std), with std zero so every
cache stores the mode as sd-scripts caches it. Scaling factor 1: the normalisation is the scaling. Decoding
inverts it (decode_to_pixels) and drops the frame axis.

The VAE file is ComfyUI's qwen_image_vae.safetensors (the Wan 2.1 layout: `encoder.downsamples.N`, `conv1`),
converted by diffusers' own convert_wan_vae_to_diffusers; a file already in diffusers' names, or a diffusers
folder, loads as is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from lorafw.archs.anima.files import check_role
from lorafw.errors import ModelError

if TYPE_CHECKING:
    from diffusers import AutoencoderKLQwenImage

KEY = "base_model.vae"
NUM_RES_BLOCKS = 2  # the Wan/Qwen-Image VAE's (diffusers' converter assumes it)


@dataclass
class Latents:
    """The normalised posterior: `mean` is the latent (the mode), `std` zero."""

    mean: torch.Tensor
    std: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


class QwenImageCodec(torch.nn.Module):
    """AutoencoderKLQwenImage with per-channel latent normalisation, on (B, C, H, W) images and latents."""

    vae: AutoencoderKLQwenImage
    latents_mean: torch.Tensor
    latents_std: torch.Tensor

    def __init__(self, vae: AutoencoderKLQwenImage) -> None:
        super().__init__()
        self.vae = vae
        c = vae.config
        self.register_buffer("latents_mean", torch.tensor(c.latents_mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("latents_std", torch.tensor(c.latents_std, dtype=torch.float32).view(1, -1, 1, 1))
        self.config = SimpleNamespace(scaling_factor=1.0, latent_channels=c.z_dim)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def normalise(self, mode: torch.Tensor) -> torch.Tensor:
        """(mode − mean) · (1/std), in the latents' dtype, as sd-scripts computes it."""
        return (mode - self.latents_mean.to(mode.dtype)) * (1.0 / self.latents_std).to(mode.dtype)

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z / (1.0 / self.latents_std).to(z.dtype) + self.latents_mean.to(z.dtype)

    def encode(self, pixels: torch.Tensor) -> SimpleNamespace:
        posterior = self.vae.encode(pixels.unsqueeze(2)).latent_dist
        z = self.normalise(posterior.mode().squeeze(2))
        return SimpleNamespace(latent_dist=Latents(z, torch.zeros_like(z)))

    def decode(self, z: torch.Tensor) -> SimpleNamespace:
        x = self.denormalise(z.to(self.dtype)).unsqueeze(2)
        return SimpleNamespace(sample=self.vae.decode(x).sample.squeeze(2))


def vae_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """AutoencoderKLQwenImage's config from a diffusers-named state dict's shapes (dim_mult 1, 2, 4, 4 and two
    ResNets per level, as every Wan/Qwen-Image VAE; the load checks each tensor's shape)."""
    base = shapes["encoder.conv_in.weight"][0]
    z = shapes["post_quant_conv.weight"][0]
    temporal = [f"encoder.down_blocks.{i * (NUM_RES_BLOCKS + 1) + NUM_RES_BLOCKS}.time_conv.weight" in shapes
                for i in range(3)]
    return dict(base_dim=base, z_dim=z, dim_mult=[1, 2, 4, 4], num_res_blocks=NUM_RES_BLOCKS, attn_scales=[],
                temperal_downsample=temporal, input_channels=shapes["encoder.conv_in.weight"][1])


def from_comfyui(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ComfyUI's (Wan) names → diffusers'; a state dict already in diffusers' names is returned as is."""
    if "conv1.weight" not in state:
        return state
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return convert_wan_vae_to_diffusers(state)


_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6",
           "conv_shortcut": "shortcut"}
_MID = {"resnets.0": "middle.0", "attentions.0": "middle.1", "resnets.1": "middle.2"}


def to_comfyui(name: str) -> str:
    """A diffusers AutoencoderKLQwenImage name → ComfyUI's (the inverse of convert_wan_vae_to_diffusers)."""
    fixed = {"quant_conv": "conv1", "post_quant_conv": "conv2", "encoder.conv_in": "encoder.conv1",
             "decoder.conv_in": "decoder.conv1", "encoder.norm_out": "encoder.head.0",
             "encoder.conv_out": "encoder.head.2", "decoder.norm_out": "decoder.head.0",
             "decoder.conv_out": "decoder.head.2"}
    stem, leaf = name.rsplit(".", 1)
    if stem in fixed:
        return f"{fixed[stem]}.{leaf}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets\.\d|attentions\.0)(?:\.(\w+))?", stem):
        part = _MID[m.group(2)]
        inner = _RESNET[m.group(3)] if m.group(2).startswith("resnets") else m.group(3)
        return f"{m.group(1)}.{part}.{inner}.{leaf}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(\w+)(.*)", stem):
        return f"encoder.downsamples.{m.group(1)}.{_RESNET.get(m.group(2), m.group(2))}{m.group(3)}.{leaf}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)", stem):
        i = int(m.group(1)) * (NUM_RES_BLOCKS + 2) + int(m.group(2))
        return f"decoder.upsamples.{i}.{_RESNET[m.group(3)]}.{leaf}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", stem):
        i = int(m.group(1)) * (NUM_RES_BLOCKS + 2) + NUM_RES_BLOCKS + 1
        return f"decoder.upsamples.{i}.{m.group(2)}.{leaf}"
    raise KeyError(name)


def load_vae(path: Path) -> QwenImageCodec:
    """The codec over the VAE at `path` (ComfyUI's single file, diffusers' names, or a diffusers folder), fp32."""
    from diffusers import AutoencoderKLQwenImage

    from lorafw.logs import quiet

    if path.is_dir():
        folder = path / "vae" if (path / "vae" / "config.json").is_file() else path
        if not (folder / "config.json").is_file():
            raise ModelError(f"{KEY}={path} is a folder without config.json; give ComfyUI's qwen_image_vae.safetensors "
                             "or the Qwen-Image VAE's diffusers folder")
        with quiet("diffusers"):
            vae = AutoencoderKLQwenImage.from_pretrained(str(folder), torch_dtype=torch.float32)
        if type(vae).__name__ != "AutoencoderKLQwenImage":
            raise ModelError(f"{KEY}={path} holds a {type(vae).__name__}, not the Qwen-Image VAE Anima uses")
    else:
        from safetensors.torch import load_file

        check_role(path, "vae", KEY)
        state = from_comfyui(load_file(str(path)))
        with quiet("diffusers"), torch.device("meta"):
            vae = AutoencoderKLQwenImage(**vae_config({k: tuple(v.shape) for k, v in state.items()}))
        try:
            missing, unexpected = vae.load_state_dict(state, strict=False, assign=True)
        except RuntimeError as e:  # a shape mismatch
            raise ModelError(f"{KEY}={path}: not a Qwen-Image VAE ({str(e).splitlines()[-1].strip()})") from None
        if missing or unexpected:
            raise ModelError(f"{KEY}={path}: not a Qwen-Image VAE (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]})")
    vae = vae.float()
    vae.requires_grad_(False)
    codec = QwenImageCodec(vae.eval())
    codec.requires_grad_(False)
    return codec.eval()
