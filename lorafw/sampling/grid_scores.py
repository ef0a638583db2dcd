"""The I/O around lorafw/sampling/score.py for `lorafw grid`: the run's losses and caption statistics in,
scores.json next to the grid, the recommendation into run_summary.json, scores and images to TensorBoard."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from lorafw.outputs.atomic import atomic_write
from lorafw.outputs.metrics import log_grid
from lorafw.outputs.summary import read_summary, set_recommended
from lorafw.paths import expand
from lorafw.prep.autotag import Tagger
from lorafw.sampling.score import SCORES, GridScores, recommendation, score_grid, tag_shares

log = logging.getLogger("lorafw")


def load_tagger(spec: Any) -> Any:
    """The run's tagger (grid.tagger), loaded before any cell is rendered so a wrong folder fails at once."""
    if not (spec.grid.score and spec.grid.tagger):
        return None

    return Tagger(expand(spec.grid.tagger))


def caption_stats(lora_file: Path) -> tuple[dict[str, float], list[str]]:
    """({tag: share of training captions}, trigger words) from a LoRA file's own metadata (no dataset needed)."""
    from safetensors import safe_open

    with safe_open(str(lora_file), "np") as f:
        meta = f.metadata() or {}
    try:
        freq = json.loads(meta.get("ss_tag_frequency") or "{}")
        dirs = json.loads(meta.get("ss_dataset_dirs") or "{}")
    except ValueError:
        return {}, []
    counts = {k: int((v or {}).get("img_count") or 0) for k, v in dirs.items()}
    triggers = [t.strip() for t in meta.get("modelspec.trigger_phrase", "").split(",") if t.strip()]
    return tag_shares(freq, counts), triggers


def score_run(run_dir: Path, out: Path, spec: Any, rows: Sequence[Any], weights: Sequence[float], prompts: Sequence[Any],
              tagger: Any, grids: Sequence[Path]) -> GridScores:
    """Score a run's freshly rendered grid (cells in out/prompt-NN/LABEL_wW.png); write out/scores.json, the
    summary's `recommended`, and TensorBoard's grid images and scores."""
    summary = read_summary(run_dir) or {}
    losses = {int(e["epoch"]): (e.get("train_loss"), e.get("val_loss")) for e in summary.get("epochs", [])}
    images = {(pi, r.label, float(w)): out / f"prompt-{pi:02d}" / f"{r.label}_w{w:g}.png"
              for pi in range(len(prompts)) for r in rows for w in weights}
    shares, triggers = caption_stats(rows[0].path) if tagger is not None else ({}, [])
    g = spec.grid
    scores = score_grid(images, [p.prompt for p in prompts], [(r.label, r.epoch, r.ema) for r in rows], weights, losses,
                        tagger, shares, triggers, g.concept_share, g.tag_threshold, g.collapse_similarity)
    rec = recommendation(scores.cells, g.tolerance, g.collapse_similarity, {r.label: r.path.name for r in rows})
    data = scores.to_json() | {"recommended": rec, "grids": [p.name for p in grids], "run": run_dir.name}
    atomic_write(out / SCORES, json.dumps(data, indent=2) + "\n")
    try:
        where = str((out / SCORES).relative_to(run_dir))
    except ValueError:  # a sweep's grids live beside the runs, not inside them
        where = str(out / SCORES)
    set_recommended(run_dir, rec, where)
    for n in scores.notes:
        log.info(f"grid score: {n}")
    if rec:
        log.info(f"recommended: {rec['why']}")
    if spec.log.tensorboard:
        log_grid(run_dir, grids, scores.cells)
    return scores
