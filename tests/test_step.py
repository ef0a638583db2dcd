"""The step math (lorafw/trainers/step.py) on tiny tensors, and a tiny trainer's micro-batch loss against a
plain restatement of the DDPM ε-prediction objective written from the formulas, not from step.py."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from lorafw.models.load import noise_scheduler
from lorafw.run import resolve_outputs
from lorafw.trainers.step import (
    StepConfig, apply_loss_weights, diffusion_step, per_sample_loss, sample_noise, sample_timesteps, target,
)


def call(unet):
    """The UNet as the step calls a denoiser: (x_t, t, conditioning) → prediction."""
    return lambda x, t, cond: unet(x, t, **cond).sample


class TinyUNet(torch.nn.Module):
    """A conv net with the UNet's call signature: (latents, timesteps, encoder_hidden_states=...) → .sample"""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.proj = torch.nn.Linear(8, 4)

    def forward(self, x, t, encoder_hidden_states):
        bias = self.proj(encoder_hidden_states.mean(1))[:, :, None, None] + t.float()[:, None, None, None] / 1000
        return SimpleNamespace(sample=self.conv(x) + bias)


def restated_loss(unet, latents, text, seed, noise_offset=0.0, gamma=None, mask=None, weights=None):
    """E_t,ε ‖ε − ε_θ(√ᾱ_t x + √(1−ᾱ_t) ε, t)‖², weighted per sample, min-SNR-γ: min(SNR, γ)/SNR, SNR = ᾱ/(1−ᾱ)."""
    sched = noise_scheduler()
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(latents.shape, generator=gen)
    if noise_offset:
        eps = eps + noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1, generator=gen)
    t = torch.randint(0, 1000, (latents.shape[0],), generator=gen)
    abar = sched.alphas_cumprod[t].float()[:, None, None, None]
    noisy = abar.sqrt() * latents + (1 - abar).sqrt() * eps
    err = (unet(noisy, t, encoder_hidden_states=text).sample - eps) ** 2
    if mask is not None:
        err = err * mask
    loss = err.mean(dim=(1, 2, 3))
    if weights is not None:
        loss = loss * weights
    if gamma:
        snr = abar.flatten() / (1 - abar.flatten())
        loss = loss * torch.clamp(snr, max=gamma) / snr
    return loss.mean()


@pytest.mark.parametrize("offset,gamma,masked,weighted", [(0.0, None, False, False), (0.1, 5.0, True, True), (0.0, 1.0, False, True)])
def test_step_matches_the_restated_objective(offset, gamma, masked, weighted):
    unet, sched = TinyUNet(), noise_scheduler()
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = torch.randn(3, 5, 8, generator=torch.Generator().manual_seed(2))
    mask = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.5).float() if masked else None
    weights = torch.tensor([1.0, 0.5, 0.25]) if weighted else None
    out = diffusion_step(call(unet), sched, latents, {"encoder_hidden_states": text}, torch.Generator().manual_seed(7),
                         StepConfig(noise_offset=offset, min_snr_gamma=gamma), mask=mask, weights=weights)
    want = restated_loss(unet, latents, text, 7, offset, gamma, mask, weights)
    torch.testing.assert_close(out.loss, want, rtol=1e-5, atol=1e-7)
    assert out.per_sample.shape == (3,) and out.timesteps.shape == (3,)


def test_the_generator_fixes_the_loss_and_gradients_reach_the_unet():
    unet, sched = TinyUNet(), noise_scheduler()
    latents, kw = torch.randn(2, 4, 8, 8), {"encoder_hidden_states": torch.randn(2, 5, 8)}
    a = diffusion_step(call(unet), sched, latents, kw, torch.Generator().manual_seed(3))
    b = diffusion_step(call(unet), sched, latents, kw, torch.Generator().manual_seed(3))
    c = diffusion_step(call(unet), sched, latents, kw, torch.Generator().manual_seed(4))
    assert torch.equal(a.loss, b.loss) and not torch.equal(a.loss, c.loss)
    a.loss.backward()
    assert unet.conv.weight.grad is not None and unet.conv.weight.grad.abs().sum() > 0


def test_the_stages():
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    latents = torch.zeros(2, 4, 3, 3)
    plain = sample_noise(latents, gen())
    assert torch.equal(plain, torch.randn((2, 4, 3, 3), generator=gen()))
    offset = sample_noise(latents, gen(), StepConfig(noise_offset=0.5))
    shift = offset - plain  # one constant per sample and channel
    assert torch.allclose(shift, shift[..., :1, :1].expand_as(shift)) and shift.abs().sum() > 0
    t = sample_timesteps(1000, noise_scheduler(), gen(), torch.device("cpu"))
    assert t.min() >= 0 and t.max() <= 999 and t.dtype == torch.int64
    noise = torch.randn(2, 4, 3, 3)
    assert target(noise_scheduler(), torch.zeros_like(noise), noise, t[:2]) is noise  # ε-prediction
    pred = torch.ones(2, 4, 3, 3)
    assert torch.equal(per_sample_loss(pred, torch.zeros_like(pred)), torch.ones(2))
    half = torch.zeros(2, 1, 3, 3)
    half[..., :1] = 1
    assert torch.allclose(per_sample_loss(pred, torch.zeros_like(pred), half), torch.full((2,), 1 / 3))
    loss, ts = torch.ones(2), torch.tensor([10, 900])
    assert torch.equal(apply_loss_weights(loss, ts, StepConfig(), torch.tensor([1.0, 0.5])), torch.tensor([1.0, 0.5]))
    snr_weighted = apply_loss_weights(loss, ts, StepConfig(min_snr_gamma=5.0))
    assert snr_weighted[0] < 1 and snr_weighted[1] == 1  # early timesteps (high SNR) are damped; late ones not


def trainer_loss_restated(tr, batch: list[int], micro: int) -> torch.Tensor:
    """What `Trainer._loss` computes, restated from the pieces a reader expects: the step seed's flips and
    captions, the cached latents, the architecture's conditioning, and the restated objective."""
    from lorafw.data.dataset import derive_seed

    seed = derive_seed(tr.spec.seed, "step", micro)
    rng = random.Random(seed)
    flips = [tr.data.flip_allowed(i) and rng.random() < 0.5 for i in batch]
    captions = [tr.data.caption(i, rng) for i in batch]
    latents = torch.stack([tr.caches.latents.get(i, f) for i, f in zip(batch, flips)])
    with torch.no_grad():
        text = tr.arch.encode_text(tr.models, captions, tr.spec.train)
    kwargs = tr.arch.conditioning(text, tr.data, batch, flips)
    hidden = kwargs.pop("encoder_hidden_states")
    unet = lambda x, t, encoder_hidden_states: tr.models.denoiser(x, t, encoder_hidden_states=encoder_hidden_states, **kwargs)  # noqa: E731
    return restated_loss(unet, latents, hidden, seed % (2**63), tr.spec.train.noise_offset, tr.spec.train.min_snr_gamma)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_a_trainers_micro_batch_loss_is_the_restated_objective(arch, compose_tiny, tiny_xl_model):
    from lorafw.trainers.trainer import prepare

    common = ("train.mixed_precision=no", "train.full_bf16=false", "dataset.shuffle_caption=true", "train.noise_offset=0.05")
    spec = compose_tiny("sd15_character", *common) if arch == "sd15" else compose_tiny("pdxl", *common, model=tiny_xl_model)
    spec = resolve_outputs(spec)
    tr = prepare(spec, spec.output.dir)
    tr.setup()
    batches = tr.data.epoch_batches(spec.seed, 1, spec.train.batch_size)
    for micro, batch in enumerate(batches[:2]):
        with torch.no_grad():
            got = tr._loss(batch, micro)
            want = trainer_loss_restated(tr, batch, micro)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
