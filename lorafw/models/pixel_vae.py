"""A VAE of the real SD1.5 architecture whose latents are the image itself, 8× smaller.

The demo's base model has random weights (nothing may be downloaded), and a random VAE's decoder is no
inverse of its encoder: whatever a LoRA learns in latent space decodes to noise. This VAE's weights are
set by hand instead, so that encoding averages each 8×8 block of pixels into latent channels 0–2 (R, G, B
in −1…1, channel 3 zero) and decoding repeats each latent pixel over its block. A LoRA that learned a red
circle then draws a (blocky) red circle, and a newcomer can see it.

How the real blocks are made to pass values through: every ResNet block's second convolution and every
attention's output projection are zero, so each is an identity through its residual path; the 3×3
down-sampling convolutions average 2×2; the up-sampling convolutions copy. The one layer with no residual
path is the GroupNorm before each `conv_out`, which subtracts each group's mean — a solid-colour image would
lose its colour there. Each value therefore travels as a pair of channels, +s·v and −s·v, in one group of
two (64 channels, 32 groups): the group's mean is exactly 0, and with s small the variance (≤ s²) is far
below the norm's ε = 1e-6, so the norm divides by √ε whatever the image, a fixed scale its affine weight
undoes. The SiLU after it gets +v and −v, and SiLU(v) − SiLU(−v) = v·σ(v) + v·σ(−v) = v exactly, which
`conv_out` computes. s = 3e-5 keeps this within 1/255 in float32, bfloat16 and float16 (the VAE's dtypes).
"""

from __future__ import annotations

from typing import Any

import torch

CHANNELS = 64  # 32 GroupNorm groups of two: the (+v, −v) pairs
LEVELS = 4  # the SD VAE's 8× downsampling
SMALL = 3e-5  # s: the pairs' scale inside the net, well below the norms' √ε = 1e-3, still a float16 number
EPS = 1e-6  # diffusers' AutoencoderKL GroupNorm ε

PIXEL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [CHANNELS] * LEVELS,
    "down_block_types": ["DownEncoderBlock2D"] * LEVELS,
    "up_block_types": ["UpDecoderBlock2D"] * LEVELS,
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 128,
    "scaling_factor": 0.18215,  # what lorafw's loader assumes for an SD1.5 checkpoint
}


def _pairs(conv: torch.nn.Conv2d, scale: float) -> None:
    """conv_in: input channel k → channels 2k (+scale) and 2k+1 (−scale), centre tap only."""
    for k in range(conv.in_channels):
        conv.weight.data[2 * k, k, 1, 1] = scale
        conv.weight.data[2 * k + 1, k, 1, 1] = -scale


def _unpair(norm: torch.nn.GroupNorm, conv: torch.nn.Conv2d, gain: float, values: int) -> None:
    """GroupNorm → SiLU → conv_out reads the pair (2k, 2k+1) back as gain·v, for the first `values` outputs."""
    norm.weight.data.fill_(EPS ** 0.5 / SMALL)  # the norm gives ±s·v/√ε; this makes it ±v
    for k in range(values):
        conv.weight.data[k, 2 * k, 1, 1] = gain  # gain·(SiLU(v) − SiLU(−v)) = gain·v
        conv.weight.data[k, 2 * k + 1, 1, 1] = -gain


def pixel_vae() -> Any:
    """An AutoencoderKL (SD1.5 architecture, 64 channels) whose latent is the 8×-downsampled image.

    With the SD1.5 scaling factor applied, the scaled latent (what the UNet sees) equals the pixels in −1…1."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**PIXEL_VAE)
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        for m in vae.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
        sf = PIXEL_VAE["scaling_factor"]
        enc, dec = vae.encoder, vae.decoder
        _pairs(enc.conv_in, SMALL)
        for block in enc.down_blocks:
            for ds in block.downsamplers or []:  # pad right/bottom by one, 3×3 stride 2: average the top-left 2×2
                for c in range(CHANNELS):
                    ds.conv.weight[c, c, :2, :2] = 0.25
        _unpair(enc.conv_norm_out, enc.conv_out, 1.0 / sf, 4)  # mean = v / sf, so sf·mean = v
        enc.conv_out.bias[4:] = -30.0  # log-variance at diffusers' floor: the latent is its mean
        vae.quant_conv.weight[:, :, 0, 0] = torch.eye(8)
        vae.post_quant_conv.weight[:, :, 0, 0] = torch.eye(4)
        dec.conv_in.weight.zero_()
        _pairs(dec.conv_in, SMALL * sf)  # the decoder gets latent / sf
        for block in dec.up_blocks:
            for us in block.upsamplers or []:  # nearest ×2, then a 3×3 convolution: copy
                for c in range(CHANNELS):
                    us.conv.weight[c, c, 1, 1] = 1.0
        _unpair(dec.conv_norm_out, dec.conv_out, 1.0, 3)
    return vae.eval()
