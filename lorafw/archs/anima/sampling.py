"""Anima's sample images: the flow Euler sampler of sd-scripts' anima_train_utils (do_sample and
_sample_image_inference), step for step, so a sample here is the image sd-scripts would render at that seed.

    size rounded down to a multiple of 16 (at least 64) → prompt (and, with CFG > 1, negative prompt) encoded and
    passed through the LLM adapter once → noise: float32 from a CPU generator seeded with the prompt's seed, then in
    the DiT's dtype → σ = linspace(1, 0, steps + 1) shifted → each step: the velocity at σ_i (the prompt's, then the
    negative's: neg + cfg·(pos − neg), in float32), x ← x + (σ_{i+1} − σ_i)·v → the codec decodes → (x + 1)/2
    clamped, × 255, truncated to uint8.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, cast

import torch
from PIL import Image

from lorafw.archs.protocol import Architecture, Models
from lorafw.config.prompts import SamplePrompt
from lorafw.config.spec import TrainSpec
from lorafw.objective.flow import ANIMA_SAMPLE_SHIFT, sampling_sigmas
from lorafw.sampling.flow_euler import initial_noise

if TYPE_CHECKING:
    from lorafw.archs.anima.dit import AnimaDenoiser
    from lorafw.placement import Parking


class FlowRenderer:
    """`render(prompt, sampler)` for samples and the grid. Rectified flow has one sampler here, Euler (what
    sd-scripts samples Anima with): `sampler` names DDPM samplers and is accepted and ignored. The σ shift is the
    prompt's `flow_shift` (--fs, sample.flow_shift), else 3.0 (sd-scripts' default).

    The same Euler step as the shared sampling/flow_euler.sample, kept here in sd-scripts' own order: the prompt's
    and the negative's velocities as two passes, x back in the DiT's dtype after every step, so a bf16 sample is
    the one sd-scripts renders."""

    def __init__(self, arch: Architecture, models: Models, train: TrainSpec | None, device: torch.device,
                 parking: Parking | None = None) -> None:
        self.arch, self.models, self.train, self.device, self.parking = arch, models, train, device, parking
        self.denoiser = cast("AnimaDenoiser", models.denoiser)  # Models types it as a Module

    @torch.no_grad()
    def render(self, p: SamplePrompt, sampler: str = "euler") -> Image.Image:
        m = self.models
        borrowed = (self.parking.borrow(self.device, m.vae, *m.text_encoders) if self.parking is not None
                    else contextlib.nullcontext())
        with borrowed:
            return self._render(p)

    def _context(self, prompt: str, dtype: torch.dtype) -> torch.Tensor:
        text = self.arch.encode_text(self.models, [prompt], self.train)
        cond = self.arch.conditioning(text, None, [0], [False])
        cond["prompt_embeds"] = cond["prompt_embeds"].to(self.device, dtype)
        return self.denoiser.context(**{k: v.to(self.device) for k, v in cond.items()})

    def _render(self, p: SamplePrompt) -> Image.Image:
        denoiser = self.denoiser
        dtype = next(denoiser.parameters()).dtype
        height, width = max(64, p.height - p.height % 16), max(64, p.width - p.width % 16)
        ctx = self._context(p.prompt, dtype)
        cfg = p.cfg_scale > 1.0
        neg = self._context(p.negative, dtype) if cfg else None
        x = initial_noise((1, 16, height // 8, width // 8), p.seed).to(dtype).to(self.device)
        shift = p.flow_shift if p.flow_shift is not None else ANIMA_SAMPLE_SHIFT
        sigmas = sampling_sigmas(p.steps, shift).to(self.device, dtype)
        for i in range(p.steps):
            t = sigmas[i].unsqueeze(0)
            v = denoiser.velocity(x, t, ctx).float()
            if neg is not None:
                v_neg = denoiser.velocity(x, t, neg).float()
                v = v_neg + p.cfg_scale * (v - v_neg)
            x = (x + v * (sigmas[i + 1] - sigmas[i])).to(dtype)
        return self.decode(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> Image.Image:
        vae = self.models.vae
        img = vae.decode(z.to(vae.device, vae.dtype)).sample[0].float()
        img = ((img.clamp(-1, 1) + 1) / 2).clamp(0, 1)
        return Image.fromarray((255.0 * img).permute(1, 2, 0).cpu().numpy().astype("uint8"))
