"""`lorafw dedupe`: what dupeGuru's picture mode does for the guide, without deleting anything.

Exact copies (same bytes) and near copies (a difference hash, `lorafw.data.imagehash`, within the
hardness) are grouped across all the folders given. Of each group the image with the most pixels
is kept (then the largest file, then one with a caption, then the first by name); the others move
with their captions and same-stem files to `ROOT-duplicates/FOLDER/` beside the dataset root — never
inside it, where a `REPEATS_NAME` folder would be trained on — journalled, so `lorafw undo` puts
them back.

Default hardness 93 (17 of 256 bits may differ; declared once as `dataset.duplicate_hardness`, which
lint uses too), tuned on generated pictures (busy shapes, flat blurred shapes, a drawn character;
512–1216 px): copies resized to ½, ⅔, ¾ or 2× and re-encoded
as JPEG q40–90 differ by at most 14 bits (95% by ≤ 8); harsher ones (¼ size at q30, q15) by up to
22 (95% by ≤ 13); the same character moved to another pose by at least 34, with only the limbs
moved by 14–56 (one in twelve under 17); different pictures by 95 or more.
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lorafw.config.spec import DatasetSpec
from lorafw.data.folders import list_images
from lorafw.data.imagehash import HASH_SIZE, THUMB, dhash, near_duplicate_groups
from lorafw.errors import DatasetError
from lorafw.prep.files import ImageFolder, image_folders, progress, sidecars
from lorafw.prep.journal import ChangeSet, Move, show

DEFAULT_HARDNESS: int = DatasetSpec.duplicate_hardness  # one default for lint and dedupe, declared in config/spec.py
BITS = HASH_SIZE * HASH_SIZE


@dataclass
class Probe:
    path: Path
    folder: ImageFolder | None = None
    sha256: str = ""
    hash: Any = None  # packed dhash bits
    size: tuple[int, int] = (0, 0)  # (w, h) as seen (EXIF orientation applied)
    nbytes: int = 0
    has_caption: bool = False
    error: str | None = None

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]


def probe(path: Path, caption_ext: str = ".txt") -> Probe:
    """Read one image: its content hash, its size (EXIF orientation applied) and its look hash."""
    from PIL import Image, ImageOps

    pr = Probe(path)
    try:
        raw = path.read_bytes()
        pr.sha256, pr.nbytes = hashlib.sha256(raw).hexdigest(), len(raw)
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            pr.size = (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)
            if im.format == "JPEG":
                im.draft("L", (THUMB, THUMB))  # decode at ½–⅛ scale: the hash only sees a thumbnail
            im.load()
            pr.hash = dhash(ImageOps.exif_transpose(im))
    except Exception as e:  # PIL raises many types for damaged files
        pr.error = str(e) or type(e).__name__
    pr.has_caption = path.with_suffix(caption_ext).is_file()
    return pr


@dataclass
class Group:
    kind: str  # "exact" (all the same bytes) or "near"
    keep: Probe
    drop: list[Probe]
    distance: int  # most bits any dropped image's hash differs from the kept one's (0: exact)

    def lines(self) -> list[str]:
        head = "exact copies" if self.kind == "exact" else f"near copies (hashes differ by ≤ {self.distance}/{BITS} bits)"
        out = [f"{head}:"]
        for verb, p in [("keep", self.keep)] + [("move", d) for d in self.drop]:
            what = "" if p is self.keep else ", same bytes" if p.sha256 == self.keep.sha256 else ""
            cap = "" if p.has_caption else ", no caption"
            out.append(f"  {verb}  {show(p.path)}  ({p.size[0]}×{p.size[1]}, {p.nbytes / 1024:.0f} KB{cap}{what})")
        return out


def keeper(members: list[Probe]) -> Probe:
    """The one to keep: most pixels, then the largest file, then one with a caption, then the first by name."""
    return min(members, key=lambda p: (-p.pixels, -p.nbytes, not p.has_caption, str(p.path)))


def group_probes(probes: list[Probe], hardness: int) -> list[Group]:
    """Duplicate groups among decoded images (exact copies, and near copies within `hardness`). Pure."""
    by_content: dict[str, list[Probe]] = {}
    for p in probes:
        if p.error is None:
            by_content.setdefault(p.sha256, []).append(p)
    contents = list(by_content.values())  # exact copies together; near matching compares one look per content
    near = near_duplicate_groups([c[0].hash for c in contents], hardness)
    merged = {k for g in near for k in g}
    members = {i: [p for k in g for p in contents[k]] for i, g in enumerate(near)}
    members |= {len(near) + k: c for k, c in enumerate(contents) if k not in merged}
    groups = []
    for ms in members.values():
        if len(ms) < 2:
            continue
        keep = keeper(ms)
        drop = sorted((m for m in ms if m is not keep), key=lambda m: str(m.path))
        exact = all(m.sha256 == keep.sha256 for m in drop)
        dist = 0 if exact else max(int(np.unpackbits(np.bitwise_xor(keep.hash, m.hash)).sum()) for m in drop)
        groups.append(Group("exact" if exact else "near", keep, drop, dist))
    return sorted(groups, key=lambda g: str(g.keep.path))


def probe_folders(folders: list[ImageFolder], caption_ext: str = ".txt", workers: int | None = None) -> list[Probe]:
    """Probe every image of the folders, in threads (decoding releases the GIL), with a progress bar."""
    items = [(f, p) for f in folders for p in list_images(f.path)]
    out: list[Probe] = []
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 2)) as pool, \
            progress(len(items), "hashing") as bar:
        for (folder, _), pr in zip(items, pool.map(lambda it: probe(it[1], caption_ext), items)):
            pr.folder = folder
            out.append(pr)
            bar.update(1)
    return out


def duplicates_dir(root: Path) -> Path:
    """Where a dataset root's duplicates go: beside it, so training (which reads the root) never sees them."""
    r = root.resolve()
    if r.parent == r:
        raise DatasetError(f"{root} has no parent folder to put the duplicates beside; choose one with --to DIR")
    return r.parent / f"{r.name}-duplicates"


def _free_name(folder: Path, stem: str, suffixes: list[str], taken: set[Path]) -> str:
    """`stem`, or `stem-2`, `stem-3` … so that no file of the group lands on an existing or planned name."""
    n, candidate = 1, stem
    while any((folder / (candidate + s)) in taken or (folder / (candidate + s)).exists() for s in suffixes):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate


def plan_dedupe(dirs: Sequence[str | Path], hardness: int = DEFAULT_HARDNESS, to: str | Path | None = None,
                caption_ext: str = ".txt", workers: int | None = None) -> tuple[ChangeSet, list[Group], list[Probe]]:
    """(the moves, the duplicate groups, the images that could not be decoded) for the folders of `dirs`."""
    if not 1 <= hardness <= 100:
        raise DatasetError(f"--hardness must be 1-100 (100: only identical hashes; lower catches more), got {hardness}")
    folders = image_folders(dirs)
    if to is not None:
        target = Path(to).expanduser().resolve()
        for f in folders:
            if target == f.root.resolve() or f.root.resolve() in target.parents:
                raise DatasetError(f"--to {to} is inside the dataset {f.root}, where training would read the duplicates; "
                                   "choose a folder outside it")
    probes = probe_folders(folders, caption_ext, workers)
    groups = group_probes(probes, hardness)
    cs = ChangeSet("dedupe")
    staying = {p.path for p in probes} - {d.path for g in groups for d in g.drop}
    taken: set[Path] = set()
    listing: dict[Path, list[str]] = {}
    for g in groups:
        for d in g.drop:
            folder = d.folder
            assert folder is not None
            names = listing.setdefault(folder.path, [p.name for p in folder.path.iterdir() if p.is_file()])
            # a caption shared with an image that stays (001.png kept, 001.jpg moved) stays with it
            shared = any(folder.path / n in staying for n in names if n != d.path.name and Path(n).stem == d.path.stem)
            files = [d.path.name] + ([] if shared else sidecars(d.path.name, names))
            base = Path(to).expanduser().resolve() if to else duplicates_dir(folder.root)
            rel = folder.path.resolve().relative_to(folder.root.resolve()) if folder.path != folder.root else Path()
            dest = base / rel
            stem = _free_name(dest, d.path.stem, [Path(f).suffix for f in files], taken)
            why = f"copy of {g.keep.path.name}" if g.kind == "exact" else f"looks like {g.keep.path.name}"
            for f in files:
                target = dest / (stem + Path(f).suffix)
                taken.add(target)
                cs.moves.append(Move(folder.root, folder.path / f, target, why if f == d.path.name else ""))
    bad = [p for p in probes if p.error is not None]
    if bad:
        cs.notes.append(f"{len(bad)} image(s) could not be decoded and were left alone (see lorafw lint)")
    return cs, groups, probes
