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

from lorafw.data.dataset import TrainData, TrainImage, derive_seed
from lorafw.errors import DatasetError
from lorafw.outputs.atomic import atomic_write


def load_pixels(img: TrainImage, flip: bool) -> torch.Tensor:
    """(3, h, w) float tensor in [-1, 1]: EXIF-rotated, RGB (transparency onto white), resized, cropped."""
    from PIL import Image, ImageOps

    path = img.entry.path
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "P"):
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("RGB")
            rw, rh = img.placement.resized
            if im.size != (rw, rh):
                im = im.resize((rw, rh), Image.Resampling.LANCZOS)
            left, top = img.placement.crop
            bw, bh = img.placement.bucket
            im = im.crop((left, top, left + bw, top + bh))
            if flip:
                im = ImageOps.mirror(im)
            arr = np.asarray(im, dtype=np.float32)
    except (OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: cannot decode the image ({e}); it is damaged or truncated — remove or replace it") from None
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous() / 127.5 - 1.0


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


def cache_key(image_digest: str, img: TrainImage, flip: bool, vae_fp: str) -> str:
    p = img.placement
    return hashlib.sha256(f"{image_digest}|{p.bucket}|{p.resized}|{p.crop}|{int(flip)}|{vae_fp}|v1".encode()).hexdigest()[:32]


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
                 disk_dir: Path | None = None, batch_size: int = 8) -> None:
        self.data, self.vae, self.scale = data, vae, scaling_factor
        self.device, self.dtype, self.disk_dir, self.batch_size = device, dtype, disk_dir, batch_size
        self.latents: dict[tuple[int, bool], torch.Tensor] = {}
        self.stats = CacheStats()

    def wanted(self) -> list[tuple[int, bool]]:
        keys = [(i, False) for i in range(len(self.data.images))]
        keys += [(i, True) for i in range(len(self.data.images)) if self.data.flip_allowed(i)]
        return keys

    def build(self, progress: Callable[[int], None] | None = None) -> CacheStats:
        """Encode (or load from disk) every latent; `progress(n)` is called as items finish."""
        vae_fp = vae_fingerprint(self.vae) if self.disk_dir is not None else ""
        digests: dict[int, str] = {}
        todo: dict[tuple[int, int], list[tuple[tuple[int, bool], str]]] = {}
        for key in self.wanted():
            i, flip = key
            ck = ""
            if self.disk_dir is not None:
                if i not in digests:
                    digests[i] = file_digest(self.data.images[i].entry.path)
                ck = cache_key(digests[i], self.data.images[i], flip, vae_fp)
                hit = self._load_disk(ck)
                if hit is not None:
                    self.latents[key] = hit
                    self.stats.reused += 1
                    if progress:
                        progress(1)
                    continue
            todo.setdefault(self.data.images[i].placement.bucket, []).append((key, ck))
        for group in todo.values():
            for start in range(0, len(group), self.batch_size):
                chunk = group[start : start + self.batch_size]
                lat = self._encode([k for k, _ in chunk])
                for (key, ck), z in zip(chunk, lat):
                    z = z.to("cpu", torch.float32).contiguous()
                    self.latents[key] = z
                    if self.disk_dir is not None:
                        self._save_disk(ck, z)
                self.stats.encoded += len(chunk)
                if progress:
                    progress(len(chunk))
        return self.stats

    @torch.no_grad()
    def _encode(self, keys: list[tuple[int, bool]]) -> list[torch.Tensor]:
        pixels = torch.stack([load_pixels(self.data.images[i], flip) for i, flip in keys])
        dist = self.vae.encode(pixels.to(self.device, self.dtype)).latent_dist
        out = []
        for j, (i, flip) in enumerate(keys):
            g = torch.Generator(device="cpu").manual_seed(derive_seed("latent", str(self.data.images[i].entry.path), flip) % (2**63))
            noise = torch.randn(dist.mean[j].shape, generator=g, dtype=torch.float32).to(dist.mean.device, dist.mean.dtype)
            out.append((dist.mean[j] + dist.std[j] * noise) * self.scale)
        return out

    def _path(self, ck: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / ck[:2] / f"{ck}.safetensors"

    def _load_disk(self, ck: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        p = self._path(ck)
        if not p.is_file():
            return None
        try:
            return load_file(str(p))["latent"]
        except Exception:  # a damaged cache entry is re-encoded, never trusted
            return None

    def _save_disk(self, ck: str, z: torch.Tensor) -> None:
        from safetensors.torch import save

        atomic_write(self._path(ck), save({"latent": z}))

    def get(self, i: int, flip: bool) -> torch.Tensor:
        return self.latents[(i, flip)]
