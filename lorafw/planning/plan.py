"""`lorafw plan`: the numbers the guide asks users to work out by hand, from the real dataset. Pure.

Per folder: images, repeats, items; T = Σ images × repeats; steps per epoch and in total, both the
guide's estimate (T ÷ batch) and the exact count the trainer runs, with why they differ; the bucket
histogram; and the guide's advice (its SD1.5, PDXL and Prodigy tables, and balanced repeats for
several folders).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from lorafw import families
from lorafw.config.catalog import relative_step
from lorafw.config.prediction import resolve
from lorafw.config.schema import REQUIRED
from lorafw.config.spec import RunSpec
from lorafw.data.buckets import guide_steps
from lorafw.data.dataset import TrainData
from lorafw.errors import ConfigError, LorafwError
from lorafw.optim.schedulers import key_points
from lorafw.paths import expand
from lorafw.planning.budget import budget

# The guide's tables (RECIPES.md).  SD1.5: images, repeats, epochs, batch.
SD15_TABLE = [(20, 10, 10, 2), (100, 3, 10, 2), (400, 1, 10, 2), (1000, 1, 10, 3)]
# PDXL (batch 2, 2 repeats): images, epochs.
PDXL_TABLE = [(20, 10), (40, 6), (60, 5), (100, 4), (200, 3), (600, 2)]
# Several folders (batch 2): T, epochs.
MULTI_TABLE = [(200, 17), (300, 12), (400, 10)]
PRODIGY_TARGET, PRODIGY_EPOCHS = 100, 20  # images × repeats ≈ 100 per epoch, 20 epochs


def nearest(n: int, rows: list[tuple], key: int = 0) -> tuple:
    """The table row whose count is nearest to n on a log scale (20 and 100 are as far from 45 as 45 is)."""
    return min(rows, key=lambda r: abs(math.log(max(n, 1) / r[key])))


@dataclass
class Advice:
    images: int
    sd15: dict[str, int]
    pdxl: dict[str, int]
    prodigy: dict[str, int]
    balance: dict[str, Any] | None = None  # several training folders: repeats that weigh them alike


def advise(folder_images: dict[str, int]) -> Advice:
    """Repeats and epochs from the guide's tables for these training folders (name → image count)."""
    n = sum(folder_images.values())
    r_img, r_rep, r_ep, r_batch = nearest(n, SD15_TABLE)
    sd15 = {"row_images": r_img, "repeats": r_rep, "epochs": r_ep, "batch": r_batch,
            "steps": math.ceil(n * r_rep / r_batch) * r_ep}
    p_img, p_ep = nearest(n, PDXL_TABLE)
    pdxl = {"row_images": p_img, "repeats": 2, "epochs": p_ep, "batch": 2, "steps": math.ceil(n * 2 / 2) * p_ep}
    pr = max(1, round(PRODIGY_TARGET / max(n, 1)))
    prodigy = {"repeats": pr, "epochs": PRODIGY_EPOCHS, "batch": 2, "steps": math.ceil(n * pr / 2) * PRODIGY_EPOCHS}
    balance = None
    if len(folder_images) > 1:
        top = max(folder_images.values())
        reps = {name: max(1, round(top / k)) for name, k in folder_images.items()}
        t = sum(folder_images[k] * r for k, r in reps.items())
        t_row, epochs = nearest(t, MULTI_TABLE)
        balance = {"repeats": reps, "T": t, "row_T": t_row, "epochs": epochs, "batch": 2,
                   "steps": math.ceil(t / 2) * epochs}
    return Advice(n, sd15, pdxl, prodigy, balance)


@dataclass
class FolderLine:
    name: str
    images: int
    repeats: int
    items: int
    is_reg: bool
    unreadable: int = 0


@dataclass
class Plan:
    folders: list[FolderLine]
    T: int  # Σ images × repeats over training folders
    reg_items: int
    batch_size: int
    grad_accum: int
    epochs: int
    processes: int  # data-parallel processes: each optimizer step takes batch_size × processes × grad_accum items
    guide_steps_per_epoch: float
    guide_total_steps: float
    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    reasons: list[str]
    buckets: dict[str, int]  # "w×h" → items per epoch
    advice: Advice
    warnings: list[str] = field(default_factory=list)
    objective: dict[str, Any] = field(default_factory=dict)  # prediction type, ZTSNR and where each comes from
    lr_points: list[tuple[int, float]] = field(default_factory=list)  # (optimizer step, UNet lr) at the curve's corners
    lr_note: str = ""  # why there are no points (the optimizer or a scheduler class decides the lr)
    by: str = "epochs"  # what counts the run: train.epochs, or train.max_steps ("steps")
    last_epoch_steps: int = 0  # optimizer steps of the last epoch (fewer than steps_per_epoch: cut short)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(data: TrainData, spec: RunSpec, warnings: list[str] | None = None) -> Plan:
    t = spec.train
    B, A, W = t.batch_size, t.gradient_accumulation_steps, t.num_processes
    T, R = data.n_train_items, data.n_reg_items
    counts = {b: len(v) for b, v in data.buckets.items()}
    batches = sum(math.ceil(n / B) for n in counts.values())
    length = budget(batches, A * W, t.epochs, t.max_steps)
    spe, E = length.steps_per_epoch, length.epochs
    reasons = []
    if length.by == "steps":
        given = f"train.max_steps={t.max_steps}" if t.max_steps is not None else "kohya's default of 1600 steps"
        reasons.append(f"{given} counts the run (train.epochs is null): {E} epoch(s) of {spe} steps"
                       + (f", the last cut short at {length.last_epoch_steps}" if length.partial else ""))
    if R:
        reasons.append(f"{data.n_reg_images} regularisation image(s) add {R} items per epoch (matched to the {T} "
                       f"training items, as kohya counts them): +{R / B:g} batches")
    short = [b for b, n in counts.items() if n % B]
    extra = batches - (T + R) / B
    if short and extra > 1e-9:
        reasons.append(f"{len(short)} of {len(counts)} bucket(s) end with a short batch (batches never mix "
                       f"buckets): +{extra:g} batches per epoch")
    if A > 1 or W > 1:
        parts = ([f"{W} processes"] if W > 1 else []) + ([f"gradient accumulation {A}"] if A > 1 else [])
        reasons.append(f"{' × '.join(parts)}: one optimizer step per {A * W} batches (global batch {B * A * W}), "
                       f"rounded up ({batches} → {spe})")
    lines = []
    for f in data.folders:
        idx = [i for i, im in enumerate(data.images) if data.folders[im.folder] is f]
        items = sum(data.repeats[i] for i in idx)
        lines.append(FolderLine(f.path.name, len(f.images), f.repeats, items, f.is_reg, len(f.unreadable)))
    train_folders = {f.path.name: len(f.images) for f in data.folders if not f.is_reg}
    return Plan(
        folders=lines, T=T, reg_items=R, batch_size=B, grad_accum=A, epochs=E, processes=W,
        guide_steps_per_epoch=T / B, guide_total_steps=guide_steps(T, E, B),
        batches_per_epoch=batches, steps_per_epoch=spe, total_steps=length.total_steps, reasons=reasons,
        buckets={f"{w}x{h}": n for (w, h), n in sorted(counts.items(), key=lambda kv: -kv[1])},
        advice=advise(train_folders), warnings=list(warnings or []), objective=objective_of(spec),
        **_lr_curve(spec, length.total_steps), by=length.by, last_epoch_steps=length.last_epoch_steps,
    )


def objective_of(spec: RunSpec) -> dict[str, Any]:
    """What the run will train (ε or v, ZTSNR) and why: the checkpoint's header is read when base_model.path
    points at one (milliseconds, no torch); a contradiction is reported as `problem`, not raised."""
    path, declared, read, default = spec.base_model.path, None, False, "epsilon"
    arch = spec.base_model.arch
    if path and path != REQUIRED and expand(path).exists():
        try:
            family = families.get(families.detect(expand(path)) if arch == "auto" else arch)
            declared, read, default = family.inspect(str(expand(path))).prediction, True, family.predictions[0]
        except LorafwError:
            pass  # an unreadable model is `lorafw check`'s and the trainer's to report
    elif arch != "auto" and arch in families.available():
        default = families.get(arch).predictions[0]  # the family's own objective (Anima: flow)
    try:
        r = resolve(spec.train, declared, f"base_model.path={path}", default)
    except ConfigError as e:
        return {"problem": "; ".join(e.problems)}
    out = {"prediction_type": r.prediction, "source": r.source, "zero_terminal_snr": r.zero_terminal_snr,
           "ztsnr_source": r.ztsnr_source}
    if not read and spec.train.prediction_type == "auto":
        out["source"] += " (base_model.path not read: give it to see what the checkpoint states)"
    return out


def _lr_curve(spec: RunSpec, total: int) -> dict[str, Any]:
    """The UNet lr at the schedule's corners (optim/schedulers.py's formulas, the ones training runs)."""
    o, sc = spec.optimizer, spec.scheduler
    if relative_step(o) or sc.name == "adafactor":
        return {"lr_points": [], "lr_note": "Adafactor computes its own lr (relative_step)"}
    if sc.type:
        return {"lr_points": [], "lr_note": f"{sc.type} decides the lr"}
    lr = o.unet_lr or o.text_encoder_lr
    return {"lr_points": key_points(sc, total, lr), "lr_note": ""}


def _reps(n: int) -> str:
    return f"{n} repeat{'s' if n != 1 else ''}"


def _num(x: float) -> str:
    return f"{x:g}" if x != int(x) else str(int(x))


def render(plan: Plan, title: str = "") -> str:
    """The plan as a readable table."""
    p = plan
    out = [f"lorafw plan{': ' + title if title else ''}  (batch {p.batch_size}, {p.epochs} epochs"
           + (f" from {p.total_steps} steps" if p.by == "steps" else "")
           + (f", accumulation {p.grad_accum}" if p.grad_accum > 1 else "")
           + (f", {p.processes} processes: global batch {p.batch_size * p.grad_accum * p.processes}" if p.processes > 1 else "")
           + ")", ""]
    w = max([len(f.name) for f in p.folders] + [6])
    out.append(f"  {'folder':<{w}}  {'images':>6}  {'repeats':>7}  {'items':>6}")
    for f in p.folders:
        tag = "  (regularisation)" if f.is_reg else ""
        bad = f"  + {f.unreadable} unreadable" if f.unreadable else ""
        out.append(f"  {f.name:<{w}}  {f.images:>6}  {f.repeats if not f.is_reg else '-':>7}  {f.items:>6}{tag}{bad}")
    out.append(f"  {'T = images × repeats':<{w + 18}}  {p.T:>6}")
    out += ["", f"  steps per epoch   guide {_num(round(p.guide_steps_per_epoch, 1)):>7} (T ÷ batch)   exact {p.steps_per_epoch}",
            f"  total steps       guide {_num(round(p.guide_total_steps, 1)):>7}               exact {p.total_steps}"]
    for r in p.reasons:
        out.append(f"  why they differ: {r}")
    out += ["", "  buckets (w×h: items per epoch)  " + "  ".join(f"{k}: {v}" for k, v in p.buckets.items())]
    a = p.advice
    out += ["", f"  the guide's advice for {a.images} training images",
            f"    SD1.5 table   {_reps(a.sd15['repeats'])} × {a.sd15['epochs']} epochs, batch {a.sd15['batch']} → "
            f"{a.sd15['steps']} steps   (row: {a.sd15['row_images']} images)",
            f"    PDXL table    {_reps(a.pdxl['repeats'])} × {a.pdxl['epochs']} epochs, batch 2 → {a.pdxl['steps']} steps   "
            f"(row: {a.pdxl['row_images']} images; an extra epoch never hurts)",
            f"    Prodigy       {_reps(a.prodigy['repeats'])} × {a.prodigy['epochs']} epochs, batch 2 → {a.prodigy['steps']} "
            "steps   (images × repeats ≈ 100; keep the lowest-loss epoch)"]
    if a.balance:
        reps = ", ".join(f"{k}: {r}" for k, r in a.balance["repeats"].items())
        out.append(f"    balanced      repeats {reps} → T = {a.balance['T']} → {a.balance['epochs']} epochs, batch 2 → "
                   f"{a.balance['steps']} steps   (row: T ≈ {a.balance['row_T']})")
    o = p.objective
    if o.get("problem"):
        out += ["", f"  prediction type   refused: {o['problem']}"]
    elif o:
        out += ["", f"  prediction type   {o['prediction_type']}   from {o['source']}",
                f"  zero terminal SNR {str(o['zero_terminal_snr']).lower()}   from {o['ztsnr_source']}"]
    if p.lr_points:
        out += ["", "  lr curve (optimizer step: UNet lr)  " + "   ".join(f"{s}: {lr:.3g}" for s, lr in p.lr_points)]
    elif p.lr_note:
        out += ["", f"  lr curve: {p.lr_note}"]
    for wmsg in p.warnings:
        out.append(f"  warning: {wmsg}")
    return "\n".join(out)
