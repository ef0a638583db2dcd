"""`lorafw grid RUN_DIR`: the guide's X/Y plot — one prompt across saved epochs (rows) and LoRA weights
(columns), the same seed in every cell — as one labelled PNG per prompt plus the cell images, in
RUN_DIR/grids/. The base model loads once; each cell patches its layer weights the way the UIs apply
a LoRA (lorafw/network/apply.py). On a sweep's folder, each run gets its grids under SWEEP_DIR/grids/.
With grid.score (the default) every cell is scored and the run's recommended epoch and weight written
(lorafw/sampling/score.py); report.html follows (lorafw/outputs/report.py).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from lorafw import families
from lorafw.config.compose import load_spec
from lorafw.config.prediction import resolve
from lorafw.config.prompts import SamplePrompt, parse_line, read_prompts
from lorafw.errors import LorafwError
from lorafw.logs import ensure_logging, quiet
from lorafw.network.apply import WeightPatcher, module_names
from lorafw.network.targets import text_encoder_names
from lorafw.outputs.report import report_after
from lorafw.outputs.summary import find_runs
from lorafw.placement import resolve_device
from lorafw.precision import cuda_bf16_native
from lorafw.sampling.grid_scores import load_tagger, score_run
from lorafw.sampling.prompts import a1111_parameters, fallback_prompt
from lorafw.sampling.render import save_png

EPOCH_FILE = re.compile(r"^(?P<name>.+)-(?P<epoch>\d{2,})(?P<ema>-ema)?\.safetensors$")


@dataclass(frozen=True)
class Row:
    label: str
    path: Path
    epoch: int
    ema: bool


def epoch_files(run_dir: Path, name: str, epochs: tuple[int, ...], ema: bool) -> list[Row]:
    """The run's epoch files, newest first (the guide's -10, -09, -08 …), limited to `epochs` if given."""
    rows = []
    for p in run_dir.glob(f"{name}-*.safetensors"):
        m = EPOCH_FILE.match(p.name)
        if not m or m.group("name") != name or (m.group("ema") and not ema):
            continue
        e = int(m.group("epoch"))
        if epochs and e not in epochs:
            continue
        rows.append(Row(p.stem, p, e, bool(m.group("ema"))))
    return sorted(rows, key=lambda r: (-r.epoch, r.ema))


def weight_label(w: float) -> str:
    """1.0, 0.9, 0.75 — the way the guide writes weights."""
    return f"{w:.1f}" if round(w, 1) == w else f"{w:g}"


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def compose(cells: list[list[Image.Image]], row_labels: list[str], col_labels: list[str], title: str) -> Image.Image:
    """Cells in a table: a title line, column labels on top, row labels on the left."""
    cw, ch = cells[0][0].size
    size = max(12, min(28, cw // 10))
    font = _font(size)
    pad = size // 2
    left = max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(t, font=font)) for t in row_labels) + 2 * pad
    title_lines = _wrap(title, font, left + cw * len(col_labels) - 2 * pad)
    top = (len(title_lines) + 1) * (size + pad) + pad
    grid = Image.new("RGB", (left + cw * len(col_labels), top + ch * len(row_labels)), "white")
    d = ImageDraw.Draw(grid)
    for i, line in enumerate(title_lines):
        d.text((pad, pad + i * (size + pad)), line, fill="black", font=font)
    for c, label in enumerate(col_labels):
        w = d.textlength(label, font=font)
        d.text((left + c * cw + (cw - w) / 2, top - size - pad), label, fill="black", font=font)
    for r, label in enumerate(row_labels):
        d.text((pad, top + r * ch + (ch - size) / 2), label, fill="black", font=font)
        for c, cell in enumerate(cells[r]):
            grid.paste(cell, (left + c * cw, top + r * ch))
    return grid


def _wrap(text: str, font: Any, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength
    for w in words:
        trial = f"{line} {w}".strip()
        if measure(trial, font=font) > width and line:
            lines.append(line)
            line = w
        else:
            line = trial
    return (lines + [line]) if line else lines or [""]


def grid_for_run(run_dir: Path, overrides: list[str], models: dict[str, Any], out_dir: Path | None = None,
                 label: str = "") -> list[Path]:
    """Render every prompt's grid for one run; `models` caches loaded base models across runs."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    spec = load_spec(run_dir, overrides, check_paths=False)
    name = spec.output.name or "lora"
    rows = epoch_files(run_dir, name, spec.grid.epochs, spec.grid.ema)
    if not rows:
        raise LorafwError(f"{run_dir}: no {name}-NN.safetensors files to put in a grid")
    prompts: list[SamplePrompt] = read_prompts(spec.sample, spec.dataset.size)
    if not prompts:
        with safe_open(str(rows[0].path), "pt") as f:
            meta = f.metadata() or {}
        triggers = [t.strip() for t in meta.get("modelspec.trigger_phrase", "").split(",") if t.strip()]
        prompts = [parse_line(fallback_prompt(triggers, json.loads(meta.get("ss_tag_frequency", "{}"))), spec.sample,
                              spec.dataset.size)]

    tagger = load_tagger(spec)  # before the base model loads: a wrong grid.tagger folder fails at once
    renderer, patcher = _prepared(spec, models)
    out = out_dir or run_dir / "grids"
    weights = [float(w) for w in spec.grid.weights]
    written = []
    for pi, p in enumerate(prompts):
        cells: list[list[Image.Image]] = []
        cell_dir = out / f"prompt-{pi:02d}"
        for row in rows:
            lora = load_file(str(row.path))
            cells.append([])
            for w in weights:
                patcher.apply(lora, w)
                img = renderer.render(p, spec.sample.sampler)
                cells[-1].append(img)
                extra = {"Lora": row.label, "Lora weight": f"{w:g}"}
                save_png(img, cell_dir / f"{row.label}_w{w:g}.png", a1111_parameters(p, spec.sample.sampler, extra))
        patcher.restore()
        title = (f"[{label}] " if label else "") + f"{p.prompt}  (seed {p.seed}, {p.steps} steps, CFG {p.cfg_scale:g})"
        grid = compose(cells, [r.label for r in rows], [f"weight {weight_label(w)}" for w in weights], title)
        path = out / f"prompt-{pi:02d}.png"
        layout = {"rows": [r.label for r in rows], "columns": [f"{w:g}" for w in weights], "cell": list(cells[0][0].size),
                  "prompt": p.prompt, "seed": p.seed, "run": label or run_dir.name}
        save_png(grid, path, a1111_parameters(p, spec.sample.sampler, {"Grid": f"{len(rows)}x{len(weights)}"}),
                 {"lorafw_grid": json.dumps(layout)})
        written.append(path)
    if spec.grid.score:
        score_run(run_dir, out, spec, rows, weights, prompts, tagger, written)
    return written


def _prepared(spec: Any, models: dict[str, Any]) -> tuple[Any, Any]:
    """The base model (loaded once per checkpoint and VAE, by its family) as a renderer and a WeightPatcher."""
    import torch

    arch = families.get(spec.base_model.arch)
    info = arch.inspect(str(spec.base_model.path))
    # the objective the run trained (ε or v, ZTSNR): its samplers must use the same one
    objective = resolve(spec.train, info.prediction, f"base_model.path={spec.base_model.path}", arch.predictions[0])
    bm = spec.base_model  # every file the family loads, and the objective its samplers follow
    key = f"{bm.path}|{bm.vae}|{bm.text_encoder}|{bm.llm_adapter}|{objective.prediction}|{objective.zero_terminal_snr}"
    if key not in models:
        device = resolve_device(spec.train.device)
        # fp32 on a CPU; on a GPU bf16 only where native (is_bf16_supported() alone counts slow emulation: T4)
        dtype = torch.float32 if device.type == "cpu" else (torch.bfloat16 if cuda_bf16_native(device.index or 0) else torch.float16)
        m = arch.load(spec, info, objective)
        with quiet("diffusers"):
            for part in (m.denoiser, *m.text_encoders):
                part.to(device, dtype=dtype)
            m.vae.to(device, dtype=torch.float32 if spec.train.no_half_vae else dtype)
        names = module_names(m.denoiser, m.text_encoders, arch.te_prefixes, arch.denoiser_namer(m.denoiser),
                             text_encoder_names(arch, m.text_encoders))
        models.clear()  # one base model in memory at a time
        models[key] = (arch.renderer(m, spec.train, device), WeightPatcher(names, spec.grid.ui))
    return models[key]


def grid(folder: Path, overrides: list[str]) -> list[Path]:
    """Grids for a run folder, or for every run of a sweep folder (the swept values label each run)."""
    ensure_logging()  # the recommendation and the report's path are logged
    runs = find_runs(folder)
    models: dict[str, Any] = {}
    if len(runs) == 1 and runs[0] == folder:
        written = grid_for_run(folder, overrides, models)
    else:
        written = []
        for run in runs:
            written += grid_for_run(run, overrides, models, out_dir=folder / "grids" / run.name, label=run.name)

    report_after(folder, overrides)  # report.html with the scored grid (report.enabled)
    return written
