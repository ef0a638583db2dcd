"""The math of one training step, on tensors only: noise, timesteps, forward, target, loss weighting.

`diffusion_step` is the whole of it, in order. It knows nothing of datasets, caches, optimizers or
processes: it takes a batch's latents and UNet conditioning, the UNet and noise scheduler, and a
generator that fixes its random draws, and returns the loss. SD1.5 and SDXL run the same function;
they differ only in the conditioning they pass (lorafw/trainers/arch.py).

Each stage is its own small function, so an option that changes one stage (another noise, another
prediction target, another weighting) changes that function and nothing else:

    sample_noise → sample_timesteps → scheduler.add_noise → UNet → target → per_sample_loss → apply_loss_weights
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch


@dataclass(frozen=True)
class StepConfig:
    """The spec's knobs the step math reads (train.noise_offset, train.min_snr_gamma)."""

    noise_offset: float = 0.0
    min_snr_gamma: float | None = None

    @classmethod
    def from_spec(cls, train: Any) -> "StepConfig":
        return cls(noise_offset=train.noise_offset, min_snr_gamma=train.min_snr_gamma)


@dataclass
class StepOutput:
    loss: torch.Tensor  # the batch's mean loss (what is back-propagated), still on the device
    per_sample: torch.Tensor  # each sample's weighted loss
    timesteps: torch.Tensor


def sample_noise(shape: torch.Size | tuple[int, ...], gen: torch.Generator, device: torch.device,
                 noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise; with `noise_offset`, plus a per-channel constant (kohya's noise_offset: lets the model
    learn overall brightness)."""
    noise = torch.randn(shape, generator=gen, device=device)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=gen, device=device)
    return noise


def sample_timesteps(n: int, scheduler: Any, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """One training timestep per sample, uniform over the scheduler's range."""
    return torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=gen, device=device)


def target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict: the noise (ε-prediction)."""
    return noise


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample L2 (MSE), masked per latent pixel (kohya's masked_loss: the mean is over all pixels)."""
    loss = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none")
    if mask is not None:
        loss = loss * mask.to(loss.device, loss.dtype)
    return loss.mean(dim=(1, 2, 3))


def apply_loss_weights(loss: torch.Tensor, timesteps: torch.Tensor, scheduler: Any, min_snr_gamma: float | None,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weights (regularisation images: prior_loss_weight), then min-SNR-γ for ε-prediction
    (weight = min(SNR, γ) / SNR)."""
    if weights is not None:
        loss = loss * weights.to(loss.device, loss.dtype)
    if min_snr_gamma:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(scheduler, timesteps).to(loss.device)
        loss = loss * torch.clamp(snr, max=min_snr_gamma) / snr
    return loss


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, scheduler: Any,
                   min_snr_gamma: float | None, mask: torch.Tensor | None = None,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample loss of a prediction: `per_sample_loss` then `apply_loss_weights`."""
    return apply_loss_weights(per_sample_loss(pred, target, mask), timesteps, scheduler, min_snr_gamma, weights)


def diffusion_step(unet: Callable[..., Any], scheduler: Any, latents: torch.Tensor, unet_kwargs: dict[str, Any],
                   gen: torch.Generator, cfg: StepConfig = StepConfig(), *, mask: torch.Tensor | None = None,
                   weights: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                   autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> StepOutput:
    """The loss of one batch: noise the latents at random timesteps and score the UNet's prediction.

    `latents`: (B, 4, h, w) scaled VAE latents; `unet_kwargs`: the conditioning (encoder_hidden_states, and
    SDXL's added_cond_kwargs); `gen` draws the noise and timesteps (the same generator state gives the same
    loss); `mask` (B, 1, h, w) weights latent pixels, `weights` (B,) samples; `dtype` is the UNet's
    weight dtype and `autocast` the mixed-precision context the forward pass runs in."""
    device = latents.device
    noise = sample_noise(latents.shape, gen, device, cfg.noise_offset)
    timesteps = sample_timesteps(latents.shape[0], scheduler, gen, device)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    with autocast():
        pred = unet(noisy.to(dtype), timesteps, **unet_kwargs).sample
    loss = per_sample_loss(pred, target(scheduler, latents, noise, timesteps), mask)
    loss = apply_loss_weights(loss, timesteps, scheduler, cfg.min_snr_gamma, weights)
    return StepOutput(loss=loss.mean(), per_sample=loss, timesteps=timesteps)
