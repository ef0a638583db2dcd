"""The training set: every image placed in its bucket, each repeat an item, batches per epoch.

Pure bookkeeping over `folders.scan` output (no pixels, no torch): the trainer and `plan`
share it, so the step count the plan prints is the step count the trainer runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from lorafw.config.spec import DatasetSpec
from lorafw.data.buckets import Placement, Size, assign, epoch_batches, steps_per_epoch
from lorafw.data.captions import build_caption, join_tags, split_tags, tag_frequency, with_trigger
from lorafw.data.folders import Folder, ImageEntry


@dataclass(frozen=True)
class TrainImage:
    entry: ImageEntry
    folder: int  # index into TrainData.folders
    placement: Placement


def derive_seed(*parts: Any) -> int:
    """A seed that depends only on `parts` (e.g. seed, "epoch", 3): any epoch or step can be replayed alone."""
    import hashlib

    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


@dataclass
class TrainData:
    folders: list[Folder]
    images: list[TrainImage]
    buckets: dict[Size, list[int]]  # bucket → image index per item (an image appears `repeats` times)

    @property
    def n_items(self) -> int:
        return sum(len(v) for v in self.buckets.values())

    def steps_per_epoch(self, batch_size: int, grad_accum: int = 1) -> int:
        return steps_per_epoch([len(v) for v in self.buckets.values()], batch_size, grad_accum)

    def batches_per_epoch(self, batch_size: int) -> int:
        return steps_per_epoch([len(v) for v in self.buckets.values()], batch_size, 1)

    def epoch_batches(self, seed: int, epoch: int, batch_size: int) -> list[list[int]]:
        return epoch_batches(self.buckets, batch_size, random.Random(derive_seed(seed, "epoch", epoch)))

    def base_caption(self, i: int) -> str:
        """The caption before shuffling: the file's tags with the folder's trigger first (concept name if no file)."""
        img = self.images[i]
        f = self.folders[img.folder]
        raw = img.entry.caption if img.entry.has_caption else f.name
        return join_tags(with_trigger(split_tags(raw), f.trigger))

    def caption(self, i: int, rng: random.Random) -> str:
        img = self.images[i]
        f = self.folders[img.folder]
        raw = img.entry.caption if img.entry.has_caption else f.name
        return build_caption(raw, f.trigger, f.keep_tokens, f.shuffle_caption, rng)

    def flip_allowed(self, i: int) -> bool:
        return self.folders[self.images[i].folder].flip_aug

    # -- metadata for the LoRA file (FORMATS.md) -----------------------------------------
    def tag_frequency(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for fi, f in enumerate(self.folders):
            caps = [self.base_caption(i) for i, im in enumerate(self.images) if im.folder == fi]
            out[f.path.name] = tag_frequency(caps)
        return out

    def dataset_dirs(self) -> dict[str, dict[str, int]]:
        return {f.path.name: {"n_repeats": f.repeats, "img_count": len(f.images)} for f in self.folders}

    def bucket_info(self) -> dict[str, Any]:
        sizes = sorted(self.buckets)
        errors = []
        for im in self.images:
            w, h = im.entry.size
            bw, bh = im.placement.bucket
            errors.append(abs(w / h - bw / bh))
        return {
            "buckets": {str(i): {"resolution": list(s), "count": len(self.buckets[s])} for i, s in enumerate(sizes)},
            "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0,
        }

    def triggers(self) -> list[str]:
        return [f.trigger for f in self.folders if f.trigger]


def build(folders: list[Folder], ds: DatasetSpec) -> TrainData:
    """Place every image in a bucket and add one item per repeat."""
    images: list[TrainImage] = []
    buckets: dict[Size, list[int]] = {}
    for fi, f in enumerate(folders):
        for e in f.images:
            w, h = e.size
            pl = assign(
                w, h, ds.resolution, ds.enable_bucket, ds.min_bucket_reso, ds.max_bucket_reso,
                ds.bucket_reso_steps, ds.bucket_no_upscale,
            )
            idx = len(images)
            images.append(TrainImage(e, fi, pl))
            buckets.setdefault(pl.bucket, []).extend([idx] * f.repeats)
    return TrainData(folders=folders, images=images, buckets=dict(sorted(buckets.items())))


def bucket_histogram(data: TrainData) -> dict[str, int]:
    return {f"{w}x{h}": len(v) for (w, h), v in data.buckets.items()}

