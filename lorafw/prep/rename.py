"""`lorafw tags rename`: images renumbered 001.png, 002.jpg … per folder, each with its caption and
any other same-stem file (`.caption`, a cached `.npz`) — the guide's "rename to crescent order".

The order is the current names' natural order (`img2` before `img10`), so running it twice changes
nothing. The renames are applied two-phase through hidden temporary names (see journal.py), so
`b.png → 001.png` while `001.png → 002.png` is safe; a file in the way that is not being renamed
(a caption with no image) stops the plan instead of being overwritten.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from lorafw.data.folders import IMAGE_EXTS
from lorafw.errors import DatasetError
from lorafw.prep.files import image_folders, natural_key, shared_stems, sidecars
from lorafw.prep.journal import ChangeSet, Move


def rename_pairs(names: Sequence[str], start: int = 1, digits: int | None = None) -> list[tuple[str, str]]:
    """(old name, new name) for the files of one folder that change. Pure.

    Raises ValueError when images share a stem (they share one caption: which would it follow?)
    or when a target name is taken by a file that is not renamed.
    """
    visible = [n for n in names if not n.startswith(".")]
    images = sorted((n for n in visible if Path(n).suffix.lower() in IMAGE_EXTS), key=natural_key)
    shared = shared_stems(images)
    if shared:
        first = next(iter(shared.values()))
        raise ValueError(f"{len(shared)} image name(s) differ only by extension (e.g. {' and '.join(first)}), so they share "
                         "one caption; remove or rename one of each (lorafw dedupe finds copies)")
    width = digits or max(3, len(str(start + len(images) - 1)))
    by_stem: dict[str, list[str]] = {}
    for n in visible:
        by_stem.setdefault(Path(n).stem, []).append(n)
    pairs = []
    for i, image in enumerate(images):
        stem = f"{start + i:0{width}d}"
        for n in [image, *sidecars(image, by_stem[Path(image).stem])]:
            new = stem + Path(n).suffix
            if new != n:
                pairs.append((n, new))
    moving = {a for a, _ in pairs}
    present = set(visible)
    blocked = sorted(b for _, b in pairs if b in present and b not in moving)
    if blocked:
        raise ValueError(f"{', '.join(blocked[:5])} {'is' if len(blocked) == 1 else 'are'} in the way (no image of that "
                         "name is being renamed, e.g. a caption whose image is gone); move it away first")
    return pairs


def plan_rename(dirs: Sequence[str | Path], start: int = 1, digits: int | None = None) -> ChangeSet:
    """Renumber every folder's images (from `start`), each folder on its own."""
    cs = ChangeSet("tags rename")
    problems = []
    for folder in image_folders(dirs):
        try:
            names = [p.name for p in folder.path.iterdir() if p.is_file()]
            pairs = rename_pairs(names, start, digits)
        except ValueError as e:
            problems.append(f"{folder.path}: {e}")
            continue
        cs.moves += [Move(folder.root, folder.path / a, folder.path / b) for a, b in pairs]
    if problems:
        raise DatasetError("nothing was renamed:\n  - " + "\n  - ".join(problems))
    return cs
