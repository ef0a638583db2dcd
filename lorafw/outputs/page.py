"""The HTML page both reports are (a run's, report.py; a sweep's, report_sweep.py): one static file with a header,
a link bar and sections, inline CSS, images linked relative to the page or embedded as data: URIs."""

from __future__ import annotations

import base64
import os
from html import escape
from pathlib import Path
from urllib.parse import quote

from lorafw.outputs.svg import CSS as CHART_CSS

REPORT = "report.html"

PAGE_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:0;background:#f3f4f6;color:#111827}
header{background:#111827;color:#f9fafb;padding:18px 28px}header h1{margin:0 0 4px;font-size:22px}
header .sub{color:#9ca3af;font-size:13px}nav{background:#1f2937;padding:6px 28px;position:sticky;top:0;z-index:2}
nav a{color:#d1d5db;margin-right:16px;font-size:13px;text-decoration:none}nav a:hover{color:#fff}
main{padding:16px 28px;max-width:1400px}section{background:#fff;border-radius:8px;padding:14px 18px;margin:0 0 16px;
box-shadow:0 1px 2px rgba(0,0,0,.06)}h2{font-size:17px;margin:0 0 10px}h3{font-size:14px;margin:14px 0 6px}
.rec{border-left:6px solid #16a34a;display:flex;gap:18px;align-items:flex-start}.rec .big{font-size:20px;font-weight:700}
.rec img{width:160px;border-radius:4px}.muted{color:#6b7280;font-size:13px}.warn{color:#b45309}
.charts{display:flex;flex-wrap:wrap;gap:12px}table{border-collapse:collapse;font-size:13px}
td,th{border:1px solid #e5e7eb;padding:4px 8px;text-align:left;vertical-align:top}th{background:#f9fafb}
table.grid td{text-align:center;padding:4px}table.grid img{display:block;width:148px;height:auto;margin:0 auto}
table.grid td.best{outline:4px solid #16a34a;outline-offset:-4px;background:#ecfdf5}
table.grid td.collapsed{background:#fef2f2}.sc{font-size:11px;color:#374151;white-space:nowrap}
.badge{display:inline-block;background:#16a34a;color:#fff;border-radius:3px;padding:0 5px;font-size:11px}
.badge.bad{background:#dc2626}.gallery{display:flex;flex-wrap:wrap;gap:8px}.gallery figure{margin:0;width:150px}
.gallery img{width:150px;height:auto;border-radius:3px}.gallery figcaption{font-size:11px;color:#6b7280}
pre{background:#f9fafb;border:1px solid #e5e7eb;padding:10px;overflow:auto;font-size:12px;max-height:520px}
.heat td.v{font-variant-numeric:tabular-nums}
"""


def page(title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> str:
    """The HTML document: a header, a link bar and the (anchor, heading, body) sections."""
    nav = "".join(f'<a href="#{a}">{escape(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}"><h2>{escape(h)}</h2>{b}</section>' for a, h, b in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width,initial-scale=1"><title>{escape(title)}</title>'
            f'<style>{PAGE_CSS}{CHART_CSS}</style></head><body><header><h1>{escape(title)}</h1>'
            f'<div class="sub">{subtitle}</div></header><nav>{nav}</nav><main>{body}</main></body></html>\n')


class Images:
    """Image references from the page's folder: relative links, or data: URIs when embedding."""

    def __init__(self, page_dir: Path, embed: bool) -> None:
        self.page_dir, self.embed = Path(page_dir), embed

    def src(self, path: Path) -> str | None:
        path = Path(path)
        if not path.is_file():
            return None
        if self.embed:
            mime = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp"}.get(
                path.suffix.lower().lstrip("."), "application/octet-stream")
            return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
        return "/".join(quote(p) for p in Path(os.path.relpath(path.resolve(), self.page_dir.resolve())).parts)

    def tag(self, path: Path, alt: str, cls: str = "") -> str:
        src = self.src(path)
        if src is None:
            return f'<span class="muted">({escape(Path(path).name)} is missing)</span>'
        c = f' class="{cls}"' if cls else ""
        return f'<img{c} src="{src}" alt="{escape(alt)}" title="{escape(alt)}">'


def table(header: list[str], rows: list[list[str]], cls: str = "") -> str:
    """Cells are HTML already (callers escape text)."""
    c = f' class="{cls}"' if cls else ""
    head = "".join(f"<th>{h}</th>" for h in header)
    return f"<table{c}><tr>{head}</tr>" + "".join("<tr>" + "".join(f"<td>{v}</td>" for v in r) + "</tr>" for r in rows) + "</table>"
