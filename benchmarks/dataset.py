"""Dataset pipeline figures: `lorafw plan` wall time on 1,000 images, latent cache build rate, loader
throughput with cached latents against the tiny model's training step rate, lint speed, and how fast
the latent cache's images are decoded for the VAE with and without loader threads.

    python benchmarks/dataset.py [--images 1000]

Goal (issue 4): `lorafw plan` under 1.5 s on 1,000 images. Figures only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def make_images(root: Path, n: int) -> Path:
    """n JPEGs of assorted sizes and aspect ratios with tag captions, in 4 REPEATS_NAME folders."""
    from PIL import Image, ImageDraw

    rng = random.Random(0)
    sizes = [(512, 768), (768, 512), (640, 640), (832, 1216), (1024, 1024), (600, 900)]
    for i in range(n):
        folder = root / f"{1 + i % 4}_concept{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        w, h = sizes[i % len(sizes)]
        im = Image.new("RGB", (w, h), (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
        ImageDraw.Draw(im).ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(rng.randrange(256), 90, 200))
        im.save(folder / f"{i:05d}.jpg", quality=85)
        (folder / f"{i:05d}.txt").write_text(f"concept{i % 4}, 1girl, solo, tag{i % 17}, tag{i % 5}")
    return root


def time_plan(root: Path) -> float:
    cmd = [sys.executable, "-m", "lorafw", "plan", "+recipe=sd15_character", f"dataset.root={root}"]
    subprocess.run(cmd, check=True, capture_output=True)  # warm the file cache
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=1000)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lorafw-bench-data-"))
    t0 = time.perf_counter()
    root = make_images(work / "data", args.images)
    print(f"made {args.images} images in {time.perf_counter() - t0:.1f} s")
    print(f"lorafw plan (wall, {args.images} images)  {time_plan(root):.2f} s   (goal < 1.5 s)")

    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict
    from lorafw.data.folders import scan
    from lorafw.data.lint import lint

    spec, _ = spec_from_dict(compose_dict("sd15_character", [f"dataset.root={root}", "base_model.path=-"]), need_model=False)
    folders, _ = scan(spec.dataset)
    t0 = time.perf_counter()
    rep = lint(folders, spec.dataset, deep=True)
    dt = time.perf_counter() - t0
    print(f"lint, decoding every image          {args.images / dt:.0f} images/s ({rep.summary()})")

    # Latent cache and loader on the tiny model, at the demo's scale (small images train fast on a CPU).
    from lorafw.cli.demo import demo_overrides, make_base_model, make_dataset
    from lorafw.run import resolve_outputs
    from lorafw.trainers import batch as batch_mod
    from lorafw.trainers.trainer import prepare

    from lorafw.config.compose import compose

    model = make_base_model(work / "tiny.safetensors")
    data = make_dataset(work / "demo", n_images=48)
    overrides = [o for o in demo_overrides(model, data, work / "run", 1) if not o.startswith("+recipe")]
    s = resolve_outputs(compose("sd15_character", overrides))
    tr = prepare(s, s.output.dir)
    tr.setup_models()
    t0 = time.perf_counter()
    tr.setup_caches()
    cache_s = time.perf_counter() - t0
    print(f"latent cache build (tiny VAE)        {len(tr.data.images) / cache_s:.0f} images/s")
    tr.setup_training()
    batches = tr.data.epoch_batches(s.seed, 1, s.train.batch_size)
    t0 = time.perf_counter()
    n = 0
    for _ in range(20):
        for b in batches:
            rng = random.Random(n)
            batch_mod.latents(tr.dev, tr.models, tr.data, tr.caches.latents, b, [False] * len(b))
            [tr.data.caption(i, rng) for i in b]
            n += len(b)
    loader = n / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    tr.train()
    step = tr.state.global_step / (time.perf_counter() - t0)
    print(f"loader, cached latents              {loader:.0f} items/s")
    print(f"training (tiny model, batch {s.train.batch_size})       {step * s.train.batch_size:.0f} items/s ({step:.1f} steps/s)")
    print(f"loader / training                   {loader / (step * s.train.batch_size):.0f}x (the loader is not the bottleneck when > 1)")
    time_decoding(root, min(args.images, 200))


class InstantVAE:
    """Stands in for a GPU VAE (a few ms per image): what remains of the cache build is the CPU's decoding,
    the part that keeps a GPU waiting."""

    class _Dist:
        def __init__(self, x):
            import torch

            self.mean = self.std = torch.zeros(x.shape[0], 4, x.shape[2] // 8, x.shape[3] // 8)

    class _Out:
        def __init__(self, x):
            self.latent_dist = InstantVAE._Dist(x)

    def encode(self, x):
        return InstantVAE._Out(x)


def time_decoding(root: Path, n: int) -> None:
    """Images/s the latent cache is fed at sd15_character's 768 px with flip_aug: one decode per (image,
    flip) in the main thread (lorafw before loader threads) against one decode per image on threads."""
    import torch

    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict
    from lorafw.data.dataset import build
    from lorafw.data.folders import scan
    from lorafw.data.latents import LatentCache, load_pixels
    from lorafw.data.prefetch import resolve_workers

    spec, _ = spec_from_dict(compose_dict("sd15_character", [f"dataset.root={root}", "base_model.path=-", "dataset.flip_aug=true"]),
                             need_model=False)
    folders, _ = scan(spec.dataset)
    data = build(folders, spec.dataset)
    keys = [(i, f) for i in range(n) for f in (False, True)]

    class DecodePerLatent(LatentCache):  # how the cache was fed before: each (image, flip) decoded on its own
        def _load(self, unit):
            i, flips = unit
            return {flip: load_pixels(self.data.images[i], flip) for flip, _ in flips}

    print(f"cache feed at 768 px, flip_aug, {n} images ({len(keys)} latents), instant stand-in VAE:")
    before = None
    for label, cls, workers in (("one decode per latent, main thread", DecodePerLatent, 0),
                                ("one decode per image, main thread ", LatentCache, 0),
                                (f"one decode per image, {resolve_workers(None)} thread(s)", LatentCache, resolve_workers(None))):
        c = cls(data, InstantVAE(), 0.18215, torch.device("cpu"), torch.float32, batch_size=1, workers=workers)
        c.wanted = lambda keys=keys: keys  # noqa: E731  (the subset)
        t0 = time.perf_counter()
        c.build()
        dt = time.perf_counter() - t0
        before = before or dt
        print(f"  {label}   {len(keys) / dt:6.1f} latents/s  ({before / dt:.2f}x)")


if __name__ == "__main__":
    main()
