"""The training loss: kohya's loss types, Huber schedules and per-timestep weights (train_util.py,
custom_train_functions.py), restated. kohya's order, kept here:
  element-wise loss (l2 | l1 | huber | smooth_l1) → × mask → mean per sample → × per-sample weight
  (regularisation images) → min-SNR → scale_v_pred_loss_like_noise_pred → v_pred_like_loss → debiased.
`snr` below is per sample, from schedule.snr_table (the original schedule's SNR, as kohya's all_snr).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

SNR_CAP = 1000.0  # kohya caps SNR here before the v-like and debiased weights (SNR(0) ≈ 1175 on SD's schedule)


def huber_threshold(timesteps: torch.Tensor, schedule: str, huber_c: float, huber_scale: float,
                    alphas_cumprod: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """Per-sample Huber threshold c(t) (kohya's get_huber_threshold_if_needed):
    constant: huber_c·scale; exponential: scale·exp(ln(huber_c)·t/T), 1·scale at t = 0 down to huber_c·scale at
    t = T; snr: (1 − huber_c)/(1 + σ_t)² + huber_c with σ_t = √((1 − ᾱ_t)/ᾱ_t) (no scale there, as kohya)."""
    t = timesteps.to(torch.float32)
    if schedule == "constant":
        return torch.full(timesteps.shape, huber_c * huber_scale, device=timesteps.device)
    if schedule == "exponential":
        alpha = -math.log(huber_c) / num_train_timesteps
        return torch.exp(-alpha * t) * huber_scale
    if schedule == "snr":
        ac = alphas_cumprod.to(timesteps.device)[timesteps.long()]
        sigmas = ((1.0 - ac) / ac) ** 0.5
        return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
    raise ValueError(f"unknown huber schedule {schedule!r}")


def elementwise(pred: torch.Tensor, target: torch.Tensor, loss_type: str, c: torch.Tensor | None = None) -> torch.Tensor:
    """Unreduced loss (kohya's conditional_loss): l2 = (p − y)², l1 = |p − y|, huber = 2c(√((p − y)² + c²) − c),
    smooth_l1 = 2(√((p − y)² + c²) − c), with c per sample."""
    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    if c is None:
        raise ValueError(f"loss_type {loss_type} needs a Huber threshold")
    c = c.to(pred).view(-1, *([1] * (pred.ndim - 1)))
    root = torch.sqrt((pred - target) ** 2 + c**2) - c
    if loss_type == "huber":
        return 2 * c * root
    if loss_type == "smooth_l1":
        return 2 * root
    raise ValueError(f"unknown loss type {loss_type!r}")


def min_snr_weight(snr: torch.Tensor, gamma: float, v_prediction: bool) -> torch.Tensor:
    """min(SNR, γ)/SNR for ε; min(SNR, γ)/(SNR + 1) for v (kohya's apply_snr_weight)."""
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    return clipped / (snr + 1) if v_prediction else clipped / snr


def v_like_scale(snr: torch.Tensor) -> torch.Tensor:
    """SNR/(SNR + 1) with SNR capped at 1000 (kohya's get_snr_scale): a v loss × this ≈ the ε loss."""
    s = torch.minimum(snr, torch.full_like(snr, SNR_CAP))
    return s / (s + 1)


def debiased_weight(snr: torch.Tensor, v_prediction: bool) -> torch.Tensor:
    """1/√SNR for ε, 1/(SNR + 1) for v, SNR capped at 1000 (kohya's apply_debiased_estimation)."""
    s = torch.minimum(snr, torch.full_like(snr, SNR_CAP))
    return 1 / (s + 1) if v_prediction else 1 / torch.sqrt(s)


@dataclass(frozen=True)
class LossOptions:
    """The train.* keys this module reads (same names on TrainSpec)."""

    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    min_snr_gamma: float | None = None
    scale_v_pred_loss_like_noise_pred: bool = False
    v_pred_like_loss: float | None = None
    debiased_estimation_loss: bool = False

    @classmethod
    def of(cls, train: Any) -> "LossOptions":
        return cls(**{k: getattr(train, k) for k in cls.__dataclass_fields__})


def unweighted(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, o: LossOptions,
               alphas_cumprod: torch.Tensor, num_train_timesteps: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(batch,) losses before any weighting: the loss type's element-wise loss (Huber threshold per sample from
    `alphas_cumprod`, the schedule the noise was added with), × `mask` per latent pixel, mean per sample."""
    pred, target = pred.float(), target.float()
    c = None
    if o.loss_type in ("huber", "smooth_l1"):
        c = huber_threshold(timesteps, o.huber_schedule, o.huber_c, o.huber_scale, alphas_cumprod, num_train_timesteps)
    loss = elementwise(pred, target, o.loss_type, c)
    if mask is not None:
        loss = loss * mask.to(loss.device, loss.dtype)
    return loss.mean(dim=tuple(range(1, loss.ndim)))


def weighted(loss: torch.Tensor, timesteps: torch.Tensor, o: LossOptions, v_prediction: bool, snr: torch.Tensor,
             weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample weights (regularisation images: prior_loss_weight), then kohya's SNR weights in its order.
    `snr` is the whole table (schedule.snr_table), indexed by the timesteps here."""
    if weights is not None:
        loss = loss * weights.to(loss.device, loss.dtype)
    if not (o.min_snr_gamma or o.scale_v_pred_loss_like_noise_pred or o.v_pred_like_loss or o.debiased_estimation_loss):
        return loss
    s = snr.to(loss.device)[timesteps.to(loss.device).long()]
    if o.min_snr_gamma:
        loss = loss * min_snr_weight(s, o.min_snr_gamma, v_prediction)
    if o.scale_v_pred_loss_like_noise_pred:
        loss = loss * v_like_scale(s)
    if o.v_pred_like_loss:
        loss = loss + loss / v_like_scale(s) * o.v_pred_like_loss
    if o.debiased_estimation_loss:
        loss = loss * debiased_weight(s, v_prediction)
    return loss


def per_sample(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, o: LossOptions, v_prediction: bool,
               snr: torch.Tensor, alphas_cumprod: torch.Tensor, num_train_timesteps: int,
               mask: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """(batch,) losses in kohya's order (module docstring): `unweighted`, then `weighted`."""
    loss = unweighted(pred, target, timesteps, o, alphas_cumprod, num_train_timesteps, mask)
    return weighted(loss, timesteps, o, v_prediction, snr, weights)
