"""What a batch feeds the step: its random draws (flips, captions), latents, masks, conditioning.

Every random draw of micro-step `micro` comes from `step_seed(seed, micro)`, never from a running
generator, so any step can be replayed on its own. Latents come from the latent cache, or are encoded
now from pixels decoded ahead on loader threads (`pixel_lookahead`); text states come from the text
cache, or are encoded now (with gradients when the text encoders train).
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import torch

from lorafw.data import dataset as dataset_mod
from lorafw.data.prefetch import Lookahead
from lorafw.logs import log, progress_bar
from lorafw.placement import to_device
from lorafw.trainers.distributed import shard

if TYPE_CHECKING:
    from lorafw.trainers.trainer import Trainer


def step_seed(seed: int, micro: int) -> int:
    """Every random draw of micro-step `micro` (flips, captions, noise, timesteps) comes from this seed."""
    return dataset_mod.derive_seed(seed, "step", micro)


def flips(data: Any, batch: list[int], rng: random.Random) -> list[bool]:
    """The batch's flip draws: the first use of its (seed, micro-step) generator."""
    return [data.flip_allowed(i) and rng.random() < 0.5 for i in batch]


def latents(tr: Trainer, batch: list[int], flipped: list[bool], data: Any = None, cache: Any = None) -> torch.Tensor:
    """Scaled VAE latents of a batch of `data` (default: the training set): cached, or encoded now."""
    data, cache = (data, cache) if data is not None else (tr.data, tr.latent_cache)
    if cache is not None:
        return to_device(torch.stack([cache.get(i, f) for i, f in zip(batch, flipped)]), tr.device)
    key = (tuple(batch), tuple(flipped))
    pixels = tr.pixels_ahead.take(key) if tr.pixels_ahead is not None and data is tr.data else None
    if pixels is None:
        pixels = load_pixels(tr, key, data)
    with torch.no_grad():
        z = tr.vae.encode(pixels.to(tr.device, tr.vae.dtype, non_blocking=True)).latent_dist.sample()
    return (z * tr.vae.config.scaling_factor).float()


def masks(tr: Trainer, batch: list[int], flipped: list[bool], size: tuple[int, int]) -> torch.Tensor:
    """The batch's loss masks (dataset.masked_loss) at latent size."""
    if tr.latent_cache is not None:
        return to_device(torch.stack([tr.latent_cache.get_mask(i, f) for i, f in zip(batch, flipped)]), tr.device)
    from lorafw.data.latents import load_mask

    return torch.stack([load_mask(tr.data.images[i], f, tr.data.folders[tr.data.images[i].folder].mask_dir, size)
                        for i, f in zip(batch, flipped)])


def conditioning(tr: Trainer, captions: list[str], batch: list[int], flipped: list[bool], data: Any = None) -> dict[str, Any]:
    """UNet keyword arguments for a batch of `data` (default: the training set): its cached text states (or its
    captions encoded now), shaped by the architecture."""
    data = data if data is not None else tr.data
    cache = tr.text_cache if data is tr.data else tr.val_text_cache if data is tr.val_data else None
    if cache is not None:
        cached = [cache[i] for i in batch]
        text = {k: to_device(torch.stack([c[k] for c in cached]), tr.device) for k in cached[0]}
    else:
        with torch.set_grad_enabled(tr.train_te):
            text = encode_text(tr, captions)
    return tr.architecture.unet_kwargs({k: v.to(tr.wdtype) for k, v in text.items()}, data, batch, flipped)


def encode_text(tr: Trainer, captions: list[str]) -> dict[str, torch.Tensor]:
    return tr.architecture.encode_text(tr.tokenizers, tr.text_encoders, captions, tr.spec.train)


def pixel_lookahead(tr: Trainer, groups: list[list[list[int]]]) -> Lookahead:
    """Without cached latents: this process's batches of `groups` (with their flips, which depend only on
    the seed and micro-step) decoded on loader threads ahead of the step that encodes them."""
    keys, micro = [], tr.micro
    for group in groups:
        for j in shard(len(group), tr.world.rank, tr.world.size):
            keys.append((tuple(group[j]), tuple(flips(tr.data, group[j], random.Random(step_seed(tr.spec.seed, micro + j))))))
        micro += len(group)
    return Lookahead(lambda key: load_pixels(tr, key), keys, tr.loader_workers)


def load_pixels(tr: Trainer, key: tuple[tuple[int, ...], tuple[bool, ...]], data: Any = None) -> torch.Tensor:
    """A batch's pixels (pinned in host memory when they go to a GPU, so the copy can overlap)."""
    from lorafw.data.latents import load_pixels as load

    data = data if data is not None else tr.data
    pixels = torch.stack([load(data.images[i], f) for i, f in zip(*key)])
    return pixels.pin_memory() if tr.device.type == "cuda" else pixels


@torch.no_grad()
def cache_text(tr: Trainer) -> None:
    """Encode every image's (unchanging) caption once, the held-out images' too (validation needs them after
    the encoders are gone); the frozen text encoders are then parked off the device."""
    tr._to_device(*tr.text_encoders)
    tr.text_cache = encode_captions(tr, tr.data, "text states")
    if tr.val_data is not None:
        tr.val_text_cache = encode_captions(tr, tr.val_data, "held-out text states")
    tr.parking.park(*tr.text_encoders)
    log.info(f"text encoder outputs cached for {len(tr.text_cache)} images"
             + (f" and {len(tr.val_text_cache)} held-out ones" if tr.val_text_cache else ""))


def encode_captions(tr: Trainer, data: Any, what: str) -> dict[int, dict[str, torch.Tensor]]:
    """{image: its base caption's text states}, placed like the latents (on the GPU when they fit)."""
    idx = list(range(len(data.images)))
    cache: dict[int, dict[str, torch.Tensor]] = {}
    with progress_bar(tr.main, total=len(idx), desc=f"caching {what}", unit="img", leave=False) as bar:
        for start in range(0, len(idx), 16):
            chunk = idx[start : start + 16]
            with tr.amp.autocast():
                cond = encode_text(tr, [data.base_caption(i) for i in chunk])
            for j, i in enumerate(chunk):
                cache[i] = {k: v[j].to("cpu") for k, v in cond.items()}
            bar.update(len(chunk))
    flat = {(i, k): v for i, c in cache.items() for k, v in c.items()}
    place(tr, flat, what)
    for (i, k), v in flat.items():
        cache[i][k] = v
    return cache


def place(tr: Trainer, store: dict, what: str) -> None:
    """Cached tensors onto the GPU when they fit (no host-to-device copy per step), else pinned."""
    from lorafw.placement import place_cache

    if not store:
        return
    keys = list(store)
    placed, where = place_cache([store[k] for k in keys], tr.device)
    store.update(zip(keys, placed))
    if where != "host":
        log.info(f"cached {what} {where}")
