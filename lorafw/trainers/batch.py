"""What a batch feeds the step: its random draws (flips, captions, random crops), latents, masks, conditioning.

Every random draw of micro-step `micro` comes from `step_seed(seed, micro)`, never from a running
generator, so any step can be replayed on its own (a resumed run draws what the uninterrupted one drew).
Latents come from the latent cache, or are encoded now from pixels decoded ahead on loader threads
(`pixel_lookahead`); text states come from the text cache, or are encoded now (with gradients when the
text encoders train).
"""

from __future__ import annotations

import random
from typing import Any

import torch

from lorafw.archs.protocol import Architecture, Models
from lorafw.data import dataset as dataset_mod
from lorafw.data.buckets import random_crop
from lorafw.data.dataset import TrainData
from lorafw.data.latents import load_mask
from lorafw.data.latents import load_pixels as load_image
from lorafw.data.prefetch import Lookahead
from lorafw.logs import log
from lorafw.placement import place_cache, to_device
from lorafw.trainers.context import Caches, Device
from lorafw.trainers.distributed import World, shard

EMPTY = -1  # the text cache's key for the empty caption (caption dropout while text-encoder outputs are cached)


def step_seed(seed: int, micro: int) -> int:
    """Every random draw of micro-step `micro` (flips, captions, noise, timesteps) comes from this seed."""
    return dataset_mod.derive_seed(seed, "step", micro)


def flips(data: TrainData, batch: list[int], rng: random.Random) -> list[bool]:
    """The batch's flip draws: the first use of its (seed, micro-step) generator."""
    return [data.flip_allowed(i) and rng.random() < 0.5 for i in batch]


def crops(data: TrainData, batch: list[int], seed: int) -> list[tuple[int, int]]:
    """The batch's crop windows (left, top): a random place where the item's folder has random_crop (kohya's
    draw, buckets.random_crop), else the centre crop. Drawn from a generator of their own, seeded by the
    micro-step's seed: turning random_crop on changes no other draw, and a resumed run draws the same windows."""
    rng = random.Random(dataset_mod.derive_seed(seed, "crop"))
    return [random_crop(data.images[i].placement, rng).crop if data.random_crop(i) else data.images[i].placement.crop
            for i in batch]


Window = tuple[int, int]  # a crop's (left, top) in the resized image


def _crops_or_centre(data: TrainData, batch: list[int], crops: list[Window] | None) -> tuple[Window, ...]:
    return tuple(crops) if crops is not None else tuple(data.images[i].placement.crop for i in batch)


def latents(dev: Device, models: Models, data: TrainData, cache: Any, batch: list[int], flipped: list[bool],
            ahead: Lookahead | None = None, crops: list[tuple[int, int]] | None = None, seed: int = 0) -> torch.Tensor:
    """Scaled VAE latents of a batch of `data`: from `cache`, or encoded now (from `ahead`'s decoded pixels when
    it holds them) with the windows `crops` (None: each image's centre crop), the VAE's sample drawn from `seed`
    (the micro-step's: a resumed run encodes what the uninterrupted one did; the global generator is not saved)."""
    if cache is not None:  # never with random crops (config validation: sd-scripts' is_latent_cacheable)
        return to_device(torch.stack([cache.get(i, f) for i, f in zip(batch, flipped)]), dev.device)
    key = (tuple(batch), tuple(flipped), _crops_or_centre(data, batch, crops))
    pixels = ahead.take(key) if ahead is not None else None
    if pixels is None:
        pixels = load_pixels(dev, data, key)
    vae = models.vae
    with torch.no_grad():
        gen = torch.Generator(device=dev.device).manual_seed(dataset_mod.derive_seed(seed, "vae") % (2**63))
        z = vae.encode(pixels.to(dev.device, vae.dtype, non_blocking=True)).latent_dist.sample(generator=gen)
    return (z * vae.config.scaling_factor).float()


def masks(dev: Device, data: TrainData, cache: Any, batch: list[int], flipped: list[bool],
          size: tuple[int, int], crops: list[tuple[int, int]] | None = None) -> torch.Tensor:
    """The batch's loss masks (dataset.masked_loss) at latent size, cropped as the images are."""
    if cache is not None:
        return to_device(torch.stack([cache.get_mask(i, f) for i, f in zip(batch, flipped)]), dev.device)
    placed = data.placed(batch, list(_crops_or_centre(data, batch, crops))).images
    return torch.stack([load_mask(img, f, data.folders[img.folder].mask_dir, size) for img, f in zip(placed, flipped)])


def conditioning(arch: Architecture, models: Models, dev: Device, text_cache: dict | None, data: TrainData, captions: list[str],
                 batch: list[int], flipped: list[bool], train: Any, grad: bool,
                 crops: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """The denoiser's keyword arguments for a batch of `data`: its cached text states (or its captions encoded
    now, with gradients when `grad`), shaped by the family; with random `crops` the family reads the batch as
    placed this step (SDXL conditions on each crop's top-left)."""
    if text_cache is not None:  # a caption dropped out ("") takes the cached empty caption's states
        cached = [text_cache[EMPTY] if c == "" and EMPTY in text_cache else text_cache[i]
                  for i, c in zip(batch, captions)]
        text = {k: to_device(torch.stack([c[k] for c in cached]), dev.device) for k in cached[0]}
    else:
        with torch.set_grad_enabled(grad):
            text = arch.encode_text(models, captions, train)
    if crops is not None and any(c != data.images[i].placement.crop for i, c in zip(batch, crops)):
        data, batch = data.placed(batch, crops), list(range(len(batch)))
    # floating states in the weight dtype; token ids and masks stay integers (bf16 is not exact above 256)
    return arch.conditioning({k: v.to(dev.wdtype) if v.is_floating_point() else v for k, v in text.items()}, data,
                             batch, flipped)


def text_cache_for(caches: Caches, data: TrainData, train_data: Any, val_data: Any) -> dict | None:
    """The text cache that holds `data`'s captions (training or held-out), or None."""
    return caches.text if data is train_data else caches.val_text if data is val_data else None


def pixel_lookahead(dev: Device, data: TrainData, world: World, seed: int, micro: int,
                    groups: list[list[list[int]]]) -> Lookahead:
    """Without cached latents: this process's batches of `groups` (with their flips and crops, which depend only
    on the seed and micro-step) decoded on loader threads ahead of the step that encodes them."""
    keys = []
    for group in groups:
        for j in shard(len(group), world.rank, world.size):
            s = step_seed(seed, micro + j)
            keys.append((tuple(group[j]), tuple(flips(data, group[j], random.Random(s))),
                         tuple(crops(data, group[j], s))))
        micro += len(group)
    return Lookahead(lambda key: load_pixels(dev, data, key), keys, dev.loader_workers)


PixelKey = tuple[tuple[int, ...], tuple[bool, ...], tuple[tuple[int, int], ...]]  # items, flips, crop windows


def load_pixels(dev: Device, data: TrainData, key: PixelKey) -> torch.Tensor:
    """A batch's pixels (pinned in host memory when they go to a GPU, so the copy can overlap)."""
    batch, flipped, windows = key
    placed = data.placed(list(batch), list(windows)).images
    pixels = torch.stack([load_image(img, f) for img, f in zip(placed, flipped)])
    return pixels.pin_memory() if dev.device.type == "cuda" else pixels


def place(dev: Device, store: dict, what: str) -> None:
    """Cached tensors onto the GPU when they fit (no host-to-device copy per step), else pinned."""
    if not store:
        return
    keys = list(store)
    placed, where = place_cache([store[k] for k in keys], dev.device)
    store.update(zip(keys, placed))
    if where != "host":
        log.info(f"cached {what} {where}")
