"""`lorafw report RUN_DIR`: the whole run on one page, RUN_DIR/report.html — the recommendation, loss and lr
curves, validation loss, the scored grids, samples, the dataset, the resolved config, what an import dropped,
timings and versions. One static file: inline SVG and CSS, no script, no CDN; images are relative links to
the files beside it, or embedded (report.embed_images). On a sweep's folder it writes every run's page and
a comparison page (lorafw/outputs/report_sweep.py). Also written at the end of a run and after `lorafw grid`.

Over 400 lines on purpose: one small function per section of the page, in the page's order, all reading the
same RunData; the page's frame (page.py), the chart drawing (svg.py) and the sweep page (report_sweep.py)
are apart.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from lorafw.config.compose import load_spec
from lorafw.outputs.atomic import atomic_write
from lorafw.outputs.metrics import read_metrics
from lorafw.outputs.page import REPORT, Images, page, table
from lorafw.outputs.record import read_record
from lorafw.outputs.report_sweep import write_sweep_report
from lorafw.outputs.summary import find_runs, read_summary
from lorafw.outputs.svg import PALETTE, Series, bar_chart, line_chart
from lorafw.sampling.score import cell_key, cells_from_json, tag_shares

log = logging.getLogger("lorafw")


@dataclass
class RunData:
    """Everything a run folder holds that the page shows (read_run)."""

    run_dir: Path
    record: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    config_text: str = ""
    meta: dict[str, str] = field(default_factory=dict)  # the newest LoRA file's metadata
    scores: dict[str, Any] | None = None
    scores_dir: Path | None = None
    imported: dict[str, Any] | None = None  # what `lorafw import` left behind (config/spec.py ImportedSpec)
    spec: Any = None


def read_run(run_dir: Path) -> RunData:
    d = RunData(Path(run_dir))
    d.record = read_record(run_dir) or {}
    d.summary = read_summary(run_dir) or {}
    d.metrics = read_metrics(run_dir)
    cfg = Path(run_dir) / "config.yaml"
    d.config_text = cfg.read_text(encoding="utf-8") if cfg.is_file() else ""
    files = sorted(Path(run_dir).glob("*.safetensors"))
    if files:
        newest = max(files, key=lambda p: p.stat().st_mtime)
        try:
            from safetensors import safe_open

            with safe_open(str(newest), "np") as f:
                d.meta = f.metadata() or {}
        except Exception as e:  # a damaged file must not stop the report
            log.warning(f"report: cannot read {newest.name}'s metadata ({e})")
    where = d.summary.get("grid_scores")
    if where:
        p = Path(where) if Path(where).is_absolute() else Path(run_dir) / where
        if p.is_file():
            d.scores, d.scores_dir = json.loads(p.read_text()), p.parent
    try:
        d.spec = load_spec(run_dir, check_paths=False)
    except Exception:  # an old or hand-edited config: the page shows the text as it is
        d.spec = None
    d.imported = imported(d.record, d.spec)
    return d


def imported(record: dict[str, Any], spec: Any) -> dict[str, Any] | None:
    """What `lorafw import` left behind, as the run kept it in run.json, else from its saved config (the recipe's
    `imported` section; both are config/spec.py's import_notes). None: the run's recipe was not imported."""
    if record.get("imported"):
        return record["imported"]
    if spec is None:
        return None
    from lorafw.config.spec import import_notes

    return import_notes(spec)


# -- sections -------------------------------------------------------------------------------------
def recommendation_html(d: RunData, img: Images) -> str:
    rec = d.summary.get("recommended")
    if not rec:
        return '<p class="muted">No recommendation yet: no epoch has finished with a saved file.</p>'
    pic = ""
    if d.scores and d.scores_dir:
        cell = d.scores_dir / "prompt-00" / f"{rec.get('label')}_w{rec['weight']:g}.png"
        if cell.is_file():
            pic = img.tag(cell, f"{rec.get('label')} at weight {rec['weight']:g}")
    hint = "" if d.scores else ('<p class="muted">Render and score the grid to judge the weights too: <code>lorafw grid '
                                f'{escape(str(d.run_dir))} grid.tagger=DIR</code></p>')
    return (f'<div class="rec">{pic}<div><div class="big">Use {escape(str(rec.get("file")))} at weight '
            f'{rec["weight"]:g}</div><p>{escape(rec.get("why", ""))}</p><p class="muted">Based on: '
            f'{escape(rec.get("basis", ""))}</p>{hint}</div></div>')


def training_html(d: RunData) -> str:
    steps = [m for m in d.metrics if m.get("kind") == "step"]
    epochs = [m for m in d.metrics if m.get("kind") == "epoch"]
    rec_epoch = (d.summary.get("recommended") or {}).get("epoch")
    charts = [line_chart([Series("loss", [(m["step"], m["loss"]) for m in steps], "#93c5fd", 1, 0.8),
                          Series("smoothed", [(m["step"], m.get("loss_smoothed")) for m in steps], PALETTE[0], 2.2)],
                         "Training loss", "step", "loss")]
    lrs = [Series(name, [(m["step"], m.get(k)) for m in steps], c, 1.8)
           for name, k, c in (("UNet lr", "lr_unet", PALETTE[2]), ("text encoder lr", "lr_text_encoder", PALETTE[3]))]
    charts.append(line_chart(lrs, "Learning rate", "step", "lr"))
    if any(m.get("prodigy_d") is not None for m in steps):
        charts.append(line_chart([Series("Prodigy d", [(m["step"], m.get("prodigy_d")) for m in steps], PALETTE[4])],
                                 "Prodigy's adapted step size d", "step", "d"))
    charts.append(line_chart([Series("training loss (epoch mean)", [(m["epoch"], m.get("loss")) for m in epochs],
                                     PALETTE[0], 2, markers=True),
                              Series("validation loss", [(m["epoch"], m.get("val_loss")) for m in epochs], PALETTE[1], 2,
                                     markers=True)],
                             "Loss per epoch" + (f" (recommended: epoch {rec_epoch})" if rec_epoch else ""), "epoch", "loss",
                             x_integer=True, highlight_x=rec_epoch))
    rows = [[str(e["epoch"]), _f(e.get("train_loss")), _f(e.get("val_loss")), escape(e.get("file") or "–")]
            for e in d.summary.get("epochs", [])]
    return f'<div class="charts">{"".join(charts)}</div>' + (table(["epoch", "training loss", "validation loss", "file"], rows)
                                                            if rows else "")


def _f(v: Any, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def grid_html(d: RunData, img: Images) -> str:
    if not d.scores or not d.scores_dir:
        grids = sorted((d.run_dir / "grids").glob("prompt-*.png"))
        if grids:
            return "".join(img.tag(g, g.stem) for g in grids)
        return (f'<p class="muted">No grid yet. <code>lorafw grid {escape(str(d.run_dir))}</code> renders the saved '
                'epochs across LoRA weights and scores every cell (add <code>grid.tagger=DIR</code>, a local WD tagger, '
                'for concept fidelity and prompt adherence).</p>')
    s, gdir = d.scores, d.scores_dir

    cells = cells_from_json(s["cells"])
    rec = s.get("recommended") or {}
    labels = list(dict.fromkeys(c.label for c in cells))
    weights = list(dict.fromkeys(c.weight for c in cells))
    by = {(c.label, c.weight): c for c in cells}
    out = []
    settings = s.get("settings", {})
    if s.get("concept"):
        out.append(f'<p>Concept tags (in ≥ {settings.get("concept_share", 0):.0%} of the captions): '
                   f'<b>{escape(", ".join(s["concept"]))}</b></p>')
    if s.get("unknown"):
        out.append(f'<p class="muted">Frequent caption tags the tagger does not know: {escape(", ".join(s["unknown"]))}</p>')
    out += [f'<p class="warn">{escape(n)}</p>' for n in s.get("notes", [])]
    head = ["epoch \\ weight"] + [f"{w:g}" for w in weights]
    rows = []
    for label in labels:
        row = [escape(label)]
        for w in weights:
            c = by.get((label, w))
            if c is None:
                row.append("")
                continue
            bits = [f"S {c.score:.2f}" if c.score is not None else "", f"F {c.fidelity:.2f}" if c.fidelity is not None else "",
                    f"A {c.adherence:.0%}" if c.adherence is not None else "",
                    f"sim {c.similarity:.2f}" if c.similarity is not None else ""]
            mark = ' <span class="badge">recommended</span>' if (label, w) == (rec.get("label"), rec.get("weight")) else ""
            mark += ' <span class="badge bad">collapsed</span>' if c.collapsed else ""
            row.append(" · ".join(b for b in bits if b) + mark)
        rows.append(row)
    out.append("<h3>Scores (S: score, F: concept fidelity, A: prompt adherence, sim: similarity across prompts)</h3>"
               + table(head, rows, "heat"))
    for pi, p in enumerate(s.get("prompts", [])):
        out.append(f'<h3>Prompt {pi}: {escape(p["prompt"])}</h3>')
        trs = ["<tr><th></th>" + "".join(f"<th>weight {w:g}</th>" for w in weights) + "</tr>"]
        for label in labels:
            tds = [f"<th>{escape(label)}</th>"]
            for w in weights:
                c = by.get((label, w))
                path = gdir / f"prompt-{pi:02d}" / f"{label}_w{w:g}.png"
                cls = []
                if (label, w) == (rec.get("label"), rec.get("weight")):
                    cls.append("best")
                if c is not None and c.collapsed:
                    cls.append("collapsed")
                probs = s.get("details", {}).get(cell_key(pi, label, w), {})
                tip = ", ".join(f"{t} {v:.2f}" for t, v in sorted(probs.items(), key=lambda kv: -kv[1]))
                line = []
                if c is not None and c.score is not None:
                    line.append(f"S {c.score:.2f}")
                if c is not None and c.val_loss is not None:
                    line.append(f"val {c.val_loss:.4f}")
                tds.append(f'<td class="{" ".join(cls)}">{img.tag(path, f"{label} weight {w:g}" + (f" — {tip}" if tip else ""))}'
                           f'<div class="sc">{" · ".join(line)}</div></td>')
            trs.append("<tr>" + "".join(tds) + "</tr>")
        out.append('<table class="grid">' + "".join(trs) + "</table>")
    comps = [gdir / g for g in s.get("grids", []) if (gdir / g).is_file()]
    if comps and not img.embed:
        out.append('<p class="muted">Labelled grid images: '
                   + ", ".join(f'<a href="{img.src(g)}">{escape(g.name)}</a>' for g in comps) + "</p>")
    return "".join(out)


def samples_html(d: RunData, img: Images, limit: int) -> str:
    samples = list(d.summary.get("samples") or [])
    if not samples:
        return '<p class="muted">No samples (sample.every_n_epochs=1 renders sample.prompts each epoch).</p>'
    shown = samples[-limit:] if limit else []
    figs = "".join(f'<figure>{img.tag(d.run_dir / s, s)}<figcaption>{escape(Path(s).stem)}</figcaption></figure>'
                   for s in reversed(shown))
    more = f'<p class="muted">{len(samples) - len(shown)} older sample(s) not shown (report.max_samples).</p>' \
        if len(shown) < len(samples) else ""
    return f'<div class="gallery">{figs}</div>{more}'


def dataset_html(d: RunData) -> str:
    plan = d.record.get("plan") or {}
    out = []
    try:
        dirs = json.loads(d.meta.get("ss_dataset_dirs") or "{}")
        freq = json.loads(d.meta.get("ss_tag_frequency") or "{}")
    except ValueError:
        dirs, freq = {}, {}
    if dirs:
        rows = [[escape(k), str(v.get("n_repeats")), str(v.get("img_count")), str((v.get("n_repeats") or 0) * (v.get("img_count") or 0))]
                for k, v in dirs.items()]
        out.append(table(["folder", "repeats", "images", "images × repeats"], rows))
    facts = [("training images", plan.get("images")), ("validation images", plan.get("validation_images")),
             ("items per epoch", plan.get("items_per_epoch")), ("global batch", plan.get("global_batch")),
             ("steps per epoch", plan.get("steps_per_epoch")), ("epochs", plan.get("epochs")),
             ("total steps", plan.get("total_steps"))]
    out.append("<p>" + " · ".join(f"{escape(k)}: <b>{v}</b>" for k, v in facts if v is not None) + "</p>")
    charts = []
    buckets = plan.get("buckets") or {}
    if buckets:
        items = sorted(buckets.items(), key=lambda kv: tuple(int(x) for x in kv[0].split("x")))
        charts.append(bar_chart([k for k, _ in items], [float(v) for _, v in items], "Aspect-ratio buckets (images)"))
    if freq:
        shares = tag_shares(freq, {k: int((v or {}).get("img_count") or 0) for k, v in dirs.items()})
        share_key = d.spec.grid.concept_share if d.spec is not None else 0.5
        concept = set((d.scores or {}).get("concept") or [])
        top = list(shares.items())[:30]
        if top:
            charts.append(bar_chart([t for t, _ in top], [v for _, v in top], f"Tag frequency (top {len(top)} of {len(shares)})",
                                    "share of captions", [t in concept for t, _ in top], threshold=share_key,
                                    threshold_label=f"concept tags ≥ {share_key:.0%}", percent=True))
    out.append(f'<div class="charts">{"".join(charts)}</div>')
    findings = (d.record.get("lint") or {}).get("findings") or []
    if findings:
        out.append("<h3>Dataset check (lint)</h3>" + table(["level", "kind", "detail", "files"], [
            [escape(f["level"]), escape(f["kind"]), escape(f.get("detail", "")), escape(", ".join(Path(p).name for p in f["paths"][:4]))]
            for f in findings[:40]]))
    return "".join(out)


def import_html(d: RunData) -> str:
    imp = d.imported
    if not imp:
        return '<p class="muted">This run was not started from a `lorafw import` recipe; nothing was dropped.</p>'
    out = [f'<p>Imported from <code>{escape(str(imp.get("source") or "?"))}</code></p>']
    for key, title in (("not_honoured", "Refused: changes training in kohya, left out of the recipe (--lenient)"),
                       ("no_effect", "Dropped: no effect in lorafw")):
        rows = imp.get(key) or []
        if rows:
            out.append(f"<h3>{title} ({len(rows)})</h3>" + table(["setting", "value", "why"], [
                [f"<code>{escape(str(r.get('setting')))}</code>", f"<code>{escape(_json_shown(r.get('value')))}</code>",
                 escape(str(r.get("why") or ""))] for r in rows]))
    if imp.get("notes"):
        out.append("<h3>Notes</h3><ul>" + "".join(f"<li>{escape(str(n))}</li>" for n in imp["notes"]) + "</ul>")
    if not imp.get("not_honoured"):
        out.append("<p>The import refused nothing: every setting that changes training is in the recipe.</p>")
    return "".join(out)


def _json_shown(text: Any) -> str:
    """A value the recipe records as JSON, as it reads (the recipe escapes `${` so OmegaConf leaves it alone)."""
    try:
        return json.dumps(json.loads(str(text)), ensure_ascii=False)
    except ValueError:
        return str(text)


def timings_html(d: RunData) -> str:
    r = d.record
    wall, steps = r.get("wall_time_s"), r.get("steps")
    rows = [["status", escape(str(r.get("status", "?")))], ["started", escape(str(r.get("started_at", "–")))],
            ["finished", escape(str(r.get("finished_at", "–")))],
            ["wall time", f"{wall:.0f} s" if isinstance(wall, (int, float)) else "–"], ["optimizer steps", str(steps or 0)],
            ["wall time per step (all included)", f"{wall / steps:.2f} s" if wall and steps else "–"],
            ["skipped steps", str(r.get("skipped_steps", 0))],
            ["resumed", escape(", ".join(f"at step {x.get('at_step')} ({x.get('at')})" for x in r.get("resumes", [])) or "no")]]
    dev = r.get("device") or {}
    rows += [[escape(f"device: {k}"), escape(str(v))] for k, v in dev.items()]
    vers = [[escape(k), escape(str(v))] for k, v in (r.get("versions") or {}).items()]
    return '<div class="charts">' + table(["run", ""], rows) + table(["library", "version"], vers) + "</div>"


def render_run(d: RunData, page_dir: Path | None = None, embed: bool = False, max_samples: int = 48) -> str:
    img = Images(page_dir or d.run_dir, embed)
    name = d.summary.get("name") or d.run_dir.name
    sub = escape(f"{d.run_dir} · {d.summary.get('arch') or d.record.get('arch', '?')} · {d.record.get('status', '?')}")
    sections = [("recommended", "Recommendation", recommendation_html(d, img)), ("training", "Training", training_html(d)),
                ("grid", "Epoch × weight grid", grid_html(d, img)), ("samples", "Samples", samples_html(d, img, max_samples)),
                ("dataset", "Dataset", dataset_html(d)), ("import", "Import", import_html(d)),
                ("config", "Resolved config", f"<pre>{escape(d.config_text or '(no config.yaml)')}</pre>"),
                ("timings", "Timings and versions", timings_html(d))]
    return page(f"lorafw report: {name}", sub, sections)


def write_run_report(run_dir: Path, embed: bool | None = None) -> Path:
    d = read_run(Path(run_dir))
    rs = getattr(d.spec, "report", None)
    html = render_run(d, d.run_dir, rs.embed_images if embed is None and rs else bool(embed),
                      rs.max_samples if rs else 48)
    return atomic_write(d.run_dir / REPORT, html)


def write_report(folder: Path, embed: bool | None = None) -> Path:
    """A run folder's report.html, or for a sweep's folder every run's page and the comparison page."""
    folder = Path(folder)
    runs = find_runs(folder)
    if len(runs) == 1 and runs[0] == folder:
        return write_run_report(folder, embed)
    for r in runs:
        write_run_report(r, embed)

    return write_sweep_report(folder, runs, bool(embed))


def report_after(folder: Path, overrides: list[str] | tuple[str, ...] = ()) -> Path | None:
    """The report at the end of a run or a grid, when report.enabled; a failure is a warning, never an error
    (the LoRA files are what the run is for)."""
    try:
        first = find_runs(Path(folder))[0]
        spec = load_spec(first, list(overrides), check_paths=False)
        if not spec.report.enabled:
            return None
        path = write_report(Path(folder), spec.report.embed_images)
    except Exception as e:  # noqa: BLE001 — reported, and the run's results stand
        log.warning(f"report: not written ({type(e).__name__}: {e}); try `lorafw report {folder}`")
        return None
    log.info(f"report: {path}")
    return path
