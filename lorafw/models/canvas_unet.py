"""A UNet of the real SD1.5 architecture whose base model draws a blank grey canvas, for the demo.

A random UNet predicts random noise, so its samples are saturated noise and a LoRA trained on it for a minute
cannot turn it into a denoiser: the demo's pictures stayed noise whatever the LoRA learned. This UNet's weights
are random except where they are set by hand so that, before any LoRA, it predicts "all of the input is
noise": each latent channel of the input (half sharp, half from the blurrier levels below), divided by its RMS
over the image. Sampling with that prediction shrinks the latent about as fast as σ falls, so every seed ends
near latent 0 — a grey picture with faint noise through the demo's pixel VAE (lorafw/models/pixel_vae.py),
whatever the prompt. A LoRA then only has to learn what its images add to a blank canvas, and what it learned
shows. (Taking only the skip connection would make the prediction exact, but a LoRA trained on that base
drew scattered pink noise: the levels below are where it finds the image's layout.)

How the blocks pass the input through: each latent channel k travels as the pair (+x_k, −x_k) in channels
2k, 2k+1 (one GroupNorm group of two: 64 channels, 32 groups); every ResNet block's second convolution and
every transformer's `proj_out` are zero, so each block is its residual path; the down-samplers average 2×2,
the up-samplers copy, and each up-block ResNet's shortcut takes half the path from below and half the skip
connection. The last GroupNorm then divides each pair by its RMS (its mean is 0 by construction) and
`conv_out` reads SiLU(u) − SiLU(−u) = u back. Everything else — the first convolutions of the ResNets, the
time embedding, the attention and feed-forward layers, the text encoder — stays random: the features a LoRA
learns to use.
"""

from __future__ import annotations

from typing import Any

import torch

from lorafw.models.tiny import TINY_SD15_UNET

CHANNELS = 64  # 32 GroupNorm groups of two: the (+x, −x) pairs
LATENT = TINY_SD15_UNET["in_channels"]

# the tests' tiny SD1.5 UNet (same blocks, text width and heads), 64 channels at every level
CANVAS_UNET: dict[str, Any] = {**TINY_SD15_UNET, "block_out_channels": [CHANNELS] * 4}


def _pairs(conv: torch.nn.Conv2d) -> None:
    """conv_in: latent channel k → channels 2k (+x) and 2k+1 (−x), centre tap only."""
    conv.weight.zero_()
    if conv.bias is not None:
        conv.bias.zero_()
    for k in range(LATENT):
        conv.weight[2 * k, k, 1, 1] = 1.0
        conv.weight[2 * k + 1, k, 1, 1] = -1.0


def canvas_unet(seed: int = 0) -> Any:
    """The UNet described above, its random parts seeded."""
    from diffusers import UNet2DConditionModel
    from diffusers.models.resnet import Downsample2D, ResnetBlock2D, Upsample2D
    from diffusers.models.transformers.transformer_2d import Transformer2DModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**CANVAS_UNET)
    eye = torch.eye(CHANNELS)
    with torch.no_grad():
        _pairs(unet.conv_in)
        for m in unet.modules():
            if isinstance(m, ResnetBlock2D):
                m.conv2.weight.zero_()
                m.conv2.bias.zero_()
                if m.conv_shortcut is not None:  # up blocks: [path from below, skip] → half of each
                    m.conv_shortcut.weight.zero_()
                    m.conv_shortcut.bias.zero_()
                    m.conv_shortcut.weight[:, :, 0, 0] = torch.cat([eye, eye], dim=1) * 0.5
            elif isinstance(m, Transformer2DModel):
                m.proj_out.weight.zero_()
                m.proj_out.bias.zero_()
            elif isinstance(m, Downsample2D):  # 3×3, stride 2, padding 1: taps 1–2 cover the 2×2 block
                m.conv.weight.zero_()
                m.conv.bias.zero_()
                m.conv.weight[:, :, 1:, 1:] = eye[:, :, None, None] * 0.25
            elif isinstance(m, Upsample2D):  # nearest ×2, then a 3×3 convolution: copy
                m.conv.weight.zero_()
                m.conv.bias.zero_()
                m.conv.weight[:, :, 1, 1] = eye
        unet.conv_norm_out.weight.fill_(1.0)
        unet.conv_norm_out.bias.zero_()
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.zero_()
        for k in range(LATENT):
            unet.conv_out.weight[k, 2 * k, 1, 1] = 1.0  # SiLU(u) − SiLU(−u) = u
            unet.conv_out.weight[k, 2 * k + 1, 1, 1] = -1.0
    return unet.eval()
