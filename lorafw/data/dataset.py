"""The training set: every image placed in its bucket, each repeat an item, batches per epoch.

Pure bookkeeping over `folders.scan` output (no pixels, no torch): the trainer and `plan`
share it, so the step count the plan prints is the step count the trainer runs.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from typing import Any

from lorafw.config.spec import DatasetSpec
from lorafw.data.buckets import Placement, Size, assign, epoch_batches, steps_per_epoch
from lorafw.data.captions import build_caption, fixed_and_flexible, join_tags, tag_frequency
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
    repeats: list[int]  # per image: how many items it has per epoch
    prior_loss_weight: float = 1.0

    @property
    def n_items(self) -> int:
        return sum(len(v) for v in self.buckets.values())

    def is_reg(self, i: int) -> bool:
        return self.folders[self.images[i].folder].is_reg

    @property
    def n_train_items(self) -> int:
        """Σ images × repeats over the training folders (kohya's num_train_images; the guide's T)."""
        return sum(r for i, r in enumerate(self.repeats) if not self.is_reg(i))

    @property
    def n_reg_items(self) -> int:
        return sum(r for i, r in enumerate(self.repeats) if self.is_reg(i))

    @property
    def n_reg_images(self) -> int:
        return sum(1 for i, r in enumerate(self.repeats) if r and self.is_reg(i))

    def loss_weight(self, i: int) -> float:
        return self.prior_loss_weight if self.is_reg(i) else 1.0

    def steps_per_epoch(self, batch_size: int, grad_accum: int = 1) -> int:
        return steps_per_epoch([len(v) for v in self.buckets.values()], batch_size, grad_accum)

    def batches_per_epoch(self, batch_size: int) -> int:
        return steps_per_epoch([len(v) for v in self.buckets.values()], batch_size, 1)

    def epoch_batches(self, seed: int, epoch: int, batch_size: int) -> list[list[int]]:
        return epoch_batches(self.buckets, batch_size, random.Random(derive_seed(seed, "epoch", epoch)))

    def _raw(self, i: int) -> tuple[str, Folder]:
        img = self.images[i]
        f = self.folders[img.folder]
        return (img.entry.caption if img.entry.has_caption else f.name), f

    def base_caption(self, i: int) -> str:
        """The caption before any randomness: the file's tags, trigger first (the concept name if no file)."""
        raw, f = self._raw(i)
        fixed, flex, suffix = fixed_and_flexible(raw, f.trigger, f.keep_tokens, f.keep_tokens_separator)
        return join_tags(fixed + flex + suffix)

    def caption(self, i: int, rng: random.Random) -> str:
        """One draw of image i's caption: shuffled and dropped out as its folder says."""
        raw, f = self._raw(i)
        return build_caption(raw, f.trigger, f.keep_tokens, f.shuffle_caption, rng, f.keep_tokens_separator,
                             f.caption_tag_dropout_rate, f.caption_dropout_rate)

    def flip_allowed(self, i: int) -> bool:
        return self.folders[self.images[i].folder].flip_aug

    def random_crop(self, i: int) -> bool:
        return self.folders[self.images[i].folder].random_crop

    def placed(self, batch: list[int], crops: list[tuple[int, int]]) -> TrainData:
        """The batch's items as this step crops them, item j of the batch as image j of the result (a random crop
        moves each window, and one image can be in a batch twice): what a family's `conditioning` reads."""
        images = [dataclasses.replace(self.images[i], placement=dataclasses.replace(self.images[i].placement, crop=c))
                  for i, c in zip(batch, crops)]
        return dataclasses.replace(self, images=images, buckets={}, repeats=[self.repeats[i] for i in batch])

    # -- metadata for the LoRA file (FORMATS.md) -----------------------------------------
    def tag_frequency(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for fi, f in enumerate(self.folders):
            if f.is_reg:
                continue
            caps = [self.base_caption(i) for i, im in enumerate(self.images) if im.folder == fi]
            out[f.path.name] = tag_frequency(caps)
        return out

    def dataset_dirs(self, reg: bool = False) -> dict[str, dict[str, int]]:
        """kohya's ss_dataset_dirs (training folders) or, with reg, ss_reg_dataset_dirs."""
        return {f.path.name: {"n_repeats": f.repeats, "img_count": len(f.images)} for f in self.folders if f.is_reg == reg}

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


def reg_repeats(reg_images: list[int], reg_base: list[int], n_train_items: int) -> list[int]:
    """Per regularisation image, its items per epoch — counted as kohya sd-scripts counts them: images are
    taken in order with their folder's repeats until they match the training items, then each gets one
    more repeat in turn until they do. So reg items ≈ training items, whatever the folders' repeats."""
    reps = [0] * len(reg_images)
    if not reg_images or n_train_items == 0:
        return reps
    n, first = 0, True
    while n < n_train_items:
        for j in range(len(reg_images)):
            if first:
                reps[j] = reg_base[j]
                n += reg_base[j]
            else:
                reps[j] += 1
                n += 1
            if n >= n_train_items:
                break
        first = False
    return reps


def build(folders: list[Folder], ds: DatasetSpec) -> TrainData:
    """Place every image in a bucket and add one item per repeat (regularisation images as kohya counts them)."""
    images: list[TrainImage] = []
    repeats: list[int] = []
    for fi, f in enumerate(folders):
        for e in f.images:
            w, h = e.size
            pl = assign(
                w, h, ds.size, ds.enable_bucket, ds.min_bucket_reso, ds.max_bucket_reso,
                ds.bucket_reso_steps, ds.bucket_no_upscale,
            )
            images.append(TrainImage(e, fi, pl))
            repeats.append(f.repeats)
    reg = [i for i, im in enumerate(images) if folders[im.folder].is_reg]
    reg_set = set(reg)
    n_train = sum(r for i, r in enumerate(repeats) if i not in reg_set)
    for i, r in zip(reg, reg_repeats(reg, [repeats[i] for i in reg], n_train)):
        repeats[i] = r
    buckets: dict[Size, list[int]] = {}
    for i, im in enumerate(images):
        if repeats[i]:
            buckets.setdefault(im.placement.bucket, []).extend([i] * repeats[i])
    return TrainData(folders=folders, images=images, buckets=dict(sorted(buckets.items())), repeats=repeats,
                     prior_loss_weight=ds.prior_loss_weight)


def bucket_histogram(data: TrainData) -> dict[str, int]:
    return {f"{w}x{h}": len(v) for (w, h), v in data.buckets.items()}

