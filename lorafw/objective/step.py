"""One run's objective as the trainers' step function uses it: noise → timesteps → noisy latents → target → loss.

Built once per run from the spec and what the checkpoint declares (prediction.resolve); the step function
calls `draw`, runs the UNet on `draw.noisy`, then `loss`. Every random draw comes from the step's generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lorafw.objective import loss as L
from lorafw.objective import noise as N
from lorafw.objective.maxnorm import Pair, scale_weight_norms
from lorafw.objective.prediction import Resolved
from lorafw.objective.schedule import noise_scheduler, snr_table, target
from lorafw.objective.timesteps import sample_timesteps


@dataclass
class Draw:
    """One batch's random part: the noise (the ε target), timesteps, and the UNet's input."""

    noise: torch.Tensor
    timesteps: torch.Tensor
    noisy: torch.Tensor


class Objective:
    def __init__(self, train: Any, resolved: Resolved) -> None:
        self.resolved = resolved
        self.prediction = resolved.prediction
        self.scheduler = noise_scheduler(resolved.prediction, resolved.zero_terminal_snr)
        self.num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        self.snr = snr_table()
        self.noise = N.NoiseOptions.of(train)
        self.loss_options = L.LossOptions.of(train)
        self.min_timestep, self.max_timestep = train.min_timestep, train.max_timestep
        self.max_norm = train.scale_weight_norms

    def draw(self, latents: torch.Tensor, gen: torch.Generator | None) -> Draw:
        """Noise (offset, multires), timesteps in [min_timestep, max_timestep), and the noisy latents (with
        input perturbation), in kohya's order."""
        noise = N.sample_noise(latents, self.noise, gen)
        t = sample_timesteps(latents.shape[0], self.min_timestep, self.max_timestep, gen, latents.device,
                             self.num_train_timesteps)
        noisy = self.scheduler.add_noise(latents, N.perturbed(noise, self.noise, gen), t)
        return Draw(noise, t, noisy)

    def fixed_draw(self, latents: torch.Tensor, gen: torch.Generator) -> Draw:
        """Validation's draw: plain noise and a timestep over the whole schedule (comparable across runs whatever
        their noise options)."""
        noise = torch.randn(latents.shape, generator=gen, device=latents.device)
        t = torch.randint(0, self.num_train_timesteps, (latents.shape[0],), generator=gen, device=latents.device)
        return Draw(noise, t, self.scheduler.add_noise(latents, noise, t))

    def target(self, latents: torch.Tensor, d: Draw) -> torch.Tensor:
        return target(self.scheduler, self.prediction, latents, d.noise, d.timesteps)

    def loss(self, pred: torch.Tensor, latents: torch.Tensor, d: Draw, mask: torch.Tensor | None = None,
             weights: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample training loss (loss.per_sample: loss type, mask, sample weights, SNR weights)."""
        return L.per_sample(pred, self.target(latents, d), d.timesteps, self.loss_options, self.resolved.v, self.snr,
                            self.scheduler.alphas_cumprod, self.num_train_timesteps, mask, weights)

    def plain_loss(self, pred: torch.Tensor, latents: torch.Tensor, d: Draw) -> torch.Tensor:
        """Validation's loss: unweighted MSE against this objective's target (ε or v)."""
        return torch.nn.functional.mse_loss(pred.float(), self.target(latents, d).float(), reduction="none").mean(dim=(1, 2, 3))

    @torch.no_grad()
    def apply_max_norm(self, network: Any, masters: Any = None) -> dict[str, float] | None:
        """scale_weight_norms after an optimizer step: the logged figures, or None when off."""
        if not self.max_norm:
            return None
        keys_scaled, mean, biggest = scale_weight_norms(adapter_pairs(network, masters), self.max_norm)
        return {"max_norm/keys_scaled": float(keys_scaled), "norm/avg_key_norm": mean, "max_norm/max_key_norm": biggest}


def adapter_pairs(network: Any, masters: Any = None) -> list[Pair]:
    """Each adapter's (down, up, alpha); with full_bf16's fp32 masters those are scaled and the bf16 weights
    follow (the `also` copies)."""
    from lorafw.network.adapter import ADAPTER

    master_of = {id(p): m for p, m in masters.pairs} if masters is not None else {}
    out = []
    for e in network.entries:
        down, up = e.module.lora_A[ADAPTER].weight, e.module.lora_B[ADAPTER].weight
        if id(down) in master_of:
            out.append(Pair(master_of[id(down)], master_of[id(up)], float(e.target.alpha), (down, up)))
        else:
            out.append(Pair(down, up, float(e.target.alpha)))
    return out
