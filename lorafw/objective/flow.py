"""Rectified flow, the objective of flow-matching DiTs (Anima, FLUX): kohya sd-scripts' definitions,
restated from library/flux_train_utils.py (get_noisy_model_input_and_timesteps, time_shift, get_lin_function,
compute_density_for_timestep_sampling), library/anima_train_utils.py (compute_loss_weighting_for_anima,
do_sample) and anima_train_network.py (get_noise_pred_and_target).

    x_t = (1 − σ)·x0 + σ·ε,   target = ε − x0 (the velocity from data to noise),   σ ∈ [0, 1], 1 = pure noise.

The denoiser receives t = σ·timestep_scale: Anima takes σ itself (scale 1), FLUX/SD3-style models σ·1000.
Draw order (the same as the DDPM step's, lorafw/trainers/step.py): noise, then σ, then the input perturbation.
What sd-scripts' flow path does not apply, and neither does this module: noise offset, multires noise,
min/max timestep, min-SNR and the other SNR weights (sd-scripts' Anima and FLUX trainers skip them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from lorafw.objective import loss as L
from lorafw.objective import noise as N
from lorafw.objective.schedule import NUM_TRAIN_TIMESTEPS

TIMESTEP_SAMPLINGS = ("sigma", "uniform", "sigmoid", "shift", "flux_shift")  # sd-scripts' --timestep_sampling
DENSITIES = ("logit_normal", "mode")  # weighting_scheme values that shape "sigma" sampling instead of weighting
LOSS_WEIGHTINGS = ("sigma_sqrt", "cosmap")  # weighting_scheme values that weight the loss by σ
WEIGHTING_SCHEMES = ("uniform", "none", *LOSS_WEIGHTINGS, *DENSITIES)  # sd-scripts' --weighting_scheme
FLUX_BASE_SHIFT, FLUX_MAX_SHIFT = 0.5, 1.15  # mu at image_seq_len 256 and 4096 (get_lin_function's defaults)
ANIMA_SAMPLE_SHIFT = 3.0  # anima_train_utils' sample-image flow_shift default (prompt option --fs)


@dataclass(frozen=True)
class FlowOptions:
    """sd-scripts' flow keys, under their names; defaults are Anima's (anima_train_utils.py and train_util's
    add_dit_training_arguments). FLUX's differ: timestep_sampling "sigma", discrete_flow_shift 3.0."""

    timestep_sampling: str = "sigmoid"
    sigmoid_scale: float = 1.0  # σ = sigmoid(scale·n): larger spreads σ towards 0 and 1
    discrete_flow_shift: float = 1.0  # "shift" sampling, and the shifted table "sigma" sampling indexes
    weighting_scheme: str = "uniform"
    logit_mean: float = 0.0  # "sigma" with weighting_scheme logit_normal
    logit_std: float = 1.0
    mode_scale: float = 1.29  # "sigma" with weighting_scheme mode
    ip_noise_gamma: float | None = None
    ip_noise_gamma_random_strength: bool = False

    def __post_init__(self) -> None:
        if self.timestep_sampling not in TIMESTEP_SAMPLINGS:
            raise ValueError(f"timestep_sampling {self.timestep_sampling!r} is not one of {', '.join(TIMESTEP_SAMPLINGS)}")
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            raise ValueError(f"weighting_scheme {self.weighting_scheme!r} is not one of {', '.join(WEIGHTING_SCHEMES)}")

    def noise_options(self) -> N.NoiseOptions:
        """The input perturbation, the one DDPM noise option sd-scripts' flow path applies."""
        return N.NoiseOptions(ip_noise_gamma=self.ip_noise_gamma,
                              ip_noise_gamma_random_strength=self.ip_noise_gamma_random_strength)


def options_of(train: object) -> FlowOptions:
    """The flow options of anything carrying them under their names (a TrainSpec, a StepConfig)."""
    return FlowOptions(**{k: getattr(train, k) for k in FlowOptions.__dataclass_fields__})


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = s·σ/(1 + (s − 1)·σ): s > 1 moves σ towards 1 (noisier), s = 1 is the identity; 0 and 1 stay fixed."""
    return sigmas * shift / (1 + (shift - 1) * sigmas)


def flux_mu(image_seq_len: int, base_shift: float = FLUX_BASE_SHIFT, max_shift: float = FLUX_MAX_SHIFT) -> float:
    """FLUX's resolution-dependent μ: the line through (256, base_shift) and (4096, max_shift) (get_lin_function)."""
    m = (max_shift - base_shift) / (4096 - 256)
    return m * image_seq_len + (base_shift - m * 256)


def time_shift(mu: float, exponent: float, t: torch.Tensor) -> torch.Tensor:
    """FLUX's time shift e^μ/(e^μ + (1/t − 1)^exponent); with exponent 1 it is shift_sigmas with s = e^μ."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** exponent)


def image_seq_len_of(latents: torch.Tensor) -> int:
    """The DiT's token count for a 2×2 patch, (h//2)·(w//2), as flux_shift reads it from the latents."""
    return (latents.shape[-2] // 2) * (latents.shape[-1] // 2)


def density(batch: int, options: FlowOptions, gen: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """u ∈ [0, 1] for "sigma" sampling (compute_density_for_timestep_sampling): logit_normal sigmoid(m + s·n),
    mode 1 − u − scale·(cos²(πu/2) − 1 + u), anything else uniform."""
    o = options
    if o.weighting_scheme == "logit_normal":
        n = torch.randn((batch,), generator=gen, device=device)
        return torch.sigmoid(o.logit_mean + o.logit_std * n)
    u = torch.rand((batch,), generator=gen, device=device)
    if o.weighting_scheme == "mode":
        return 1 - u - o.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    return u


def table_sigmas(indices: torch.Tensor, shift: float, num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """σ of sd-scripts' FlowMatchEulerDiscreteScheduler table at `indices`: shift((T − i)/T), from 1 at i = 0
    down to shift(1/T); the table never reaches 0."""
    return shift_sigmas((num_train_timesteps - indices).to(torch.float32) / num_train_timesteps, shift)


def sample_sigmas(batch: int, options: FlowOptions, gen: torch.Generator | None, device: torch.device,
                  image_seq_len: int | None = None) -> torch.Tensor:
    """(batch,) float32 σ in [0, 1], drawn as sd-scripts' get_noisy_model_input_and_timesteps does:
    uniform U[0, 1); sigmoid sigmoid(scale·n); shift the sigmoid draw shifted by discrete_flow_shift;
    flux_shift the sigmoid draw time-shifted by μ(image_seq_len); sigma the scheduler table (shifted by
    discrete_flow_shift) at index ⌊u·1000⌋, u from `density` (clamped to the table: sd-scripts indexes past its
    end when u = 1). One draw of `batch` numbers from `gen` in every mode."""
    o = options
    if o.timestep_sampling == "uniform":
        return torch.rand((batch,), generator=gen, device=device)
    if o.timestep_sampling == "sigma":
        u = density(batch, o, gen, device)
        idx = (u * NUM_TRAIN_TIMESTEPS).long().clamp(0, NUM_TRAIN_TIMESTEPS - 1)
        return table_sigmas(idx, o.discrete_flow_shift)
    sigmas = torch.sigmoid(o.sigmoid_scale * torch.randn((batch,), generator=gen, device=device))
    if o.timestep_sampling == "shift":
        return shift_sigmas(sigmas, o.discrete_flow_shift)
    if o.timestep_sampling == "flux_shift":
        if image_seq_len is None:
            raise ValueError("flux_shift sampling needs the image sequence length (image_seq_len_of(latents))")
        return time_shift(flux_mu(image_seq_len), 1.0, sigmas)
    return sigmas


def noisy_latents(x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_t = (1 − σ)·x0 + σ·ε, one σ per sample: x0 at σ = 0, the noise at σ = 1."""
    s = sigmas.to(x0.device, x0.dtype).view(-1, *([1] * (x0.ndim - 1)))
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What the model predicts: dx_t/dσ = ε − x0 (Euler sampling steps x += (σ_next − σ)·prediction)."""
    return noise - x0


def loss_weights(sigmas: torch.Tensor, scheme: str) -> torch.Tensor:
    """Per-sample loss weights (compute_loss_weighting_for_sd3 / _for_anima): sigma_sqrt σ⁻² (infinite at σ = 0,
    as sd-scripts), cosmap 2/(π·(1 − 2σ + 2σ²)), every other scheme 1 (logit_normal and mode shape sampling)."""
    if scheme == "sigma_sqrt":
        return (sigmas**-2.0).float()
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    return torch.ones_like(sigmas)


def sampling_sigmas(steps: int, shift: float = ANIMA_SAMPLE_SHIFT, device: torch.device | None = None) -> torch.Tensor:
    """The Euler sampler's `steps + 1` σ, 1 → 0: linspace(1, 0) shifted (anima_train_utils.do_sample; step i
    calls the model at σ_i and moves x by (σ_{i+1} − σ_i)·prediction)."""
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


@dataclass
class FlowOutput:
    loss: torch.Tensor  # the batch's mean loss (what is back-propagated)
    per_sample: torch.Tensor  # each sample's weighted loss
    sigmas: torch.Tensor  # (B,) σ drawn
    timesteps: torch.Tensor  # (B,) what the model received, σ·timestep_scale


def flow_loss(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], latents: torch.Tensor,
              gen: torch.Generator | None, options: FlowOptions = FlowOptions(), loss: str | L.LossOptions = "l2",
              mask: torch.Tensor | None = None, weights: torch.Tensor | None = None,
              timestep_scale: float = 1.0) -> FlowOutput:
    """One step's loss, in sd-scripts' order (train_network.process_batch with anima's get_noise_pred_and_target):
    noise → σ → x_t (input perturbation on the noise) → model_fn(x_t, σ·timestep_scale) → elementwise loss
    against ε − x0 (unperturbed ε) → × σ weighting → × mask → mean per sample → × per-sample weights → mean.

    `loss`: a loss type, or LossOptions for Huber's threshold (constant, or exponential read at the model's t
    as sd-scripts does; the snr schedule and SNR weights are DDPM's and raise). `mask` (B, 1, h, w) weights
    latent pixels, `weights` (B,) samples. Casting and autocast are model_fn's business."""
    o = loss if isinstance(loss, L.LossOptions) else L.LossOptions(loss_type=loss, huber_schedule="constant")
    _check_flow_loss(o)
    b = latents.shape[0]
    noise = N.sample_noise(latents, N.NoiseOptions(), gen)
    sigmas = sample_sigmas(b, options, gen, latents.device, image_seq_len_of(latents))
    x_t = noisy_latents(latents, N.perturbed(noise, options.noise_options(), gen), sigmas)
    t = sigmas * timestep_scale
    pred = model_fn(x_t, t)
    c = None
    if o.loss_type in ("huber", "smooth_l1"):
        c = L.huber_threshold(t, o.huber_schedule, o.huber_c, o.huber_scale, torch.empty(0), NUM_TRAIN_TIMESTEPS)
    per = L.elementwise(pred.float(), velocity_target(latents, noise).float(), o.loss_type, c)
    per = per * loss_weights(sigmas, options.weighting_scheme).view(-1, *([1] * (per.ndim - 1))).to(per)
    if mask is not None:
        per = per * mask.to(per.device, per.dtype)
    per = per.mean(dim=tuple(range(1, per.ndim)))
    if weights is not None:
        per = per * weights.to(per.device, per.dtype)
    return FlowOutput(loss=per.mean(), per_sample=per, sigmas=sigmas, timesteps=t)


def _check_flow_loss(o: L.LossOptions) -> None:
    if o.loss_type in ("huber", "smooth_l1") and o.huber_schedule == "snr":
        raise ValueError("huber_schedule snr reads a DDPM schedule's SNR, which rectified flow has not "
                         "(sd-scripts raises too); use huber_schedule constant or exponential")
    snr = [k for k in ("min_snr_gamma", "scale_v_pred_loss_like_noise_pred", "v_pred_like_loss",
                       "debiased_estimation_loss") if getattr(o, k)]
    if snr:
        raise ValueError(f"{', '.join(snr)}: DDPM SNR weights, which sd-scripts' flow trainers do not apply; "
                         "turn them off, or use weighting_scheme (sigma_sqrt, cosmap) for flow")
