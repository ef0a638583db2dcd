"""The noise added to a training batch: kohya's noise offset (with random strength and adaptive scale),
multires (pyramid) noise and input perturbation, restated from sd-scripts' train_util.py and
custom_train_functions.py. Every draw comes from the step's torch.Generator, so a step can be replayed.

Draw order (fixed, so that a seed gives the same noise whatever else is on): base noise, offset strength,
offset, multires scales and layers; the timesteps are drawn next (timesteps.py), then the perturbation.
With every option off, only the base noise is drawn — the same numbers as before these options existed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F


def _rand(gen: torch.Generator | None, device: torch.device, *shape: int) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=device)


def _randn(gen: torch.Generator | None, device: torch.device, *shape: int) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=device)


def offset_strength(latents: torch.Tensor, offset: float | torch.Tensor, adaptive_scale: float | None) -> torch.Tensor | float:
    """The offset's strength: `offset`, plus `adaptive_scale × |channel mean of the latents|` per sample and
    channel when adaptive, clamped at 0 (kohya's apply_noise_offset)."""
    if adaptive_scale is None:
        return offset
    mean = latents.mean(dim=(2, 3), keepdim=True).abs()
    return torch.clamp(offset + adaptive_scale * mean, min=0.0)


def with_offset(noise: torch.Tensor, strength: torch.Tensor | float, offset_draw: torch.Tensor) -> torch.Tensor:
    """noise + strength × a per-(sample, channel) constant (offset_draw has shape (B, C, 1, 1))."""
    return noise + strength * offset_draw


def pyramid(noise: torch.Tensor, layers: list[torch.Tensor], discount: float) -> torch.Tensor:
    """Multires noise from given low-resolution layers: noise + Σᵢ upsample(layerᵢ)·discountⁱ, rescaled to unit
    standard deviation over the whole batch (kohya's pyramid_noise_like, bilinear upsampling)."""
    out = noise.clone()
    size = tuple(noise.shape[-2:])
    for i, layer in enumerate(layers):
        up = F.interpolate(layer.to(noise), size=size, mode="bilinear") if tuple(layer.shape[-2:]) != size else layer.to(noise)
        out = out + up * discount**i
    return out / out.std()


def pyramid_sizes(h: int, w: int, scales: list[float]) -> list[tuple[int, int]]:
    """The layers' sizes: (⌊h / rⁱ⌋, ⌊w / rⁱ⌋) at least 1, stopping after the first 1-pixel side (kohya's loop;
    layer 0 is full size since r⁰ = 1)."""
    out = []
    for i, r in enumerate(scales):
        hn, wn = max(1, int(h / (r**i))), max(1, int(w / (r**i)))
        out.append((hn, wn))
        if hn == 1 or wn == 1:
            break
    return out


def multires(noise: torch.Tensor, iterations: int, discount: float, gen: torch.Generator | None) -> torch.Tensor:
    """kohya's multires noise: each iteration i draws a scale r ∈ [2, 4) and a (B, C, h/rⁱ, w/rⁱ) layer."""
    b, c, h, w = noise.shape
    scales = [2.0 + 2.0 * float(x) for x in _rand(gen, noise.device, iterations)]
    layers = [_randn(gen, noise.device, b, c, hn, wn) for hn, wn in pyramid_sizes(h, w, scales)]
    return pyramid(noise, layers, discount)


@dataclass(frozen=True)
class NoiseOptions:
    """The train.* keys this module reads (a TrainSpec has them all under the same names)."""

    noise_offset: float = 0.0
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int | None = None
    multires_noise_discount: float = 0.3
    ip_noise_gamma: float | None = None
    ip_noise_gamma_random_strength: bool = False

    @classmethod
    def of(cls, train: Any) -> "NoiseOptions":
        return cls(**{k: getattr(train, k) for k in cls.__dataclass_fields__})


def sample_noise(latents: torch.Tensor, o: NoiseOptions, gen: torch.Generator | None) -> torch.Tensor:
    """The noise of one batch (kohya's get_noise_noisy_latents_and_timesteps, up to the timesteps)."""
    dev = latents.device
    noise = _randn(gen, dev, *latents.shape)
    if o.noise_offset:
        offset: Any = o.noise_offset
        if o.noise_offset_random_strength:
            offset = _rand(gen, dev, 1) * o.noise_offset
        strength = offset_strength(latents, offset, o.adaptive_noise_scale)
        noise = with_offset(noise, strength, _randn(gen, dev, latents.shape[0], latents.shape[1], 1, 1))
    if o.multires_noise_iterations:
        noise = multires(noise, o.multires_noise_iterations, o.multires_noise_discount, gen)
    return noise


def perturbed(noise: torch.Tensor, o: NoiseOptions, gen: torch.Generator | None) -> torch.Tensor:
    """The noise the noisy latents are made with: noise + γ·ε′ under input perturbation (ip_noise_gamma,
    arXiv 2301.11706; γ drawn uniformly in [0, ip_noise_gamma) with random strength). The target keeps the
    unperturbed noise."""
    if not o.ip_noise_gamma:
        return noise
    gamma: Any = o.ip_noise_gamma
    if o.ip_noise_gamma_random_strength:
        gamma = _rand(gen, noise.device, 1) * o.ip_noise_gamma
    return noise + gamma * _randn(gen, noise.device, *noise.shape)
