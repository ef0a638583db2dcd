"""Render sample images with a diffusers pipeline over lorafw's own model parts.

The prompt is encoded exactly as in training (clip skip, 75-token windows up to max_token_length, both
SDXL encoders), passed to the pipeline as embeddings; the pipeline samples latents with the chosen
scheduler and a CPU generator seeded per prompt (the same image on any device); lorafw decodes them.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from lorafw.config.prompts import SamplePrompt
from lorafw.errors import LorafwError
from lorafw.models.text import encode_sd15, encode_sdxl, tokenize
from lorafw.outputs.atomic import atomic_write

FLOW_SAMPLE_SHIFT = 3.0  # a rectified-flow SDXL's default sampling shift (docs/models.md: what its makers use)
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "lms": ("LMSDiscreteScheduler", {}),
}


def make_scheduler(sampler: str, noise_scheduler: Any) -> Any:
    """The sampler on the training schedule: the same prediction type (ε or v) and, under zero terminal SNR,
    the rescaled betas with "trailing" timestep spacing, so the first step starts from pure noise at t = 999
    (with "leading" a ZTSNR v-pred model's previews are noise)."""
    import diffusers

    name, extra = SCHEDULERS[sampler]
    cfg = noise_scheduler.config
    ztsnr = bool(cfg.get("rescale_betas_zero_snr", False))
    if ztsnr:
        if sampler == "lms":
            raise LorafwError("sample.sampler=lms has no zero-terminal-SNR schedule, so a ZTSNR model's samples would be "
                              "noise; choose euler_a, euler, ddim or dpmpp_2m")
        extra = {**extra, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    return getattr(diffusers, name).from_config(cfg, **extra)


class Renderer:
    """Renders on `device`. Parts that a trainer parked off the device (the VAE after caching latents, the text
    encoders after caching their outputs) are borrowed onto it for each image through `parking`
    (lorafw.placement.Parking): the pipeline then computes every step where the UNet is."""

    def __init__(self, arch: str, unet: Any, vae: Any, text_encoders: list[Any], tokenizers: list[Any],
                 noise_scheduler: Any, max_token_length: int, clip_skip: int, device: torch.device,
                 parking: Any = None) -> None:
        self.arch, self.unet, self.vae = arch, unet, vae
        self.text_encoders, self.tokenizers = text_encoders, tokenizers
        self.noise_scheduler, self.max_token_length, self.clip_skip = noise_scheduler, max_token_length, clip_skip
        self.device = device
        self.parking = parking
        self._pipes: dict[str, Any] = {}

    def _pipe(self, sampler: str) -> Any:
        if sampler not in self._pipes:
            from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

            sched = make_scheduler(sampler, self.noise_scheduler)
            if self.arch == "sdxl":
                pipe = StableDiffusionXLPipeline(
                    vae=self.vae, text_encoder=self.text_encoders[0], text_encoder_2=self.text_encoders[1],
                    tokenizer=self.tokenizers[0], tokenizer_2=self.tokenizers[1], unet=self.unet, scheduler=sched,
                )
            else:
                pipe = StableDiffusionPipeline(
                    vae=self.vae, text_encoder=self.text_encoders[0], tokenizer=self.tokenizers[0], unet=self.unet,
                    scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                )
            pipe.set_progress_bar_config(disable=True)
            self._pipes[sampler] = pipe
        return self._pipes[sampler]

    @torch.no_grad()
    def _encode(self, texts: list[str]) -> dict[str, torch.Tensor]:
        n = self.max_token_length
        if self.arch == "sdxl":
            states, pooled = encode_sdxl(self.text_encoders[0], self.text_encoders[1], tokenize(self.tokenizers[0], texts, n),
                                         tokenize(self.tokenizers[1], texts, n))
            return {"embeds": states, "pooled": pooled}
        return {"embeds": encode_sd15(self.text_encoders[0], tokenize(self.tokenizers[0], texts, n), self.clip_skip)}

    @torch.no_grad()
    def render(self, p: SamplePrompt, sampler: str = "euler_a") -> Image.Image:
        import contextlib

        borrowed = (self.parking.borrow(self.device, self.vae, *self.text_encoders) if self.parking is not None
                    else contextlib.nullcontext())
        with borrowed:
            return self._render(p, sampler)

    @property
    def flow(self) -> bool:
        """A rectified-flow model (its training schedule is diffusers' flow-matching one): sampled by flow_euler."""
        return type(self.noise_scheduler).__name__.startswith("FlowMatch")

    def _render(self, p: SamplePrompt, sampler: str) -> Image.Image:
        if self.flow:
            return self._render_flow(p)
        pipe = self._pipe(sampler)
        dtype = next(self.unet.parameters()).dtype
        cond, uncond = self._encode([p.prompt]), self._encode([p.negative])
        kwargs: dict[str, Any] = {
            "prompt_embeds": cond["embeds"].to(self.device, dtype),
            "negative_prompt_embeds": uncond["embeds"].to(self.device, dtype),
        }
        if self.arch == "sdxl":
            kwargs["pooled_prompt_embeds"] = cond["pooled"].to(self.device, dtype)
            kwargs["negative_pooled_prompt_embeds"] = uncond["pooled"].to(self.device, dtype)
        latents = pipe(
            num_inference_steps=p.steps, guidance_scale=p.cfg_scale, width=p.width, height=p.height,
            generator=torch.Generator("cpu").manual_seed(p.seed), output_type="latent", **kwargs,
        ).images
        return self.decode(latents)

    def _render_flow(self, p: SamplePrompt) -> Image.Image:
        """A rectified-flow UNet (rectified-flow SDXL): Euler on the shifted σ schedule, the UNet called at
        t = σ·1000 (ComfyUI's ModelSamplingDiscreteFlow multiplier, as trained: the family's flow_timestep_scale)."""
        from lorafw.sampling import flow_euler

        dtype = next(self.unet.parameters()).dtype
        cond, uncond = self._encode([p.prompt]), self._encode([p.negative])
        states = torch.cat([uncond["embeds"], cond["embeds"]]).to(self.device, dtype)  # unconditional rows first
        kw: dict[str, Any] = {"encoder_hidden_states": states}
        if self.arch == "sdxl":
            size = torch.tensor([[p.height, p.width, 0, 0, p.height, p.width]] * 2, dtype=dtype, device=self.device)
            pooled = torch.cat([uncond["pooled"], cond["pooled"]]).to(self.device, dtype)
            kw["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": size}

        def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            half = {k: (v[-x.shape[0]:] if torch.is_tensor(v) else {a: b[-x.shape[0]:] for a, b in v.items()})
                    for k, v in kw.items()}  # cfg_scale 1: the conditional rows alone
            return self.unet(x.to(dtype), sigma.to(self.device) * 1000.0, **half).sample

        noise = flow_euler.initial_noise((1, self.unet.config.in_channels, p.height // 8, p.width // 8), p.seed)
        shift = p.flow_shift if p.flow_shift is not None else FLOW_SAMPLE_SHIFT
        return self.decode(flow_euler.sample(velocity, noise.to(self.device), p.steps, shift, p.cfg_scale))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> Image.Image:
        vae_device = next(self.vae.parameters()).device
        self.vae.to(self.device)
        try:
            x = self.vae.decode(latents.to(self.device, self.vae.dtype) / self.vae.config.scaling_factor).sample
        finally:
            self.vae.to(vae_device)
        x = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(x)


def save_png(image: Image.Image, path: Any, parameters: str, extra: dict[str, str] | None = None) -> None:
    """PNG with A1111's `parameters` text chunk (PNG Info reads it), written atomically."""
    import io

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    for k, v in (extra or {}).items():
        info.add_text(k, v)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    atomic_write(path, buf.getvalue())
