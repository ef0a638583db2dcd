"""run_summary.json: what a finished (or stopped) run produced and which epoch did best.

Read by `lorafw grid`, `lorafw compare` and `lorafw report`; written after every epoch, so it is current
even when a run stops early. `recommended` is the epoch and weight to use (lorafw/sampling/score.py): from
the losses at first, from the scored grid once `lorafw grid` has run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lorafw.config.spec import RunSpec
from lorafw.errors import LorafwError
from lorafw.outputs.atomic import atomic_write
from lorafw.sampling.score import epoch_cells, recommendation

SUMMARY = "run_summary.json"


def best(losses: dict[int, float]) -> int | None:
    finite = {e: v for e, v in losses.items() if v == v}
    return min(finite, key=finite.__getitem__) if finite else None


def write_summary(run_dir: Path, spec: RunSpec, arch: str, epoch_losses: list[float], val_losses: dict[int, float],
                  lora_files: list[Path], status: str, steps: int, wall_time_s: float, samples: list[str]) -> Path:
    name = spec.output.name or "lora"
    train = {i + 1: v for i, v in enumerate(epoch_losses)}
    files = {p.name for p in lora_files}
    epochs = []
    for e, loss in train.items():
        f = f"{name}-{e:02d}.safetensors"
        ema = f"{name}-{e:02d}-ema.safetensors"
        epochs.append({"epoch": e, "train_loss": loss, "val_loss": val_losses.get(e),
                       "file": f if f in files else None, "ema_file": ema if (run_dir / ema).is_file() else None})
    summary: dict[str, Any] = {
        "name": name,
        "arch": arch,
        "status": status,
        "steps": steps,
        "wall_time_s": round(wall_time_s, 1),
        "epochs": epochs,
        "best_train_epoch": best(train),
        "best_val_epoch": best(val_losses),
        "final_train_loss": epoch_losses[-1] if epoch_losses else None,
        "files": sorted(files),
        "samples": samples,
    }

    # Until a grid is scored: the epoch with the lowest validation (else training) loss, at weight 1.0.
    summary["recommended"] = recommendation(epoch_cells(epochs), spec.grid.tolerance, spec.grid.collapse_similarity)
    return atomic_write(run_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")


def set_recommended(run_dir: Path, recommended: dict[str, Any] | None, scores: str | None = None) -> Path | None:
    """Replace the summary's `recommended` (after `lorafw grid` scored the cells; `scores` = where scores.json is)."""
    summary = read_summary(run_dir)
    if summary is None:
        return None
    summary["recommended"] = recommended
    if scores:
        summary["grid_scores"] = scores
    return atomic_write(Path(run_dir) / SUMMARY, json.dumps(summary, indent=2) + "\n")


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    p = Path(run_dir) / SUMMARY
    return json.loads(p.read_text()) if p.is_file() else None


def find_runs(folder: Path) -> list[Path]:
    """The run folder itself, or every run (a folder with run.json and config.yaml) in a sweep's folder."""
    folder = Path(folder)
    if (folder / "run.json").is_file():
        return [folder]
    runs = sorted(p.parent for p in folder.glob("*/run.json") if (p.parent / "config.yaml").is_file())
    if not runs:
        raise LorafwError(f"{folder} is not a lorafw run or sweep folder (no run.json in it or its subfolders)")
    return runs
