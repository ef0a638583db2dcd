"""Which folders the prep commands work on, and which files belong to each image.

The folders are the ones `lorafw train` and `lorafw plan` read: a dataset root holding
`REPEATS_NAME/` subfolders (each is worked on), or one folder of images. Every folder also has a
*dataset root*: where the undo journal lives (`ROOT/.lorafw-prep/`, hidden, so training never reads
it) and beside which `dedupe` puts what it moves (`ROOT-duplicates/`, outside the root, so it is
never trained on).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from lorafw.data.folders import IMAGE_EXTS, list_images, parse_folder_name
from lorafw.errors import DatasetError

STATE_DIR = ".lorafw-prep"  # journal of changes, for undo


@dataclass(frozen=True)
class ImageFolder:
    path: Path  # holds images (and their captions)
    root: Path  # the dataset root it belongs to


def _subfolders_with_images(d: Path) -> list[Path]:
    try:
        subs = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise DatasetError(f"{d}: cannot list the folder ({e.strerror}); check its permissions") from None
    return [p for p in subs if list_images(p)]


def dataset_root(folder: Path) -> Path:
    """The root a folder of images belongs to: itself, or its parent for a `REPEATS_NAME` folder."""
    reps, _ = parse_folder_name(folder.name)
    return folder.parent if reps is not None else folder


def image_folders(dirs: Sequence[str | Path]) -> list[ImageFolder]:
    """The folders of images named by `dirs` (dataset roots or image folders), each once.

    A folder with image subfolders is a dataset root: its subfolders are used (loose images in it
    are not, as in training). Raises DatasetError naming every folder that is missing or empty.
    """
    problems: list[str] = []
    out: dict[Path, ImageFolder] = {}
    for raw in dirs:
        d = Path(raw).expanduser()
        if not d.is_dir():
            problems.append(f"{raw} is not a folder")
            continue
        subs = _subfolders_with_images(d)
        if subs:
            found = [ImageFolder(s, d) for s in subs]
        elif list_images(d):
            found = [ImageFolder(d, dataset_root(d))]
        else:
            empty = sorted(p.name + "/" for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            inside = f" nor in {', '.join(empty)}" if empty else ""
            problems.append(f"{raw} has no images{inside} (looked for {', '.join(sorted(IMAGE_EXTS))})")
            continue
        for f in found:
            out.setdefault(f.path.resolve(), f)
    if problems:
        raise DatasetError("cannot work on these folders:\n  - " + "\n  - ".join(problems))
    return list(out.values())


def roots_of(dirs: Sequence[str | Path]) -> list[Path]:
    """The dataset roots named by `dirs` (for undo: a root, or any image folder in it)."""
    seen: dict[Path, Path] = {}
    for raw in dirs:
        d = Path(raw).expanduser()
        if not d.is_dir():
            raise DatasetError(f"{raw} is not a folder")
        root = dataset_root(d) if list_images(d) and not _subfolders_with_images(d) else d
        seen.setdefault(root.resolve(), root)
    return list(seen.values())


# -- the files of one image --------------------------------------------------------------------------
def sidecars(image: str, names: Iterable[str]) -> list[str]:
    """The other files of an image: same stem, not an image (its caption, a `.caption`, a cached `.npz` …)."""
    stem = Path(image).stem
    return sorted(n for n in names if n != image and not n.startswith(".") and Path(n).stem == stem
                  and Path(n).suffix.lower() not in IMAGE_EXTS)


def shared_stems(images: Iterable[str]) -> dict[str, list[str]]:
    """Images whose names differ only by extension (`001.png`, `001.jpg`): they share one caption file."""
    by: dict[str, list[str]] = {}
    for n in images:
        by.setdefault(Path(n).stem, []).append(n)
    return {s: sorted(v) for s, v in by.items() if len(v) > 1}


_NUM = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """'img2.png' before 'img10.png'."""
    return [(0, int(t), t) if t.isdigit() else (1, 0, t.lower()) for t in _NUM.split(name) if t]


# -- captions ----------------------------------------------------------------------------------------
def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def with_caption_line(text: str, new_line: str) -> str:
    """`text` with its caption line (the first non-empty one, which kohya reads) replaced by `new_line`;
    other lines and line ends are kept."""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.strip():
            end = line[len(line.rstrip("\r\n")):]
            lines[i] = new_line + end
            return "".join(lines)
    return new_line + ("\n" if text.endswith("\n") else "")


# -- progress ----------------------------------------------------------------------------------------
def progress(total: int, desc: str):
    """tqdm in a terminal or a notebook, silent otherwise (tqdm directly: importing the trainers' helper imports torch)."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return tqdm(total=total, desc=desc, unit="img", disable=not interactive, dynamic_ncols=True, leave=False)
