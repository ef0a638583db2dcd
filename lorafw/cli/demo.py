"""`lorafw demo`: a real training run on a built-in default, with nothing to download.

Writes a small synthetic dataset (red shapes on white with booru-style tag captions, several aspect ratios,
in a `REPEATS_NAME` folder) and a tiny SD1.5-architecture checkpoint as one original-layout .safetensors — a
random text encoder, a UNet built to draw a blank grey canvas (lorafw/models/canvas_unet.py) and a VAE whose
latents are the pixels 8× smaller (lorafw/models/pixel_vae.py), so that what the LoRA learns can be seen —
then trains the sd15_character recipe on them through the ordinary command-line path: the same code a real
run takes, only smaller numbers. It ends as the guide does, with saved epochs rendered across LoRA weights
(weight 0: the base model), and writes RUN/demo.png: each prompt without and with the LoRA, same seed, beside
a training image, above the losses per epoch. It says whether the samples moved toward the training images'
colours, prints the recommended epoch and weight, and the path of report.html. docs/assets/demo.png is this
picture from `lorafw demo` (tools/demo_png.py).
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
TRIGGER_NAME, TRIGGER_COLOUR = "red", (220, 40, 40)  # one colour: what a short run can visibly learn
BACKGROUND = ("white background", (245, 245, 245))
SIZES = ((128, 128), (192, 128), (128, 192), (160, 160), (256, 128))
MODEL_FILE = "tiny-sd15-canvas.safetensors"  # a new name whenever the model changes: demo folders keep theirs
EPOCHS = 10
WEIGHTS = (1.0, 0.0)  # the grid's columns; 0 = the base model
MIN_SHIFT = 0.03  # the mean-colour distance must fall by this much to call it learned


def make_dataset(root: Path, n_images: int = 12, repeats: int = 4, trigger: str = "shapes_demo", seed: int = 0) -> Path:
    """root/REPEATS_shapes/0001.png + 0001.txt …; returns the dataset root."""
    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    folder = root / f"{repeats}_shapes"
    folder.mkdir(parents=True, exist_ok=True)
    bname, bg = BACKGROUND
    for i in range(n_images):
        shape = SHAPES[i % 3]
        w, h = SIZES[i % len(SIZES)]
        im = Image.new("RGB", (w, h), bg)
        d = ImageDraw.Draw(im)
        s = min(w, h) * rng.uniform(0.45, 0.7)
        cx, cy = w / 2 + rng.uniform(-0.15, 0.15) * w, h / 2 + rng.uniform(-0.15, 0.15) * h
        box = (cx - s / 2, cy - s / 2, cx + s / 2, cy + s / 2)
        if shape == "circle":
            d.ellipse(box, fill=TRIGGER_COLOUR)
        elif shape == "square":
            d.rectangle(box, fill=TRIGGER_COLOUR)
        else:
            d.polygon([(cx, cy - s / 2), (cx - s / 2, cy + s / 2), (cx + s / 2, cy + s / 2)], fill=TRIGGER_COLOUR)
        im.save(folder / f"{i + 1:04d}.png")
        tags = [trigger, f"{TRIGGER_NAME} {shape}", bname, "simple", "no humans"]
        (folder / f"{i + 1:04d}.txt").write_text(", ".join(tags) + "\n")
    return root


def make_base_model(path: Path, seed: int = 0) -> Path:
    """The tiny SD1.5 model: a random text encoder, a UNet that draws a blank canvas and the pixel VAE."""
    from lorafw.models.canvas_unet import canvas_unet
    from lorafw.models.pixel_vae import pixel_vae
    from lorafw.models.tiny import build_sd15, save_single_file

    if not path.is_file():
        save_single_file({**build_sd15(seed), "unet": canvas_unet(seed), "vae": pixel_vae()}, path)
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
        "optimizer.lr=2e-3",  # 4× the recipe's: a tiny model and 200 steps
        "output.name=shapes_demo",
        f"output.dir={out}",
        "validation.split=0.17",  # two images held out: the recommendation rests on validation loss
        "sample.prompts=['shapes_demo, red circle, white background, simple --d 1',"
        "'shapes_demo, red square, white background, simple --d 2']",  # two prompts: collapse can be seen
        "sample.every_n_epochs=0",  # the grid renders the epochs the picture shows
        "sample.steps=12",
    ]


def main(argv: list[str]) -> int:
    ap = Parser("demo", __doc__.splitlines()[0])
    ap.add_argument("--dir", default="lorafw-demo",
                    help="where the demo's model, dataset and runs go (default: ./lorafw-demo)")
    ap.add_argument("--epochs", type=int, default=EPOCHS)
    ap.add_argument("overrides", nargs="*", help="extra key=value overrides, e.g. network.dim=8")
    args = ap.parse_args(argv)
    base = Path(args.dir).resolve()
    model = make_base_model(base / "models" / MODEL_FILE)
    data = base / "dataset"
    if not data.is_dir():
        make_dataset(data)
    out = base / "runs" / time.strftime("%Y%m%d-%H%M%S")
    print(f"lorafw demo: tiny SD1.5-architecture model whose base draws a blank grey canvas: {model}\n"
          f"lorafw demo: dataset {data} (12 images of {TRIGGER_NAME} shapes × 4 repeats)")
    from lorafw.cli.train import hydra_main

    rc = hydra_main(demo_overrides(model, data, out, args.epochs) + list(args.overrides))
    if rc != 0:
        return rc
    # The guide's last step, done for you: saved epochs across LoRA weights, one labelled image per prompt.
    # Weight 0 is the base model itself, with the same prompt and seed: the picture's "before".
    from lorafw.sampling.grid import grid

    shown = picture_epochs(args.epochs)
    try:
        written = grid(out, [f"grid.epochs=[{','.join(map(str, shown))}]",
                             f"grid.weights=[{','.join(map(str, WEIGHTS))}]"])
    except LorafwError as e:
        print(f"lorafw: {e}")
        return e.exit_code
    print("lorafw demo: epoch × weight grid (rows: epochs, columns: LoRA weights; weight 0 is the base model):\n"
          + "\n".join(f"  {p}" for p in written))
    from lorafw.outputs.summary import read_summary

    summary = read_summary(out) or {}
    picture, verdict = write_picture(out, data, summary, shown)
    print(f"lorafw demo: base model vs. LoRA, same prompts and seeds, with the losses per epoch: {picture}")
    print(f"lorafw demo: {verdict}")
    rec = summary.get("recommended")
    if rec:
        print(f"lorafw demo: recommended: {rec['file']} at weight {rec['weight']:g} — {rec['why']}")
    report = out / "report.html"
    if not report.is_file():
        from lorafw.outputs.report import write_report

        report = write_report(out)
    print(f"lorafw demo: the whole run on one page: {report}")
    return 0


def picture_epochs(epochs: int) -> list[int]:
    """The last epoch and the one halfway, newest first: how the LoRA got there."""
    return sorted({epochs, max(1, epochs // 2)}, reverse=True)


def example(images: list[Path], prompt: str, size: tuple[int, int]) -> Path:
    """The training image whose caption shares the prompt's shape tag, of the cells' size if there is one."""
    tags = {t.strip() for t in prompt.split(",")}

    def fit(p: Path) -> tuple[bool, bool]:
        from PIL import Image

        caption = {t.strip() for t in p.with_suffix(".txt").read_text().split(",")}
        with Image.open(p) as im:
            return bool(tags & caption - {"shapes_demo", BACKGROUND[0], "simple", "no humans"}), im.size == size

    return max(images, key=fit)


def write_picture(out: Path, data: Path, summary: dict, shown: list[int]) -> tuple[Path, str]:
    """RUN/demo.png from the grid's cells, and one honest sentence on whether the samples moved toward the
    training images' colours (distance of mean colours, base → LoRA at weight 1.0, the last epoch)."""
    from PIL import Image

    from lorafw.cli import demo_picture as dp
    from lorafw.config.compose import load_spec
    from lorafw.config.prompts import read_prompts

    spec = load_spec(out, [], check_paths=False)
    prompts = read_prompts(spec.sample, spec.dataset.size)
    name, grids = spec.output.name, out / "grids"
    images = sorted(data.glob("*/*.png"))
    target = dp.mean_colour([Image.open(p) for p in images])
    rows, shifts = [], []
    for i, p in enumerate(prompts):
        base = dp.cell(grids, i, f"{name}-{shown[0]:02d}", 0.0)
        shown_image = Image.open(example(images, p.prompt, base.size)).convert("RGB").resize(base.size)
        cells = [("a training image", shown_image), ("base model", base)]
        cells += [(f"LoRA 1.0, epoch {e}", dp.cell(grids, i, f"{name}-{e:02d}", 1.0)) for e in sorted(shown)]
        rows.append((f"{p.prompt}  (seed {p.seed}, {p.steps} steps, CFG {p.cfg_scale:g})", cells))
        shifts.append(dp.colour_shift(base, cells[-1][1], target))
    epochs = summary.get("epochs", [])
    title = (f"lorafw demo: a LoRA trained {shown[0]} epochs ({summary.get('steps', '?')} steps) on 12 {TRIGGER_NAME} "
             "shapes; in each row the same prompt and seed, without and with the LoRA")
    before = sum(b for b, _ in shifts) / len(shifts)
    after = sum(a for _, a in shifts) / len(shifts)
    vals = [e["val_loss"] for e in epochs if e.get("val_loss") is not None]
    loss = f"; validation loss {vals[0]:.3f} (epoch 1) → {vals[-1]:.3f}" if len(vals) > 1 else ""
    if after < before - MIN_SHIFT:
        verdict = (f"the LoRA learned the training images' colours: mean-colour distance from them {before:.2f} "
                   f"(base model) → {after:.2f} (LoRA){loss}")
    else:
        verdict = (f"in {shown[0]} epochs the tiny model did not learn a visible concept (mean-colour distance "
                   f"from the training images {before:.2f} → {after:.2f}); what it did learn is in the loss "
                   f"chart{loss}")
    picture = out / "demo.png"
    plain = verdict.replace("→", "->")  # Pillow's built-in font has no arrow
    dp.compose(rows, epochs, f"{title}. Verdict: {plain}.").save(picture)  # the picture says what the printout says
    return picture, verdict
