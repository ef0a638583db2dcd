"""The DDPM noise schedule a run trains with, and the SNR its loss weights read.

Every SD1.5/SDXL model (NovelAI animefull, Pony, Illustrious, NoobAI) was trained on the same scaled-linear
DDPM schedule. Zero terminal SNR (Lin et al. 2023, arXiv 2305.08891) rescales its betas so the last timestep
is pure noise; diffusers' `rescale_betas_zero_snr` does it with the same formula as kohya's
`fix_noise_scheduler_betas_for_zero_terminal_snr`.

The SNR the loss weights use (min-SNR, scale_v_pred_loss_like_noise_pred, v_pred_like_loss, debiased) is, as in
kohya, the *original* schedule's: kohya computes `all_snr` before the ZTSNR rescale. It also keeps the weights
finite at the last timestep, whose rescaled SNR is 0 (ε weights divide by it).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

NUM_TRAIN_TIMESTEPS = 1000


def noise_scheduler(prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> Any:
    """diffusers' DDPMScheduler with the SD schedule (a FlowMatchEulerDiscreteScheduler for rectified flow);
    `add_noise` and `get_velocity` read its (rescaled)
    alphas. `timestep_spacing="trailing"` under ZTSNR: samplers built from this config then start at the
    pure-noise timestep, as the paper requires (with "leading" they would never see it)."""
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    if prediction_type == "flow":  # rectified flow has no β schedule: the step draws σ (objective/flow.py)
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS, shift=1.0)
    return DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        clip_sample=False, steps_offset=1, prediction_type=prediction_type, rescale_betas_zero_snr=zero_terminal_snr,
        timestep_spacing="trailing" if zero_terminal_snr else "leading",
    )


@functools.lru_cache(maxsize=4)
def snr_table() -> torch.Tensor:
    """SNR(t) = ᾱ_t / (1 − ᾱ_t) of the original SD schedule, for t = 0 … 999 (float32, as kohya's all_snr).
    Cached: treat it as read-only."""
    ac = noise_scheduler().alphas_cumprod
    return (torch.sqrt(ac) / torch.sqrt(1.0 - ac)) ** 2


def velocity(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """The v target, v = √ᾱ_t·ε − √(1−ᾱ_t)·x₀ (diffusers' get_velocity, as kohya uses it)."""
    return scheduler.get_velocity(latents, noise, timesteps)


def target(scheduler: Any, prediction: str, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to output: the noise (ε) or the velocity (v). Under input perturbation
    (ip_noise_gamma) `noise` is the unperturbed draw, as in kohya."""
    if prediction == "v_prediction":
        return velocity(scheduler, latents, noise, timesteps)
    return noise
