"""The demo's one picture: the base model beside the LoRA, same prompt and seed, and the losses per epoch.

A newcomer's first question is whether training changed anything. The cells come from `lorafw grid` (the
LoRA at weight 0 is the base model), the losses from run_summary.json; `colour_shift` puts a number on what
the picture shows: how far each sample's mean colour is from the training images' mean colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from lorafw.sampling.grid import _font, _wrap

CHART_H = 150


def mean_colour(images: Sequence[Image.Image]) -> tuple[float, float, float]:
    """The mean RGB (0–255) over every pixel of `images`."""
    import numpy as np

    px = np.concatenate([np.asarray(im.convert("RGB"), dtype=np.float64).reshape(-1, 3) for im in images])
    r, g, b = px.mean(axis=0)
    return float(r), float(g), float(b)


def colour_distance(a: Sequence[float], b: Sequence[float]) -> float:
    """Euclidean RGB distance on 0–255 values, as a fraction of black-to-white (0 = the same colour, 1 = opposite)."""
    return float(sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5 / (3 * 255**2) ** 0.5)


def colour_shift(base: Image.Image, lora: Image.Image, target: Sequence[float]) -> tuple[float, float]:
    """(base, LoRA) distance of each sample's mean colour from `target`, the training images' mean colour."""
    return colour_distance(mean_colour([base]), target), colour_distance(mean_colour([lora]), target)


def loss_chart(epochs: Sequence[dict], width: int, height: int = CHART_H) -> Image.Image:
    """Training and validation loss per epoch as two labelled lines (validation dashed-looking: dots)."""
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    font = _font(12)
    series = {"training loss": ([e.get("train_loss") for e in epochs], (40, 70, 220)),
              "validation loss (held-out images)": ([e.get("val_loss") for e in epochs], (220, 40, 40))}
    values = [v for vs, _ in series.values() for v in vs if v is not None]
    if len(epochs) < 2 or not values:
        d.text((8, height // 2), "(fewer than two epochs: no loss chart)", fill="black", font=font)
        return im
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1e-6
    left, right, top, bottom = 48, width - 10, 24, height - 22
    d.rectangle((left, top, right, bottom), outline=(180, 180, 180))
    for v in (lo, hi):
        y = bottom - (v - lo) / (hi - lo) * (bottom - top)
        d.text((4, y - 6), f"{v:.3f}", fill="black", font=font)
    n = len(epochs)

    def xy(i: int, v: float) -> tuple[float, float]:
        return left + i / (n - 1) * (right - left), bottom - (v - lo) / (hi - lo) * (bottom - top)

    x_label = 4
    for name, (vs, colour) in series.items():
        pts = [xy(i, v) for i, v in enumerate(vs) if v is not None]
        if len(pts) > 1:
            d.line(pts, fill=colour, width=2)
        for x, y in pts:
            d.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        d.text((left + x_label, 4), name, fill=colour, font=font)
        x_label += int(d.textlength(name, font=font)) + 16
    d.text((left, bottom + 4), f"epoch {epochs[0]['epoch']}", fill="black", font=font)
    last = f"epoch {epochs[-1]['epoch']}"
    d.text((right - d.textlength(last, font=font), bottom + 4), last, fill="black", font=font)
    return im


Row = tuple[str, Sequence[tuple[str, Image.Image]]]  # a prompt's caption, its labelled cells


def compose(rows: Sequence[Row], epochs: Sequence[dict], title: str) -> Image.Image:
    """One row per prompt (its caption above it), labelled cells side by side, the loss chart below."""
    cw, ch = rows[0][1][0][1].size
    font = _font(13)
    pad, line = 8, 18
    width = max(pad * 2 + len(cells) * (cw + pad) for _, cells in rows)
    width = max(width, 420)
    title_lines = _wrap(title, font, width - 2 * pad)
    height = pad + line * len(title_lines) + sum(2 * line + ch + pad for _ in rows) + CHART_H + pad
    im = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(im)
    y = pad
    for t in title_lines:
        d.text((pad, y), t, fill="black", font=font)
        y += line
    for prompt, cells in rows:
        d.text((pad, y), prompt, fill=(90, 90, 90), font=font)
        y += line
        for i, (label, cell) in enumerate(cells):
            x = pad + i * (cw + pad)
            d.text((x, y), label, fill="black", font=font)
            im.paste(cell, (x, y + line))
        y += line + ch + pad
    im.paste(loss_chart(epochs, width - 2 * pad), (pad, y))
    return im


def cell(grid_dir: Path, prompt_index: int, label: str, weight: float) -> Image.Image:
    """One cell `lorafw grid` wrote: grids/prompt-NN/LABEL_wW.png."""
    with Image.open(grid_dir / f"prompt-{prompt_index:02d}" / f"{label}_w{weight:g}.png") as im:
        return im.convert("RGB")
