"""Pixels → VAE latents, cached in memory and optionally on disk.

A cached latent is keyed by the image's bytes, its placement (bucket, resize, crop), the flip
and the VAE's weights: change any of them and that one latent is encoded again; leave them
and a later run reuses it. Latents are sampled from the VAE's distribution with a seed derived
from the key, so a cache hit and a fresh encode give the same tensor.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from lorafw.data.buckets import RESIZE_INTERPOLATION
from lorafw.data.dataset import TrainData, TrainImage, derive_seed
from lorafw.data.prefetch import Ahead
from lorafw.errors import DatasetError
from lorafw.outputs.atomic import atomic_write


def _place(im, img: TrainImage, flip: bool, resample):
    """Resize, crop and flip a PIL image (or mask) the way the training image is."""
    from PIL import ImageOps

    rw, rh = img.placement.resized
    if im.size != (rw, rh):
        im = im.resize((rw, rh), resample)
    left, top = img.placement.crop
    bw, bh = img.placement.bucket
    im = im.crop((left, top, left + bw, top + bh))
    return ImageOps.mirror(im) if flip else im


def load_pixels(img: TrainImage, flip: bool) -> torch.Tensor:
    """(3, h, w) float tensor in [-1, 1]: EXIF-rotated, RGB, resized, cropped.

    Transparent pixels are composited onto white, the background booru art and the guide's datasets assume.
    kohya differs: its convert("RGB") drops the alpha channel and trains whatever colour is stored under the
    transparency (often black). For transparent images dataset.masked_loss=true leaves those pixels out.
    """
    from PIL import Image, ImageOps

    path = img.entry.path
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P", "PA"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = _place(im.convert("RGB"), img, flip, Image.Resampling[RESIZE_INTERPOLATION.upper()])
            arr = np.asarray(im, dtype=np.float32)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode the image ({e}); it is damaged or truncated — remove or replace it") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def mask_source(img: TrainImage, mask_dir: Path | None) -> Path | None:
    """Where image `img`'s loss mask comes from: mask_dir/<same stem>.* if given, else the image itself (alpha)."""
    if mask_dir is not None:
        for ext in (".png", ".webp", ".jpg", ".jpeg", ".bmp"):
            p = mask_dir / (img.entry.path.stem + ext)
            if p.is_file():
                return p
        return None
    return img.entry.path


def load_mask(img: TrainImage, flip: bool, mask_dir: Path | None, latent_size: tuple[int, int]) -> torch.Tensor:
    """(1, h/8, w/8) loss weights in [0, 1]: white/opaque = learned, black/transparent = ignored.

    From a mask image of the same name in `mask_dir`, else the image's alpha channel; all ones when
    neither exists. Resized, cropped and flipped exactly like the image, then averaged to latent size.
    """
    from PIL import Image, ImageOps

    src = mask_source(img, mask_dir)
    h, w = latent_size
    if src is None:
        return torch.ones(1, h, w)
    try:
        with Image.open(src) as im:
            im = ImageOps.exif_transpose(im)
            if mask_dir is None:  # the image's own alpha
                if im.mode not in ("RGBA", "LA", "P", "PA"):
                    return torch.ones(1, h, w)
                m = im.convert("RGBA").getchannel("A")
            else:
                m = im.convert("L")
            m = _place(m, img, flip, Image.Resampling.BILINEAR)
            arr = np.asarray(m, dtype=np.float32) / 255.0
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{src}: cannot decode the mask ({e}); remove or replace it") from None
    t = torch.from_numpy(arr)[None, None]
    return torch.nn.functional.interpolate(t, size=(h, w), mode="area")[0]


def vae_fingerprint(vae: Any) -> str:
    """Hash of the VAE's weights: cached latents from another VAE are never reused."""
    h = hashlib.sha256()
    for name, t in sorted(vae.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def latent_seed(image_digest: str, flip: bool) -> int:
    """Seed of the VAE's latent sample for one image: from its content, not its path.

    A path-derived seed made the same data give different results in another folder (step-1 loss 0.5306 vs
    0.5390) and made a disk-cache hit (keyed by content) disagree with a fresh encode after a move.
    """
    return derive_seed("latent", image_digest, flip) % (2**63)


def cache_key(image_digest: str, img: TrainImage, flip: bool, vae_fp: str, mask_digest: str = "") -> str:
    p = img.placement
    raw = f"{image_digest}|{p.bucket}|{p.resized}|{p.crop}|{int(flip)}|{vae_fp}|{mask_digest}|v1"
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def latent_bytes(data: TrainData) -> int:
    """Disk space the latent cache of `data` needs at most (4 channels fp32 at 1/8 size, flips, masks)."""
    total = 0
    for i, im in enumerate(data.images):
        w, h = im.placement.bucket
        one = 4 * (w // 8) * (h // 8) * 4 + (w // 8) * (h // 8) * 4 + 1024
        total += one * (2 if data.flip_allowed(i) else 1)
    return total


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lorafw" / "latents"


@dataclass
class CacheStats:
    encoded: int = 0
    reused: int = 0


class LatentCache:
    """Latents of every (image, flip) the training set can draw, keyed as described above."""

    def __init__(self, data: TrainData, vae: Any, scaling_factor: float, device: torch.device, dtype: torch.dtype,
                 disk_dir: Path | None = None, batch_size: int = 8, masks: bool = False, workers: int = 0) -> None:
        self.data, self.vae, self.scale = data, vae, scaling_factor
        self.device, self.dtype, self.disk_dir, self.batch_size = device, dtype, disk_dir, batch_size
        self.with_masks, self.workers = masks, workers
        self.latents: dict[tuple[int, bool], torch.Tensor] = {}
        self.masks: dict[tuple[int, bool], torch.Tensor] = {}
        self.stats = CacheStats()
        self._digests: dict[int, str] = {}  # image index → sha256 of its file: disk-cache key and noise seed

    def wanted(self) -> list[tuple[int, bool]]:
        keys = [(i, False) for i in range(len(self.data.images))]
        keys += [(i, True) for i in range(len(self.data.images)) if self.data.flip_allowed(i)]
        return keys

    def build(self, progress: Callable[[int], None] | None = None) -> CacheStats:
        """Encode (or load from disk) every latent; `progress(n)` is called as items finish."""
        vae_fp = vae_fingerprint(self.vae) if self.disk_dir is not None else ""
        todo: dict[tuple[int, int], dict[int, list[tuple[bool, str]]]] = {}  # bucket → image → (flip, key)
        for key in self.wanted():
            i, flip = key
            ck = ""
            if self.disk_dir is not None:
                mask_digest = ""
                if self.with_masks:
                    src = mask_source(self.data.images[i], self._mask_dir(i))
                    mask_digest = "none" if src is None else file_digest(src)
                ck = cache_key(self._digest(i), self.data.images[i], flip, vae_fp, mask_digest)
                hit = self._load_disk(ck)
                if hit is not None:
                    self.latents[key], mask = hit
                    if self.with_masks and mask is not None:
                        self.masks[key] = mask
                    self.stats.reused += 1
                    if progress:
                        progress(1)
                    continue
            todo.setdefault(self.data.images[i].placement.bucket, {}).setdefault(i, []).append((flip, ck))
        # Each image is decoded once, on loader threads, ahead of the VAE; its flipped latent is encoded from
        # the mirrored pixels (the same tensor load_pixels(img, True) gives: the mirror comes after the crop).
        units = [(i, flips) for per_image in todo.values() for i, flips in per_image.items()]
        with Ahead(self._load, units, self.workers) as pixels:
            chunk: list[tuple[tuple[int, bool], str, torch.Tensor]] = []
            for n, ((i, flips), pix) in enumerate(zip(units, pixels)):
                chunk += [((i, flip), ck, pix[flip]) for flip, ck in flips]
                last_of_bucket = n + 1 == len(units) or self._bucket(units[n + 1][0]) != self._bucket(i)
                while len(chunk) >= self.batch_size or (chunk and last_of_bucket):
                    self._store(chunk[: self.batch_size], progress)
                    chunk = chunk[self.batch_size :]
        return self.stats

    def _bucket(self, i: int) -> tuple[int, int]:
        return self.data.images[i].placement.bucket

    def _load(self, unit: tuple[int, list[tuple[bool, str]]]) -> dict[bool, torch.Tensor]:
        """Pixels of one image for each flip wanted, from one decode."""
        i, flips = unit
        base = load_pixels(self.data.images[i], False)
        return {flip: base.flip(-1) if flip else base for flip, _ in flips}

    def _store(self, chunk: list[tuple[tuple[int, bool], str, torch.Tensor]], progress: Callable[[int], None] | None) -> None:
        lat = self._encode([key for key, _, _ in chunk], torch.stack([pix for _, _, pix in chunk]))
        for (key, ck, _), z in zip(chunk, lat):
            z = z.to("cpu", torch.float32).contiguous()
            self.latents[key] = z
            if self.with_masks:
                i, flip = key
                self.masks[key] = load_mask(self.data.images[i], flip, self._mask_dir(i), tuple(z.shape[-2:]))
            if self.disk_dir is not None:
                self._save_disk(ck, z, self.masks.get(key))
        self.stats.encoded += len(chunk)
        if progress:
            progress(len(chunk))

    @torch.no_grad()
    def _encode(self, keys: list[tuple[int, bool]], pixels: torch.Tensor) -> list[torch.Tensor]:
        dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        out = []
        for j, (i, flip) in enumerate(keys):
            g = torch.Generator(device="cpu").manual_seed(latent_seed(self._digest(i), flip))
            noise = torch.randn(dist.mean[j].shape, generator=g, dtype=torch.float32).to(dist.mean.device, dist.mean.dtype)
            out.append((dist.mean[j] + dist.std[j] * noise) * self.scale)
        return out

    def _digest(self, i: int) -> str:
        if i not in self._digests:
            self._digests[i] = file_digest(self.data.images[i].entry.path)
        return self._digests[i]

    def _path(self, ck: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / ck[:2] / f"{ck}.safetensors"

    def _load_disk(self, ck: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        from safetensors.torch import load_file

        p = self._path(ck)
        if not p.is_file():
            return None
        try:
            d = load_file(str(p))
            return d["latent"], d.get("mask")
        except Exception:  # a damaged cache entry is re-encoded, never trusted
            return None

    def _save_disk(self, ck: str, z: torch.Tensor, mask: torch.Tensor | None) -> None:
        from safetensors.torch import save

        tensors = {"latent": z} if mask is None else {"latent": z, "mask": mask.contiguous()}
        atomic_write(self._path(ck), save(tensors))

    def _mask_dir(self, i: int) -> Path | None:
        return self.data.folders[self.data.images[i].folder].mask_dir

    def get(self, i: int, flip: bool) -> torch.Tensor:
        return self.latents[(i, flip)]

    def get_mask(self, i: int, flip: bool) -> torch.Tensor:
        return self.masks[(i, flip)]
