"""`lorafw compare SWEEP_DIR`: which run of a sweep won, as a table (Markdown and CSV) and one PNG of
every run's loss curve, labelled by what was swept.

Runs are ranked the way one run's grid cells are (lorafw/sampling/score.py `rank`): each run's recommended
cell (run_summary.json `recommended`) competes — tagger score within the tolerance, then the weight nearest
1.0, then the lowest validation loss; without tagger scores, validation (else training) loss alone."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorafw.config.compose import load_spec
from lorafw.config.identity import identity
from lorafw.outputs.atomic import atomic_write
from lorafw.outputs.metrics import read_metrics
from lorafw.outputs.summary import find_runs, read_summary
from lorafw.sampling.score import basis, cells_from_json, explain, rank


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, dict)) else v
    return out


@dataclass
class RunRow:
    run: str
    overrides: dict[str, Any]
    best_train_epoch: int | None
    best_train_loss: float | None
    best_val_epoch: int | None
    best_val_loss: float | None
    final_loss: float | None
    steps: int
    wall_time_s: float
    curve: list[tuple[int, float]]
    recommended: dict[str, Any] | None = None


def collect(folder: Path) -> tuple[list[RunRow], list[str]]:
    """One row per run, and the config keys whose values differ between runs."""
    runs = find_runs(folder)
    configs = {r: flatten(identity(load_spec(r, check_paths=False))) for r in runs}
    keys = sorted({k for c in configs.values() for k in c})
    differing = [k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1 and k != "output.name"]
    rows = []
    for r in runs:
        s = read_summary(r) or {}
        rec = json.loads((r / "run.json").read_text())
        epochs = s.get("epochs", [])
        train = {e["epoch"]: e["train_loss"] for e in epochs if e.get("train_loss") is not None}
        val = {e["epoch"]: e["val_loss"] for e in epochs if e.get("val_loss") is not None}
        bt, bv = s.get("best_train_epoch"), s.get("best_val_epoch")
        curve = [(m["step"], m["loss_smoothed"]) for m in read_metrics(r) if m["kind"] == "step" and m.get("loss_smoothed") is not None]
        rows.append(RunRow(r.name, {k: configs[r].get(k) for k in differing}, bt, train.get(bt), bv, val.get(bv),
                           s.get("final_train_loss"), int(rec.get("steps") or 0), float(rec.get("wall_time_s") or 0), curve,
                           s.get("recommended")))
    return rows, differing


SHORT = {"validation loss": "lowest validation loss", "training loss": "lowest training loss (no validation set)",
         "tagger + validation loss": "best tagger score, then weight nearest 1.0, then validation loss",
         "tagger": "best tagger score, then weight nearest 1.0"}


def ranked(rows: list[RunRow], tolerance: float = 0.05, collapse_similarity: float = 0.8) -> tuple[list[RunRow], str, str]:
    """Runs best first by their recommended cells, with the short reason and the sentence with the numbers."""
    have = [r for r in rows if r.recommended and r.recommended.get("scores")]
    if not have:
        return [], "", ""
    cells = [c for r in have for c in cells_from_json([r.recommended["scores"] | {"run": r.run}])]
    order = rank(cells, tolerance)
    by = {r.run: r for r in have}
    how = basis(order)
    rest = [r for r in rows if r not in have]
    return [by[c.run] for c in order] + rest, SHORT.get(how, how), explain(order, tolerance, collapse_similarity)


def winner(rows: list[RunRow]) -> tuple[RunRow, str]:
    """The run whose recommended cell ranks first (`ranked`); for runs without a recommendation, the lowest
    validation loss when every run has one, else the lowest best-epoch training loss."""
    order, short, _ = ranked(rows)
    if order and len(order) == len(rows):
        return order[0], short
    if rows and all(r.best_val_loss is not None for r in rows):
        return min(rows, key=lambda r: r.best_val_loss), "lowest validation loss"  # type: ignore[arg-type,return-value]
    scored = [r for r in rows if r.best_train_loss is not None]
    if not scored:
        raise ValueError("no run has finished an epoch")
    return min(scored, key=lambda r: r.best_train_loss), "lowest training loss (no validation set)"  # type: ignore[arg-type,return-value]


def _fmt(x: Any) -> str:
    return "–" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def compare(folder: Path) -> dict[str, Any]:
    """Write compare.md, compare.csv and compare.png into `folder`; return what was found."""
    rows, differing = collect(folder)
    best, why = winner(rows)
    order, _, sentence = ranked(rows)
    if len(order) == len(rows):
        rows = order  # best first
    header = ["run", "overrides", "recommended", "score", "best epoch (train)", "train loss", "best epoch (val)", "val loss",
              "final loss", "steps", "wall time (s)"]
    table = []
    for r in rows:
        ov = ", ".join(f"{k}={v}" for k, v in r.overrides.items()) or "(none)"
        rec = r.recommended or {}
        score = (rec.get("scores") or {}).get("score")
        table.append([r.run, ov, f"epoch {rec['epoch']} @ {rec['weight']:g}" if rec else "–", _fmt(score),
                      _fmt(r.best_train_epoch), _fmt(r.best_train_loss), _fmt(r.best_val_epoch), _fmt(r.best_val_loss),
                      _fmt(r.final_loss), str(r.steps), f"{r.wall_time_s:.0f}"])
    md = [f"# lorafw compare: {folder}", "", f"Winner: **{best.run}** ({why})", ""]
    if sentence and best.recommended:
        md += [f"Use {best.recommended.get('file')} at weight {best.recommended['weight']:g}: {sentence}", ""]
    md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in table]
    atomic_write(folder / "compare.md", "\n".join(md) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header + ["winner"])
    for r, row in zip(rows, table):
        w.writerow(row + [str(r is best)])
    atomic_write(folder / "compare.csv", buf.getvalue())
    _plot(rows, best, folder / "compare.png")
    return {"winner": best.run, "why": why, "sentence": sentence, "differing": differing, "rows": rows}


def _plot(rows: list[RunRow], best: RunRow, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    for r in rows:
        if r.curve:
            label = ", ".join(f"{k}={v}" for k, v in r.overrides.items()) or r.run
            ax.plot([s for s, _ in r.curve], [v for _, v in r.curve], label=label + ("  ← winner" if r is best else ""),
                    linewidth=2.2 if r is best else 1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed)")
    ax.set_title(f"{len(rows)} runs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())
