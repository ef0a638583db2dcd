"""Dataset-preparation figures: `dedupe` and `autotag` images/s on a few hundred generated images, and the
tag commands on their captions.

    python benchmarks/prep.py [--images 300] [--model WD_TAGGER_DIR] [--batch-size 8]

Images: JPEGs (a tenth PNG) of 640–1216 px sides, as boorus serve them, in 3 REPEATS_NAME folders,
with resized + re-encoded copies (1 in 10) and exact copies (1 in 20) mixed in. Without --model the
tagger is a tiny WD-v3-shaped model at the real input size (448): the figure is then the pipeline
(decoding, padding, resizing, batching) — a real ViT tagger adds its own inference time on top;
pass --model to measure one. Figures only; nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_images(root: Path, n: int) -> tuple[Path, int]:
    """n images (copies included) with captions; returns (root, copies made)."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = random.Random(0)
    sizes = [(768, 1024), (1024, 1024), (832, 1216), (1024, 768), (640, 960)]
    made, copies = [], 0
    for i in range(n):
        folder = root / f"{1 + i % 3}_concept{i % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        if made and i % 10 == 9:  # a resized, re-encoded copy of an earlier image
            src = Image.open(rng.choice(made))
            w, h = src.size
            src.convert("RGB").resize((w * 2 // 3, h * 2 // 3), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.jpg", quality=75)
            copies += 1
        elif made and i % 20 == 4:  # a byte-identical copy
            src_path = rng.choice(made)
            shutil.copyfile(src_path, folder / f"{i:04d}{src_path.suffix}")
            copies += 1
        else:
            w, h = sizes[i % len(sizes)]
            im = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
            d = ImageDraw.Draw(im)
            for _ in range(14):
                x, y = rng.randrange(w - 60), rng.randrange(h - 60)
                box = (x, y, x + rng.randrange(40, 400), y + rng.randrange(40, 400))
                (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=tuple(rng.randrange(256) for _ in range(3)))
            im = im.filter(ImageFilter.GaussianBlur(1.5))
            path = folder / (f"{i:04d}.png" if i % 10 == 0 else f"{i:04d}.jpg")
            im.save(path, **({} if path.suffix == ".png" else {"quality": 90}))
            made.append(path)
        (folder / f"{i:04d}.txt").write_text(f"1girl, solo, long_hair, tag{i % 17}, {'red' if i % 2 else 'blue'}_eyes\n")
    return root, copies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--model", help="a WD v3 tagger folder (model.onnx + selected_tags.csv); default: a tiny one")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    from lorafw.prep import plan_add, plan_autotag, plan_dedupe, plan_remove, plan_rename, plan_undo
    from lorafw.prep.autotag import Tagger

    work = Path(tempfile.mkdtemp(prefix="lorafw-bench-prep-"))
    try:
        t0 = time.perf_counter()
        root, copies = make_images(work / "data", args.images)
        print(f"made {args.images} images ({copies} copies among them) in {time.perf_counter() - t0:.1f} s, "
              f"{os.cpu_count()} CPU core(s)")

        t0 = time.perf_counter()
        cs, groups, probes = plan_dedupe([root])
        dt = time.perf_counter() - t0
        moved = sum(len(g.drop) for g in groups)
        print(f"dedupe   {len(probes) / dt:7.1f} images/s  ({len(probes)} images in {dt:.2f} s; "
              f"{len(groups)} groups, {moved} to move of {copies} copies made)")

        if args.model:
            tagger = Tagger(args.model)
            label = Path(args.model).name
        else:
            from lorafw.prep.tiny_tagger import build_tiny_tagger

            tagger = Tagger(build_tiny_tagger(work / "tagger", size=448))
            label = "tiny WD-v3-shaped model, 448 px input: preprocessing + pipeline"
        t0 = time.perf_counter()
        res = plan_autotag([root], tagger, overwrite=True, batch_size=args.batch_size)
        dt = time.perf_counter() - t0
        print(f"autotag  {res.tagged / dt:7.1f} images/s  ({res.tagged} images in {dt:.2f} s, batch {args.batch_size}, "
              f"{tagger.providers[0]}; {label})")

        t0 = time.perf_counter()
        n = 0
        for plan in (lambda: plan_add([root], "trigger"), lambda: plan_remove([root], ["*_hair", "*_eyes"]),
                     lambda: plan_rename([root])):
            cs = plan()
            cs.apply()
            n += len(cs)
        for _ in range(3):
            plan_undo([root]).apply()
        print(f"tags     add + remove + rename, then 3 undos: {n} file changes in {time.perf_counter() - t0:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
