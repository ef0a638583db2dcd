"""Aspect-ratio buckets and the step arithmetic that follows from them. Pure functions.

Buckets hold about W×H pixels (dataset.resolution; N is N×N) with sides in `step` increments between min and
max (kohya sd-scripts' scheme, so the same dataset lands in the same buckets). Every batch comes
from one bucket, so a bucket whose item count is not a multiple of the batch size adds one
short batch: steps per epoch = Σ_bucket ceil(items / batch), which equals the guide's
Σ(images × repeats) ÷ batch only when everything shares a bucket and divides evenly.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Hashable, Sequence, TypeVar

Size = tuple[int, int]  # (width, height)
# Every training image is resized with PIL's filter of this name, which is kohya's resize_interpolation="lanczos"
# (kohya's default, None, shrinks with cv2's INTER_AREA). The exporter and the metadata write it by this name.
RESIZE_INTERPOLATION = "lanczos"
T = TypeVar("T", bound=Hashable)


def make_buckets(resolution: Size, min_reso: int, max_reso: int, step: int) -> list[Size]:
    """All (w, h) with w·h ≤ W·H of `resolution` (W, H), sides multiples of `step` in [min_reso, max_reso], and
    the square of that area, sorted: sd-scripts' model_util.make_bucket_resolutions(max_reso=(W, H), ...)."""
    max_area = resolution[0] * resolution[1]
    side = int(math.sqrt(max_area) // step) * step
    buckets = {(side, side)}
    w = min_reso
    while w <= max_reso:
        h = min(max_reso, int((max_area // w) // step) * step)
        if h >= min_reso:
            buckets.add((w, h))
            buckets.add((h, w))
        w += step
    return sorted(buckets)


def nearest_bucket(width: int, height: int, buckets: Sequence[Size]) -> Size:
    """The image's own size where that is a bucket, else the bucket whose aspect ratio is closest to the image's
    (ties: the first in sorted order), as sd-scripts' BucketManager.select_bucket."""
    if (width, height) in buckets:
        return (width, height)
    ar = width / height
    return min(buckets, key=lambda b: abs(b[0] / b[1] - ar))


def round_to_step(x: float, step: int) -> int:
    return int(x + 0.5) // step * step  # to the nearest pixel, then down to a multiple of step


def no_upscale_bucket(width: int, height: int, resolution: Size, step: int) -> Size:
    """Bucket for `bucket_no_upscale`: the image itself (shrunk to the area if larger), sides cut to `step`."""
    return no_upscale_size(width, height, resolution, step)[0]


def no_upscale_size(width: int, height: int, resolution: Size, step: int) -> tuple[Size, Size]:
    """(bucket, resized size) under `bucket_no_upscale`, as kohya's BucketManager.select_bucket: an image larger
    than W·H pixels is shrunk (keeping its aspect ratio, one side rounded to `step`); a smaller one keeps its
    size. The bucket is that size cut down to multiples of `step`, so the image is cropped to it, never
    resized to cover it (an image under one step on a side is the exception: it is enlarged to one step)."""
    max_area = resolution[0] * resolution[1]
    ar = width / height
    if width * height > max_area:
        rw = math.sqrt(max_area * ar)
        rh = max_area / rw
        bw = round_to_step(rw, step)
        bh_w = round_to_step(bw / ar, step)
        bh = round_to_step(rh, step)
        bw_h = round_to_step(bh * ar, step)
        err_w = abs(bw / bh_w - ar) if bh_w else math.inf
        err_h = abs(bw_h / bh - ar) if bh else math.inf
        size = (bw, int(bw / ar + 0.5)) if err_w < err_h else (int(bh * ar + 0.5), bh)
    else:
        size = (width, height)
    return (max(step, size[0] - size[0] % step), max(step, size[1] - size[1] % step)), size


@dataclass(frozen=True)
class Placement:
    """How one image becomes a bucket-sized training image."""

    bucket: Size  # (w, h) of the training image
    resized: Size  # image resized to this (covers the bucket) ...
    crop: tuple[int, int]  # ... then cropped at (left, top)


def place(width: int, height: int, bucket: Size) -> Placement:
    """Resize to cover `bucket` keeping the aspect ratio, then crop the overflow evenly (centre crop)."""
    bw, bh = bucket
    if width / height > bw / bh:
        scale = bh / height  # wider than the bucket: match heights, crop the sides
    else:
        scale = bw / width
    rw, rh = max(bw, int(width * scale + 0.5)), max(bh, int(height * scale + 0.5))
    return Placement(bucket=bucket, resized=(rw, rh), crop=((rw - bw) // 2, (rh - bh) // 2))


def size_conditioning(original: Size, pl: Placement, flip: bool) -> tuple[int, int, int, int, int, int]:
    """SDXL's `time_ids` for one image: original (h, w), crop top-left (top, left), target (h, w).

    The crop is where the bucket-sized window sits in the resized image, SAI's definition (their data pipeline
    and diffusers' SDXL training script record the same); a horizontal flip moves it to the mirrored side.
    kohya differs: its get_crop_ltrb records where the image would sit if *fitted inside* the bucket
    (letterbox offsets), which is 0 on the axis SAI's crop is non-zero. SAI's is used because SDXL was trained
    on it; at centre crops both are small and SDXL tolerates either. Under random_crop the window is the one drawn
    for the step (TrainData.placed), so SDXL is told where it is; kohya's stays its letterbox value, the random
    offset not recorded ("no idea how to reflect the cropped value in crop left/top", trim_and_resize_if_required).
    """
    w, h = original
    left, top = pl.crop
    if flip:
        left = pl.resized[0] - pl.bucket[0] - left
    return (h, w, top, left, pl.bucket[1], pl.bucket[0])


def random_crop(pl: Placement, rng: random.Random) -> Placement:
    """`pl` with its window at a random place of the resized image: kohya's random_crop (train_util's
    trim_and_resize_if_required draws random.randint(0, overflow) for the width, then the height, where the
    resized image overflows the bucket). A centre crop has the same resize; only the offset is drawn."""
    (rw, rh), (bw, bh) = pl.resized, pl.bucket
    left = rng.randint(0, rw - bw) if rw > bw else 0
    top = rng.randint(0, rh - bh) if rh > bh else 0
    return Placement(bucket=pl.bucket, resized=pl.resized, crop=(left, top))


def assign(width: int, height: int, resolution: Size, enable: bool, min_reso: int, max_reso: int, step: int,
           no_upscale: bool) -> Placement:
    """Bucket and crop for one image under a dataset's bucket settings; `resolution` is (W, H). Without buckets
    every image is resized to cover W×H and centre-cropped to it (what sd-scripts caches for such a dataset)."""
    if not enable:
        return place(width, height, resolution)
    if no_upscale:
        bucket, (rw, rh) = no_upscale_size(width, height, resolution, step)
        if rw < bucket[0] or rh < bucket[1]:  # under one step on a side: enlarged to cover the bucket
            return place(width, height, bucket)
        return Placement(bucket=bucket, resized=(rw, rh), crop=((rw - bucket[0]) // 2, (rh - bucket[1]) // 2))
    return place(width, height, nearest_bucket(width, height, make_buckets(resolution, min_reso, max_reso, step)))


def steps_per_epoch(bucket_counts: Sequence[int], batch_size: int, grad_accum: int = 1) -> int:
    """Optimizer steps in one epoch: batches never mix buckets; accumulation rounds up like kohya."""
    batches = sum(math.ceil(n / batch_size) for n in bucket_counts if n)
    return math.ceil(batches / grad_accum)


def guide_steps(images_times_repeats: int, epochs: int, batch_size: int) -> float:
    """The guide's estimate: Σ(images × repeats) × epochs ÷ batch (ignores per-bucket remainders)."""
    return images_times_repeats * epochs / batch_size


def epoch_batches(buckets: dict[Size, list[T]], batch_size: int, rng: random.Random) -> list[list[T]]:
    """One epoch's batches: items shuffled within each bucket, cut into batches, batch order shuffled."""
    batches: list[list[T]] = []
    for size in sorted(buckets):
        items = list(buckets[size])
        rng.shuffle(items)
        batches += [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    rng.shuffle(batches)
    return batches
