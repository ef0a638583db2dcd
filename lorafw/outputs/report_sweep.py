"""`lorafw report SWEEP_DIR`: SWEEP_DIR/report.html, the runs of a sweep side by side — ranked the way
`lorafw compare` ranks them (each run's recommended cell), their loss curves and validation losses on shared
axes, each run's recommended image, and a link to each run's own page."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from lorafw.outputs.atomic import atomic_write
from lorafw.outputs.compare import collect, ranked, winner
from lorafw.outputs.metrics import read_metrics
from lorafw.outputs.page import REPORT, Images, page, table
from lorafw.outputs.summary import read_summary
from lorafw.outputs.svg import PALETTE, Series, line_chart


def _picture(run: Path, rec: dict[str, Any] | None, img: Images) -> str:
    """The run's recommended cell (first prompt) when a grid was scored, else its newest sample."""
    summary = read_summary(run) or {}
    where = summary.get("grid_scores")
    if rec and where:
        p = Path(where) if Path(where).is_absolute() else run / where
        cell = p.parent / "prompt-00" / f"{rec.get('label')}_w{rec['weight']:g}.png"
        if cell.is_file():
            return img.tag(cell, f"{run.name}: {rec.get('label')} at weight {rec['weight']:g}")
    samples = summary.get("samples") or []
    if samples and (run / samples[-1]).is_file():
        return img.tag(run / samples[-1], f"{run.name}: {samples[-1]}")
    return '<span class="muted">–</span>'


def write_sweep_report(folder: Path, runs: list[Path], embed: bool = False) -> Path:
    rows, differing = collect(folder)
    order, short, sentence = ranked(rows)
    if len(order) == len(rows):
        rows = order
    best, why = winner(rows)
    img = Images(folder, embed)
    head = ["#", "run", "swept", "recommended", "score", "fidelity", "adherence", "val loss", "final loss", "steps",
            "wall (s)", "image"]
    body = []
    for i, r in enumerate(rows):
        rec = r.recommended or {}
        sc = rec.get("scores") or {}
        link = f'<a href="{img.src(folder / r.run / REPORT) or escape(r.run)}">{escape(r.run)}</a>' \
            if (folder / r.run / REPORT).is_file() and not embed else escape(r.run)
        swept = "<br>".join(escape(f"{k}={v}") for k, v in r.overrides.items()) or "(none)"
        num = lambda v, f="{:.4f}": "–" if v is None else f.format(v)  # noqa: E731
        body.append([str(i + 1) + (' <span class="badge">winner</span>' if r is best else ""), link, swept,
                     escape(f"{rec.get('file')} @ {rec['weight']:g}") if rec else "–", num(sc.get("score"), "{:.2f}"),
                     num(sc.get("fidelity"), "{:.2f}"), num(sc.get("adherence"), "{:.0%}"), num(r.best_val_loss),
                     num(r.final_loss), str(r.steps), f"{r.wall_time_s:.0f}", _picture(folder / r.run, rec, img)])
    label = {r.run: (", ".join(f"{k}={v}" for k, v in r.overrides.items()) or r.run) for r in rows}
    colours = {r.run: PALETTE[i % len(PALETTE)] for i, r in enumerate(rows)}
    curves = [Series(label[r.run], r.curve, colours[r.run], 2.4 if r is best else 1.3) for r in rows]
    vals = []
    for r in rows:
        pts = [(m["epoch"], m.get("val_loss")) for m in read_metrics(folder / r.run) if m.get("kind") == "epoch"]
        vals.append(Series(label[r.run], pts, colours[r.run], 2.4 if r is best else 1.3, markers=True))
    charts = (line_chart(curves, "Training loss (smoothed)", "step", "loss", width=600) +
              line_chart(vals, "Validation loss per epoch", "epoch", "loss", width=600, x_integer=True))
    summary = (f'<div class="rec"><div><div class="big">Winner: {escape(best.run)}</div><p>{escape(sentence or why)}</p>'
               f'<p class="muted">Ranked by: {escape(short or why)}. Swept: {escape(", ".join(differing) or "nothing")}</p>'
               "</div></div>")
    sections = [("winner", "Winner", summary), ("runs", f"Runs ({len(rows)})", table(head, body)),
                ("curves", "Curves", f'<div class="charts">{charts}</div>'),
                ("data", "Data", f"<pre>{escape(json.dumps({r.run: r.overrides for r in rows}, indent=2, default=str))}</pre>")]
    html = page(f"lorafw sweep report: {folder.name}", escape(f"{folder} · {len(rows)} runs"), sections)
    return atomic_write(folder / REPORT, html)
