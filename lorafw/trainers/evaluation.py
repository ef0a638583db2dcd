"""Evaluation during and after training: a loss with fixed noise (validation, before/after comparisons) and
sample images. Both run the models in eval mode and put them back as they were. A schedule-free optimizer is
evaluated at its averaged ("eval") weights (optim.optimizers.evaluation_weights, around each caller)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch

from lorafw.archs.protocol import Architecture, Models
from lorafw.config.spec import RunSpec
from lorafw.data import dataset as dataset_mod
from lorafw.data.dataset import TrainData
from lorafw.logs import log
from lorafw.trainers import batch as batch_mod
from lorafw.trainers.context import Device
from lorafw.trainers.distributed import Comm, World, shard
from lorafw.trainers.step import StepConfig, training_step


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
def fixed_loss(spec: RunSpec, arch: Architecture, models: Models, dev: Device, world: World, comm: Comm, cfg: StepConfig,
               data: TrainData, latent_cache: Any, text_cache: dict | None, images: list[int] | None = None, seed: int = 0,
               draws: int = 4) -> float:
    """Mean loss over `images` of `data` (default: all its images) with captions unshuffled and noise and
    timesteps fixed by `seed`: the same weights always give the same number. Each data-parallel process
    scores its share; the sum is taken over all of them."""
    images = list(range(len(data.images))) if images is None else images
    denoise = lambda x, t, c: arch.denoise(models, x, t, c)  # noqa: E731
    total, n = 0.0, 0
    with eval_mode([models.denoiser, *models.text_encoders]):
        for i in [images[k] for k in shard(len(images), world.rank, world.size)]:
            z = batch_mod.latents(dev, models, data, latent_cache, [i], [False],
                                  seed=dataset_mod.derive_seed("eval", seed, i))
            caption = [data.base_caption(i)]
            for d in range(draws):
                gen = torch.Generator(device=dev.device).manual_seed(dataset_mod.derive_seed("eval", seed, i, d) % (2**63))
                with dev.amp.autocast():
                    cond = batch_mod.conditioning(arch, models, dev, text_cache, data, caption, [i], [False],
                                                  spec.train, grad=False)
                out = training_step(denoise, models.noise_scheduler, z, cond, gen, cfg, dtype=dev.wdtype,
                                     autocast=dev.amp.autocast)
                total += out.loss.item()
                n += 1
    total, n = comm.sum([total, n])
    return total / max(1, n)


@torch.no_grad()
def sample(spec: RunSpec, models: Models, renderer: Any, dev: Device, data: TrainData, run_dir: Path, label: str,
           step: int) -> list[str]:
    """Render the sample prompts with the weights as they are now: RUN_DIR/samples/LABEL_NN.png. Returns the
    images' paths relative to the run folder."""
    from lorafw.config.prompts import parse_line, read_prompts
    from lorafw.sampling.prompts import a1111_parameters, fallback_prompt
    from lorafw.sampling.render import save_png

    prompts = read_prompts(spec.sample, spec.dataset.size)
    if not prompts:
        prompts = [parse_line(fallback_prompt(data.triggers(), data.tag_frequency()), spec.sample,
                              spec.dataset.size)]
    written = []
    with eval_mode([models.denoiser, *models.text_encoders]):
        for i, p in enumerate(prompts):
            with dev.amp.autocast():
                img = renderer.render(p, spec.sample.sampler)
            path = run_dir / "samples" / f"{label}_{i:02d}.png"
            save_png(img, path, a1111_parameters(p, spec.sample.sampler, {"Lora": label, "Step": str(step)}))
            written.append(str(path.relative_to(run_dir)))
    log.info(f"samples: {len(prompts)} image(s) for {label} in {run_dir / 'samples'}")
    return written
