"""`lorafw demo`: a real training run on a built-in default, with nothing to download.

Writes a small synthetic dataset (coloured shapes with booru-style tag captions, several aspect
ratios, in a `REPEATS_NAME` folder) and a tiny SD1.5-architecture checkpoint as one original-
layout .safetensors, then trains the sd15_character recipe on them through the ordinary
command-line path — the same code a real run takes, only smaller numbers — and ends as the guide does,
with the newest epochs rendered across LoRA weights as one labelled grid; then it prints the recommended
epoch and weight and the path of report.html.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from lorafw.cli.args import Parser
from lorafw.errors import LorafwError

# The tiny model, the training command line and the grid are imported inside main (on purpose): `lorafw
# demo --help` and the other commands load none of them.

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (220, 40, 40), "blue": (40, 70, 220), "green": (40, 170, 70), "yellow": (235, 200, 40)}
BACKGROUNDS = {"white background": (245, 245, 245), "grey background": (128, 128, 128), "black background": (15, 15, 15)}
SIZES = ((128, 128), (192, 128), (128, 192), (160, 160), (256, 128))


def make_dataset(root: Path, n_images: int = 12, repeats: int = 4, trigger: str = "shapes_demo", seed: int = 0) -> Path:
    """root/REPEATS_shapes/0001.png + 0001.txt …; returns the dataset root."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder = root / f"{repeats}_shapes"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        shape, (cname, colour), (bname, bg) = SHAPES[i % 3], rng.choice(list(COLOURS.items())), rng.choice(list(BACKGROUNDS.items()))
        w, h = SIZES[i % len(SIZES)]
        im = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(im)
        s = min(w, h) * rng.uniform(0.45, 0.7)
        cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * w, h / 2 + rng.uniform(-0.15, 0.15) * h
        box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
        if shape == "circle":
            d.ellipse(box, fill=colour)
        elif shape == "square":
            d.rectangle(box, fill=colour)
        else:
            d.polygon([(cx, cy - s / 2), (cx - s / 2, cy + s / 2), (cx + s / 2, cy + s / 2)], fill=colour)
        im.save(folder / f"{i + 1:04d}.png")
        tags = [trigger, f"{cname} {shape}", bname, "simple", "no humans"]
        (folder / f"{i + 1:04d}.txt").write_text(", ".join(tags) + "\n")
    return root


def make_base_model(path: Path, seed: int = 0) -> Path:
    from lorafw.models.tiny import build_sd15, save_single_file

    if not path.is_file():
        save_single_file(build_sd15(seed), path)
    return path


def demo_overrides(model: Path, data: Path, out: Path, epochs: int) -> list[str]:
    """The guide's SD1.5 character recipe, scaled to a tiny model that trains in about a minute on a CPU."""
    return [
        "+recipe=sd15_character",
        f"base_model.path={model}",
        f"dataset.root={data}",
        "dataset.resolution=128",
        "dataset.min_bucket_reso=64",
        "dataset.max_bucket_reso=256",
        f"train.epochs={epochs}",
        "output.name=shapes_demo",
        f"output.dir={out}",
        "validation.split=0.17",  # two images held out: the recommendation rests on validation loss
        "sample.prompts=['shapes_demo, red circle, white background, simple --d 1',"
        "'shapes_demo, blue square, black background, simple --d 2']",  # two prompts: collapse can be seen
        "sample.every_n_epochs=5",
        "sample.steps=12",
    ]


def main(argv: list[str]) -> int:
    ap = Parser("demo", __doc__.splitlines()[0])
    ap.add_argument("--dir", default="lorafw-demo", help="where the demo's model, dataset and runs go (default: ./lorafw-demo)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides, e.g. network.dim=8")
    args = ap.parse_args(argv)
    base = Path(args.dir).resolve()
    model = make_base_model(base / "models" / "tiny-sd15.safetensors")
    data = base / "dataset"
    if not data.is_dir():
        make_dataset(data)
    out = base / "runs" / time.strftime("%Y%m%d-%H%M%S")
    print(f"lorafw demo: tiny SD1.5-architecture model {model}\nlorafw demo: dataset {data} (12 images × 4 repeats)")
    from lorafw.cli.train import hydra_main

    rc = hydra_main(demo_overrides(model, data, out, args.epochs) + list(args.overrides))
    if rc != 0:
        return rc
    # The guide's last step, done for you: the newest epochs across LoRA weights, one labelled image.
    from lorafw.sampling.grid import grid

    last = [e for e in range(args.epochs, max(0, args.epochs - 4), -1)]
    try:
        written = grid(out, [f"grid.epochs=[{','.join(map(str, last))}]"])
    except LorafwError as e:
        print(f"lorafw: {e}")
        return e.exit_code
    print("lorafw demo: epoch × weight grid (rows: epochs, columns: LoRA weights 1.0 … 0.5):\n"
          + "\n".join(f"  {p}" for p in written))
    from lorafw.outputs.summary import read_summary

    rec = (read_summary(out) or {}).get("recommended")
    if rec:
        print(f"lorafw demo: recommended: {rec['file']} at weight {rec['weight']:g} — {rec['why']}")
    report = out / "report.html"
    if not report.is_file():
        from lorafw.outputs.report import write_report

        report = write_report(out)
    print(f"lorafw demo: the whole run on one page: {report}")
    return 0
