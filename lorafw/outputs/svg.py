"""Inline SVG charts for report.html: line charts (loss, lr, validation loss) and bar charts (buckets, tags).

Plain strings, no JavaScript, no fonts to fetch: the page stays one self-contained file. Pure functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d")


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    colour: str = PALETTE[0]
    width: float = 1.5
    opacity: float = 1.0
    markers: bool = False
    dash: str = ""


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About n round tick values covering [lo, hi] (1, 2, 2.5, 5 × 10^k steps)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / max(1, n)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    v = start
    while v <= hi + step * 1e-9:
        if v >= lo - step * 1e-9:
            ticks.append(round(v, 12))
        v += step
    return ticks or [lo]


def fmt(v: float) -> str:
    """Tick labels: 0.0001 → 1e-4, 1500 → 1.5k, 0.25 → 0.25."""
    if v == 0:
        return "0"
    a = abs(v)
    if a < 1e-3:
        return f"{v:.0e}".replace("e-0", "e-")
    if a >= 1e4:
        return f"{v / 1000:g}k"
    return f"{v:.4g}"


def _finite(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points if y is not None and math.isfinite(x) and math.isfinite(y)]


def line_chart(series: Sequence[Series], title: str, x_label: str, y_label: str, width: int = 600, height: int = 260,
               x_integer: bool = False, highlight_x: float | None = None) -> str:
    """A line chart with axes, ticks, a legend and a title; series with no finite point are skipped."""
    drawn = [(s, _finite(s.points)) for s in series]
    drawn = [(s, p) for s, p in drawn if p]
    left, right, top, bottom = 62, 12, 28, 40
    longest = max((len(s.name[:48]) for s, _ in drawn), default=0)
    cols = max(1, min(3, int((width - left) // (6.5 * longest + 34)))) if longest else 3
    legend_h = 18 * ((len(drawn) + cols - 1) // cols) if len(drawn) > 1 else 0
    h_total = height + legend_h
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {h_total}" width="{width}" '
           f'height="{h_total}" role="img" aria-label="{escape(title)}">',
           f'<text x="{left}" y="16" class="ct">{escape(title)}</text>']
    if not drawn:
        out.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" class="cm">no data</text></svg>')
        return "".join(out)
    xs = [x for _, p in drawn for x, _ in p]
    ys = [y for _, p in drawn for _, y in p]
    x0, x1 = min(xs), max(xs)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    yt = nice_ticks(min(ys), max(ys))
    y0, y1 = min(yt[0], min(ys)), max(yt[-1], max(ys))
    if y1 == y0:
        y1 = y0 + 1
    pw, ph = width - left - right, height - top - bottom

    def X(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def Y(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="cf"/>')
    for t in yt:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="cg"/>'
                   f'<text x="{left - 6}" y="{Y(t) + 4:.1f}" text-anchor="end" class="cl">{fmt(t)}</text>')
    xt = [t for t in nice_ticks(x0, x1, 6) if x0 <= t <= x1]
    if x_integer:
        xt = sorted({int(round(t)) for t in xt if abs(t - round(t)) < 1e-9}) or [int(x0)]
    for t in xt:
        out.append(f'<line x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{top + ph}" y2="{top + ph + 4}" class="ca"/>'
                   f'<text x="{X(t):.1f}" y="{top + ph + 16}" text-anchor="middle" class="cl">{fmt(t)}</text>')
    if highlight_x is not None and x0 <= highlight_x <= x1:
        out.append(f'<line x1="{X(highlight_x):.1f}" x2="{X(highlight_x):.1f}" y1="{top}" y2="{top + ph}" class="ch"/>')
    for s, pts in drawn:
        d = " ".join(f"{'M' if i == 0 else 'L'}{X(x):.1f},{Y(y):.1f}" for i, (x, y) in enumerate(pts))
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        out.append(f'<path d="{d}" fill="none" stroke="{s.colour}" stroke-width="{s.width}" '
                   f'stroke-opacity="{s.opacity}"{dash}/>')
        if s.markers or len(pts) == 1:
            out += [f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="3" fill="{s.colour}"><title>{escape(s.name)}: '
                    f'{fmt(x)} → {y:.5g}</title></circle>' for x, y in pts]
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" class="ca"/>'
               f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" class="ca"/>'
               f'<text x="{left + pw / 2}" y="{height - 6}" text-anchor="middle" class="cx">{escape(x_label)}</text>'
               f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle" class="cx">'
               f'{escape(y_label)}</text>')
    if len(drawn) > 1:
        col = (width - left) / cols
        for i, (s, _) in enumerate(drawn):
            lx, ly = left + (i % cols) * col, height + 4 + 18 * (i // cols)
            out.append(f'<line x1="{lx:.0f}" x2="{lx + 18:.0f}" y1="{ly + 5}" y2="{ly + 5}" stroke="{s.colour}" '
                       f'stroke-width="3"/><text x="{lx + 24:.0f}" y="{ly + 9}" class="cl">{escape(s.name[:48])}</text>')
    out.append("</svg>")
    return "".join(out)


def bar_chart(labels: Sequence[str], values: Sequence[float], title: str, value_label: str = "",
              highlight: Sequence[bool] | None = None, width: int = 600, threshold: float | None = None,
              threshold_label: str = "", percent: bool = False) -> str:
    """Horizontal bars, one per label, biggest values as given (callers sort); `highlight` colours some bars,
    `threshold` draws a dashed line (e.g. the concept-tag share)."""
    bar, gap, top = 16, 4, 28
    left = min(260, 12 + 7 * max((len(label) for label in labels), default=4))
    right = 70
    height = top + len(labels) * (bar + gap) + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {width} {height}" width="{width}" '
           f'height="{height}" role="img" aria-label="{escape(title)}">',
           f'<text x="8" y="16" class="ct">{escape(title)}</text>']
    vmax = max([*values, threshold or 0, 1e-12])
    pw = width - left - right
    for i, (label, v) in enumerate(zip(labels, values)):
        y = top + i * (bar + gap)
        colour = PALETTE[1] if highlight and highlight[i] else PALETTE[0]
        shown = f"{v:.0%}" if percent else f"{v:g}"
        out.append(f'<text x="{left - 6}" y="{y + bar - 4}" text-anchor="end" class="cl">{escape(label[:40])}</text>'
                   f'<rect x="{left}" y="{y}" width="{max(1.0, v / vmax * pw):.1f}" height="{bar}" fill="{colour}">'
                   f'<title>{escape(label)}: {shown}</title></rect>'
                   f'<text x="{left + max(1.0, v / vmax * pw) + 4:.1f}" y="{y + bar - 4}" class="cl">{shown}</text>')
    if threshold is not None:
        x = left + threshold / vmax * pw
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{height - 20}" class="ch"/>'
                   f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle" class="cl">{escape(threshold_label)}</text>')
    if value_label:
        out.append(f'<text x="{width - 8}" y="16" text-anchor="end" class="cl">{escape(value_label)}</text>')
    out.append("</svg>")
    return "".join(out)


CSS = """
.chart{max-width:100%;height:auto;font-family:system-ui,sans-serif;background:#fff}
.chart .ct{font-size:13px;font-weight:600;fill:#111}.chart .cl{font-size:11px;fill:#374151}
.chart .cx{font-size:11px;fill:#6b7280}.chart .cm{font-size:13px;fill:#9ca3af}
.chart .cf{fill:#fafafa;stroke:none}.chart .cg{stroke:#e5e7eb;stroke-width:1}
.chart .ca{stroke:#9ca3af;stroke-width:1}.chart .ch{stroke:#f59e0b;stroke-width:1.5;stroke-dasharray:4 3}
"""
