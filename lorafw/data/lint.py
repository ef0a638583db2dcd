"""Dataset lint: find what would spoil or stop a run, before a single step (`lorafw lint`, and every run).

Never modifies anything. Errors (images that cannot be decoded) stop a run with one message listing
every file, unless `dataset.skip_bad_images=true` leaves them out; warnings are listed and the run
goes on: missing or empty captions, images enlarged to fit their bucket, transparency, exact and
near duplicates (content hash, perceptual hash at `dataset.duplicate_hardness`).
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorafw.config.spec import DatasetSpec
from lorafw.data.buckets import assign
from lorafw.data.folders import Folder
from lorafw.data.imagehash import dhash, near_duplicate_groups

KINDS = {
    "unreadable": ("error", "cannot be decoded (damaged or truncated)"),
    "no_caption": ("warning", "have no caption file (the folder's concept name is used)"),
    "empty_caption": ("warning", "have an empty caption"),
    "upscaled": ("warning", "are smaller than their bucket and get enlarged"),
    "transparency": ("warning", "have transparent pixels (trained as white; dataset.masked_loss=true leaves them out)"),
    "duplicate": ("warning", "are exact copies of each other"),
    "near_duplicate": ("warning", "look like copies of each other (resized or re-compressed)"),
}


@dataclass(frozen=True)
class Finding:
    kind: str
    paths: tuple[Path, ...]
    detail: str = ""

    @property
    def level(self) -> str:
        return KINDS[self.kind][0]


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    images: int = 0

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def bad_paths(self) -> set[Path]:
        return {p for f in self.errors for p in f.paths}

    def lines(self, limit: int = 8) -> list[str]:
        """One paragraph per kind: what is wrong, then the files (the first `limit` groups)."""
        out = []
        for kind, (level, what) in KINDS.items():
            items = [f for f in self.findings if f.kind == kind]
            if not items:
                continue
            n = sum(len(f.paths) for f in items)
            out.append(f"{level}: {n} image(s) {what}:")
            for f in items[:limit]:
                names = ", ".join(str(p) for p in f.paths)
                out.append(f"    {names}" + (f" ({f.detail})" if f.detail else ""))
            if len(items) > limit:
                out.append(f"    … and {len(items) - limit} more")
        return out

    def summary(self) -> str:
        return f"{self.images} images: {len(self.errors)} error(s), {len(self.warnings)} warning(s)"

    def to_json(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "findings": [{"level": f.level, "kind": f.kind, "paths": [str(p) for p in f.paths], "detail": f.detail}
                         for f in self.findings],
        }


@dataclass
class _Probe:
    path: Path
    error: str | None = None
    sha256: str = ""
    hash: Any = None
    transparent: bool = False


def _probe(path: Path) -> _Probe:
    """Decode one image fully (truncation shows only then); hash its bytes and its look; check alpha."""
    from PIL import Image

    pr = _Probe(path)
    try:
        raw = path.read_bytes()
        pr.sha256 = hashlib.sha256(raw).hexdigest()
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                alpha = im.convert("RGBA").getchannel("A")
                pr.transparent = alpha.getextrema()[0] < 255
            pr.hash = dhash(im)
    except Exception as e:  # PIL raises many types for damaged files
        pr.error = str(e) or type(e).__name__
    return pr


def lint(folders: list[Folder], ds: DatasetSpec, deep: bool = True, workers: int | None = None) -> Report:
    """Check every image of `folders`. `deep` decodes each image (finds truncation, duplicates, alpha)."""
    rep = Report()
    for f in folders:
        for p, why in f.unreadable:
            rep.findings.append(Finding("unreadable", (p,), why))
    entries = [(f, e) for f in folders for e in f.images]
    rep.images = len(entries) + sum(len(f.unreadable) for f in folders)
    for f, e in entries:
        if not e.has_caption:
            rep.findings.append(Finding("no_caption", (e.path,)))
        elif not e.caption.strip():
            rep.findings.append(Finding("empty_caption", (e.path.with_suffix(f.caption_extension),)))
        w, h = e.size
        pl = assign(w, h, ds.size, ds.enable_bucket, ds.min_bucket_reso, ds.max_bucket_reso,
                    ds.bucket_reso_steps, ds.bucket_no_upscale)
        scale = pl.resized[0] / w
        if scale > 1.0 + 1e-6:
            rep.findings.append(Finding("upscaled", (e.path,), f"{w}×{h} → bucket {pl.bucket[0]}×{pl.bucket[1]}, ×{scale:.2f}"))
    if not deep:
        return rep
    paths = [e.path for _, e in entries]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 2)) as pool:
        probes = list(pool.map(_probe, paths))
    good = [pr for pr in probes if pr.error is None]
    for pr in probes:
        if pr.error is not None:
            rep.findings.append(Finding("unreadable", (pr.path,), pr.error))
        elif pr.transparent and not ds.masked_loss:
            rep.findings.append(Finding("transparency", (pr.path,)))
    by_digest: dict[str, list[Path]] = {}
    for pr in good:
        by_digest.setdefault(pr.sha256, []).append(pr.path)
    exact = [tuple(v) for v in by_digest.values() if len(v) > 1]
    rep.findings += [Finding("duplicate", g) for g in exact]
    firsts = [v[0] for v in by_digest.values()]  # one image per content: exact copies are reported above
    index = {pr.path: pr for pr in good}
    for group in near_duplicate_groups([index[p].hash for p in firsts], ds.duplicate_hardness):
        rep.findings.append(Finding("near_duplicate", tuple(firsts[i] for i in group)))
    return rep


def without(folders: list[Folder], bad: set[Path]) -> list[Folder]:
    """The folders with the `bad` images left out (dataset.skip_bad_images=true)."""
    import dataclasses

    out = []
    for f in folders:
        keep = tuple(e for e in f.images if e.path not in bad)
        if keep:
            out.append(dataclasses.replace(f, images=keep, unreadable=()))
    return out
