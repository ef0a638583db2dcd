"""The math of one training step, on tensors only: noise, timesteps, forward, target, loss weighting.

`diffusion_step` is the whole of it, in order. It knows nothing of datasets, caches, optimizers or
processes: it takes a batch's latents and UNet conditioning, the UNet and noise scheduler, and a
generator that fixes its random draws, and returns the loss. Every DDPM family runs the same function;
they differ only in the denoiser call and the conditioning they pass (lorafw/archs/).

Each stage is its own small function, delegating to the formulas in lorafw/objective/ (kohya's options,
restated and tested there), so an option that changes one stage changes that function and nothing else:

    sample_noise → sample_timesteps → add_noise (input perturbation) → UNet → target (ε or v)
    → per_sample_loss (l2 | l1 | huber | smooth_l1, mask) → apply_loss_weights (samples, min-SNR, v-like, debiased)

A rectified-flow run (prediction "flow": Anima, rectified-flow SDXL) takes `flow_step` instead, over
objective/flow.py's flow_loss: noise → σ → x_t = (1−σ)x0 + σε → denoiser(x_t, σ·scale) → against ε − x0.
`training_step` picks the one the run's StepConfig names.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, ContextManager

import torch

from lorafw.objective import flow as F
from lorafw.objective import loss as L
from lorafw.objective import noise as N
from lorafw.objective.schedule import snr_table
from lorafw.objective.schedule import target as objective_target
from lorafw.objective.timesteps import sample_timesteps as draw_timesteps


@dataclass(frozen=True)
class StepConfig(N.NoiseOptions, L.LossOptions, F.FlowOptions):
    """What the step math reads: the prediction type the run trains (config/prediction.py resolves it from
    the spec and the checkpoint), the noise, loss and flow options (declared once, in objective/noise.py,
    objective/loss.py and objective/flow.py), the timestep range — the spec's train.* keys, under their names —
    and, for flow, the scale of the time the family's denoiser takes (Anima σ, a UNet σ·1000)."""

    prediction: str = "epsilon"
    min_timestep: int | None = None
    max_timestep: int | None = None
    flow_timestep_scale: float = 1.0

    @classmethod
    def from_spec(cls, train: Any, prediction: str = "epsilon", flow_timestep_scale: float = 1.0) -> "StepConfig":
        names = [f.name for f in dataclasses.fields(cls) if f.name not in ("prediction", "flow_timestep_scale")]
        return cls(prediction=prediction, flow_timestep_scale=flow_timestep_scale,
                   **{k: getattr(train, k) for k in names})

    @classmethod
    def plain(cls, prediction: str = "epsilon", flow_timestep_scale: float = 1.0) -> "StepConfig":
        """Validation's: plain noise over every timestep (flow: σ uniform in [0, 1]), unweighted MSE, so the
        number is comparable across runs whatever options the training used."""
        return cls(prediction=prediction, flow_timestep_scale=flow_timestep_scale, timestep_sampling="uniform",
                   weighting_scheme="none")

    @property
    def v(self) -> bool:
        return self.prediction == "v_prediction"

    @property
    def flow(self) -> bool:
        return self.prediction == "flow"


PLAIN = StepConfig()  # validation of an ε / v run (StepConfig.plain gives a flow run's)


@dataclass
class StepOutput:
    loss: torch.Tensor  # the batch's mean loss (what is back-propagated), still on the device
    per_sample: torch.Tensor  # each sample's weighted loss
    timesteps: torch.Tensor


def sample_noise(latents: torch.Tensor, gen: torch.Generator, cfg: StepConfig = PLAIN) -> torch.Tensor:
    """Gaussian noise; with kohya's noise_offset (random strength, adaptive scale) and multires noise."""
    return N.sample_noise(latents, N.NoiseOptions.of(cfg), gen)


def sample_timesteps(n: int, scheduler: Any, gen: torch.Generator, device: torch.device,
                     cfg: StepConfig = PLAIN) -> torch.Tensor:
    """One training timestep per sample, uniform over [min_timestep, max_timestep) (the whole schedule unset)."""
    return draw_timesteps(n, cfg.min_timestep, cfg.max_timestep, gen, device, scheduler.config.num_train_timesteps)


def add_noise(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
              gen: torch.Generator, cfg: StepConfig = PLAIN) -> torch.Tensor:
    """The UNet's input: the latents noised at their timesteps; under ip_noise_gamma with perturbed noise."""
    return scheduler.add_noise(latents, N.perturbed(noise, N.NoiseOptions.of(cfg), gen), timesteps)


def target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
           prediction: str = "epsilon") -> torch.Tensor:
    """What the UNet is trained to predict: the noise (ε) or the velocity √ᾱ·ε − √(1−ᾱ)·x₀ (v)."""
    return objective_target(scheduler, prediction, latents, noise, timesteps)


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                    timesteps: torch.Tensor | None = None, scheduler: Any = None, cfg: StepConfig = PLAIN) -> torch.Tensor:
    """Per-sample loss of the configured type (kohya's l2 | l1 | huber | smooth_l1), masked per latent pixel
    (kohya's masked_loss: the mean is over all pixels). Huber thresholds need the timesteps and scheduler."""
    if timesteps is None:
        timesteps = torch.zeros(pred.shape[0], dtype=torch.long, device=pred.device)
    ac = scheduler.alphas_cumprod if scheduler is not None else None
    T = scheduler.config.num_train_timesteps if scheduler is not None else 1000
    return L.unweighted(pred, target, timesteps, L.LossOptions.of(cfg), ac, T, mask)


def apply_loss_weights(loss: torch.Tensor, timesteps: torch.Tensor, cfg: StepConfig = PLAIN,
                       weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weights (regularisation images: prior_loss_weight), then kohya's SNR weights: min-SNR-γ
    (min(SNR, γ)/SNR for ε, /(SNR+1) for v), scale_v_pred_loss_like_noise_pred, v_pred_like_loss, debiased."""
    return L.weighted(loss, timesteps, L.LossOptions.of(cfg), cfg.v, snr_table(), weights)


def diffusion_step(denoise: Callable[..., torch.Tensor], scheduler: Any, latents: torch.Tensor, cond: dict[str, Any],
                   gen: torch.Generator, cfg: StepConfig = PLAIN, *, mask: torch.Tensor | None = None,
                   weights: torch.Tensor | None = None, dtype: torch.dtype = torch.float32,
                   autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> StepOutput:
    """The loss of one batch: noise the latents at random timesteps and score the denoiser's prediction.

    `denoise(x_t, t, cond)` is the family's denoiser call (archs/protocol.py); `latents`: (B, C, h, w) scaled
    latents; `cond`: its conditioning (encoder_hidden_states, and SDXL's added_cond_kwargs); `scheduler`: the run's noise schedule (its prediction type and ZTSNR betas);
    `gen` draws the noise and timesteps (the same generator state gives the same loss); `mask` (B, 1, h, w)
    weights latent pixels, `weights` (B,) samples; `dtype` is the UNet's weight dtype and `autocast` the
    mixed-precision context the forward pass runs in."""
    device = latents.device
    noise = sample_noise(latents, gen, cfg)
    timesteps = sample_timesteps(latents.shape[0], scheduler, gen, device, cfg)
    noisy = add_noise(scheduler, latents, noise, timesteps, gen, cfg)
    with autocast():
        pred = denoise(noisy.to(dtype), timesteps, cond)
    loss = per_sample_loss(pred, target(scheduler, latents, noise, timesteps, cfg.prediction), mask, timesteps, scheduler, cfg)
    loss = apply_loss_weights(loss, timesteps, cfg, weights)
    return StepOutput(loss=loss.mean(), per_sample=loss, timesteps=timesteps)


def flow_step(denoise: Callable[..., torch.Tensor], latents: torch.Tensor, cond: dict[str, object],
              gen: torch.Generator,
              cfg: StepConfig, *, mask: torch.Tensor | None = None, weights: torch.Tensor | None = None,
              dtype: torch.dtype = torch.float32,
              autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> StepOutput:
    """The loss of one batch under rectified flow (objective/flow.py flow_loss, sd-scripts' order of draws): the
    denoiser gets x_t in its weight dtype and t = σ·cfg.flow_timestep_scale, under the autocast context."""
    def model(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with autocast():
            return denoise(x_t.to(dtype), t, cond)

    out = F.flow_loss(model, latents, gen, F.options_of(cfg), L.LossOptions.of(cfg), mask=mask, weights=weights,
                      timestep_scale=cfg.flow_timestep_scale)
    return StepOutput(loss=out.loss, per_sample=out.per_sample, timesteps=out.timesteps)


def training_step(denoise: Callable[..., torch.Tensor], scheduler: object, latents: torch.Tensor,
                  cond: dict[str, object], gen: torch.Generator, cfg: StepConfig = PLAIN, *,
                  mask: torch.Tensor | None = None, weights: torch.Tensor | None = None,
                  dtype: torch.dtype = torch.float32,
                  autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> StepOutput:
    """The run's step: flow_step for a rectified-flow run, diffusion_step (ε / v on `scheduler`) otherwise."""
    if cfg.flow:
        return flow_step(denoise, latents, cond, gen, cfg, mask=mask, weights=weights, dtype=dtype, autocast=autocast)
    return diffusion_step(denoise, scheduler, latents, cond, gen, cfg, mask=mask, weights=weights, dtype=dtype,
                          autocast=autocast)
