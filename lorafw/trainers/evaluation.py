"""Evaluation during and after training: a loss with fixed noise (validation, before/after comparisons) and
sample images. Both run the models in eval mode and put them back as they were."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Iterator

import torch

from lorafw.data import dataset as dataset_mod
from lorafw.trainers import inputs
from lorafw.logs import log
from lorafw.trainers.distributed import shard
from lorafw.trainers.step import diffusion_step

if TYPE_CHECKING:
    from lorafw.trainers.trainer import Trainer


@contextlib.contextmanager
def eval_mode(modules: list[torch.nn.Module]) -> Iterator[None]:
    """The modules in eval mode for a moment (no dropout), then back in the mode each was in."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


@torch.no_grad()
def fixed_loss(tr: Trainer, images: list[int] | None = None, seed: int = 0, draws: int = 4, data: Any = None,
               cache: Any = None) -> float:
    """Mean loss over `images` of `data` (default: all training images) with captions unshuffled and noise
    and timesteps fixed by `seed`: the same weights always give the same number. Each data-parallel process
    scores its share; the sum is taken over all of them."""
    data, cache = (data, cache) if data is not None else (tr.data, tr.latent_cache)
    images = list(range(len(data.images))) if images is None else images
    total, n = 0.0, 0
    with eval_mode([tr.unet, *tr.text_encoders]):
        for i in [images[k] for k in shard(len(images), tr.world.rank, tr.world.size)]:
            z = inputs.latents(tr, [i], [False], data, cache)
            caption = [data.base_caption(i)]
            for d in range(draws):
                gen = torch.Generator(device=tr.device).manual_seed(dataset_mod.derive_seed("eval", seed, i, d) % (2**63))
                with tr.amp.autocast():
                    cond = inputs.conditioning(tr, caption, [i], [False], data)
                out = diffusion_step(tr.unet, tr.noise_scheduler, z, cond, gen, tr.eval_config, dtype=tr.wdtype,
                                     autocast=tr.amp.autocast)
                total += out.loss.item()
                n += 1
    total, n = tr.comm.sum([total, n])
    return total / max(1, n)


def validation_loss(tr: Trainer) -> float:
    """The held-out images' loss, with noise and timesteps fixed: comparable across epochs and runs."""
    return fixed_loss(tr, seed=0, draws=tr.spec.validation.draws, data=tr.val_data, cache=tr.val_cache)


@torch.no_grad()
def sample(tr: Trainer, label: str) -> None:
    """Render the sample prompts with the weights as they are now: RUN_DIR/samples/LABEL_NN.png."""
    from lorafw.config.prompts import parse_line, read_prompts
    from lorafw.sampling.prompts import a1111_parameters, fallback_prompt
    from lorafw.sampling.render import Renderer, save_png

    if not tr.main:
        return
    s = tr.spec
    prompts = read_prompts(s.sample, s.dataset.resolution)
    if not prompts:
        prompts = [parse_line(fallback_prompt(tr.data.triggers(), tr.data.tag_frequency()), s.sample, s.dataset.resolution)]
    if tr.renderer is None:
        tr.renderer = Renderer(tr.arch, tr.unet, tr.vae, tr.text_encoders, tr.tokenizers, tr.noise_scheduler,
                               s.train.max_token_length, s.train.clip_skip, tr.device, parking=tr.parking)
    with eval_mode([tr.unet, *tr.text_encoders]):
        for i, p in enumerate(prompts):
            with tr.amp.autocast():
                img = tr.renderer.render(p, s.sample.sampler)
            path = tr.run_dir / "samples" / f"{label}_{i:02d}.png"
            save_png(img, path, a1111_parameters(p, s.sample.sampler, {"Lora": label, "Step": str(tr.global_step)}))
            tr.samples.append(str(path.relative_to(tr.run_dir)))
    log.info(f"samples: {len(prompts)} image(s) for {label} in {tr.run_dir / 'samples'}")
