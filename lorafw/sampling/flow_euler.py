"""The rectified-flow sampler every flow family shares (Anima, rectified-flow SDXL): Euler steps down a shifted σ
schedule, with classifier-free guidance. Pure tensor code: the family passes its denoiser as `velocity`.

    σ_0 = 1 > σ_1 > … > σ_N = 0   (objective/flow.py sampling_sigmas: linspace(1, 0, N+1), shifted)
    x ← x + (σ_{i+1} − σ_i) · v(x, σ_i),   v = v_uncond + cfg · (v_cond − v_uncond)

sd-scripts' anima_train_utils.do_sample and diffusers' FlowMatchEulerDiscreteScheduler.step take the same step;
ComfyUI's "euler" sampler on a ModelSamplingDiscreteFlow model does too. There are no ancestral (noise-adding)
variants: a flow model's samples use Euler whatever sample.sampler names (its DDPM samplers do not apply).
"""

from __future__ import annotations

from typing import Callable

import torch

from lorafw.objective.flow import sampling_sigmas

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (2B, …), σ (2B,)) → v, uncond rows first


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """x at σ = 1: float32 noise from a CPU generator, so a seed gives the same image on any device."""
    return torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def guided(v: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """CFG on a batch holding the unconditional half first: v_u + scale · (v_c − v_u)."""
    v_u, v_c = v.chunk(2)
    return v_u + cfg_scale * (v_c - v_u)


@torch.no_grad()
def sample(velocity: Velocity, noise: torch.Tensor, steps: int, shift: float, cfg_scale: float) -> torch.Tensor:
    """Latents at σ = 0 from `noise` at σ = 1 in `steps` Euler steps; `velocity` is called on the batch doubled
    (unconditional first) when cfg_scale ≠ 1, else on the conditional half alone (as diffusers skips it)."""
    sigmas = sampling_sigmas(steps, shift, device=noise.device)
    x = noise
    for i in range(steps):
        s = sigmas[i]
        if cfg_scale == 1.0:
            v = velocity(x, s.expand(x.shape[0]))
        else:
            v = guided(velocity(torch.cat([x, x]), s.expand(2 * x.shape[0])), cfg_scale)
        x = x + (sigmas[i + 1] - s) * v.float()
    return x
