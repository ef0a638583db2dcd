"""Dataset folders → images with captions, repeats and per-folder settings (reads headers, not pixels).

Two ways to name folders, as users have them: a root holding `REPEATS_NAME/` subfolders
(`10_kafka/` → 10 repeats, concept `kafka`), or an explicit list of folders with their own
repeats, trigger tag and caption settings. No torch here: `lorafw plan` and the trainer's
fail-fast checks use it before any model loads.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from lorafw.config.spec import DatasetSpec, FolderSpec
from lorafw.data.captions import read_caption_text
from lorafw.errors import DatasetError
from lorafw.paths import expand

IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
_PREFIX = re.compile(r"^(\d+)_(.+)$")


def parse_folder_name(name: str) -> tuple[int | None, str]:
    """'3_hsr_kafka' → (3, 'hsr_kafka'); 'kafka' → (None, 'kafka')."""
    m = _PREFIX.match(name)
    return (int(m.group(1)), m.group(2)) if m else (None, name)


@dataclass(frozen=True)
class ImageEntry:
    path: Path
    size: tuple[int, int]  # (w, h) after EXIF rotation
    caption: str  # raw caption text (first line of the caption file), "" when missing
    has_caption: bool


@dataclass(frozen=True)
class Folder:
    path: Path
    name: str  # concept name: the folder name without its REPEATS_ prefix
    repeats: int
    is_reg: bool
    trigger: str | None
    keep_tokens: int
    keep_tokens_separator: str | None
    caption_extension: str
    shuffle_caption: bool
    caption_dropout_rate: float
    caption_tag_dropout_rate: float
    flip_aug: bool
    mask_dir: Path | None
    images: tuple[ImageEntry, ...]
    random_crop: bool = False  # each step's window at a random place of the resized image (kohya's random_crop)
    unreadable: tuple[tuple[Path, str], ...] = ()  # images whose header could not be read, with the reason

    @property
    def weight(self) -> int:
        """images × repeats: what this folder contributes to an epoch (the guide's T)."""
        return len(self.images) * self.repeats


def image_size(path: Path) -> tuple[int, int]:
    """(w, h) as the image will be seen (EXIF orientation applied), reading only the header."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
            orientation = im.getexif().get(0x0112, 1) if hasattr(im, "getexif") else 1
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({e}); remove it or replace it") from None
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def list_images(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."))
    except OSError as e:
        raise DatasetError(f"{folder}: cannot list the folder ({e.strerror}); check its permissions") from None


def _read_caption(image: Path, ext: str) -> tuple[str, bool]:
    cap = image.with_suffix(ext)
    if not cap.is_file():
        return "", False
    try:
        raw = cap.read_bytes()
    except OSError as e:
        raise DatasetError(f"{cap}: cannot read the caption ({e.strerror}); check its permissions") from None
    try:
        return read_caption_text(raw.decode("utf-8")), True
    except UnicodeDecodeError:
        return read_caption_text(raw.decode("latin-1")), True


def _folder(path: Path, fs: FolderSpec | None, ds: DatasetSpec, repeats: int, concept: str, is_reg: bool) -> Folder:
    def pick(attr: str, default):  # a folder's own setting, else the dataset-wide one
        return default if fs is None or getattr(fs, attr) is None else getattr(fs, attr)

    ext = pick("caption_extension", ds.caption_extension)
    entries, unreadable = [], []
    for img in list_images(path):
        try:
            size = image_size(img)
        except DatasetError as e:
            unreadable.append((img, str(e).split(": ", 1)[-1]))
            continue
        caption, has = _read_caption(img, ext)
        entries.append(ImageEntry(img, size, caption, has))
    mask_dir = pick("mask_dir", ds.mask_dir)
    return Folder(
        path=path,
        name=concept,
        repeats=repeats,
        is_reg=pick("is_reg", is_reg),
        trigger=pick("trigger", None),
        keep_tokens=pick("keep_tokens", ds.keep_tokens),
        keep_tokens_separator=pick("keep_tokens_separator", ds.keep_tokens_separator),
        caption_extension=ext,
        shuffle_caption=pick("shuffle_caption", ds.shuffle_caption),
        caption_dropout_rate=pick("caption_dropout_rate", ds.caption_dropout_rate),
        caption_tag_dropout_rate=pick("caption_tag_dropout_rate", ds.caption_tag_dropout_rate),
        flip_aug=pick("flip_aug", ds.flip_aug),
        random_crop=pick("random_crop", ds.random_crop),
        mask_dir=expand(mask_dir) if mask_dir else None,
        images=tuple(entries),
        unreadable=tuple(unreadable),
    )


def _root_folders(root_key: str, root_value: str, default_repeats: int | None, problems: list[str],
                  warnings: list[str]) -> list[tuple[Path, int, str]]:
    """(folder, repeats, concept) for each REPEATS_NAME subfolder of a root (or the root itself when it is one)."""
    root = expand(root_value)
    if not root.is_dir():
        problems.append(f"{root_key}={root_value} is not a folder")
        return []
    try:
        subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        problems.append(f"{root_key}={root_value}: cannot list the folder ({e.strerror}); check its permissions")
        return []
    with_images = []
    for d in subdirs:
        try:
            if list_images(d):
                with_images.append(d)
        except DatasetError as e:
            problems.append(str(e))
    loose = list_images(root)
    if not with_images and not loose:
        looked = f"looked for {', '.join(sorted(IMAGE_EXTS))}"
        if subdirs:
            problems.append(f"{root_key}={root_value}: no images in {root} nor in its folder(s) "
                            f"{', '.join(d.name + '/' for d in subdirs)} ({looked}); put the images in a REPEATS_NAME folder")
        else:
            problems.append(f"{root_key}={root_value}: {root} is empty ({looked}); it should hold REPEATS_NAME folders "
                            f"of images, e.g. {root / ('10_' + root.name)}")
        return []
    if not with_images and loose:
        reps, concept = parse_folder_name(root.name)
        if reps is None and default_repeats is None:
            problems.append(
                f"{root_key}={root_value} holds the images itself; lorafw expects subfolders named REPEATS_NAME "
                f"(move them into e.g. {root / ('10_' + root.name)}), or name this folder REPEATS_NAME, "
                "or set dataset.default_repeats=N"
            )
            return []
        return [(root, reps or default_repeats or 1, concept)]
    if loose:
        warnings.append(f"{len(loose)} image(s) directly in {root} are not used: only its subfolders are read")
    found, unprefixed = [], []
    for d in with_images:
        reps, concept = parse_folder_name(d.name)
        if reps is None:
            if default_repeats is None:
                unprefixed.append(d.name)
                continue
            reps = default_repeats
        if reps < 1:
            problems.append(f"{d}: the repeats prefix must be at least 1")
            continue
        found.append((d, reps, concept))
    if unprefixed:
        problems.append(
            f"folders in {root_key} without a REPEATS_ prefix: {', '.join(unprefixed)}; rename them "
            f"(e.g. {unprefixed[0]} → 1_{unprefixed[0]}) or set dataset.default_repeats=N"
        )
    for d in subdirs:
        if d not in with_images:
            warnings.append(f"{d} has no images (looked for {', '.join(sorted(IMAGE_EXTS))})")
    return found


def scan(ds: DatasetSpec) -> tuple[list[Folder], list[str]]:
    """Every folder of the dataset with its images; (folders, warnings). Raises DatasetError listing all problems.

    Reads image headers and captions only. Images whose header cannot be read are kept aside in
    `Folder.unreadable` for lint to report (an error, unless dataset.skip_bad_images=true).
    """
    problems: list[str] = []
    warnings: list[str] = []
    found: list[tuple[Path, FolderSpec | None, int, str, bool]] = []
    for key, value, is_reg in (("dataset.root", ds.root, False), ("dataset.reg_root", ds.reg_root, True)):
        if value is not None:
            found += [(p, None, r, c, is_reg) for p, r, c in _root_folders(key, value, ds.default_repeats, problems, warnings)]
    for i, fs in enumerate(ds.folders):
        p = expand(fs.path)
        if not p.is_dir():
            problems.append(f"dataset.folders[{i}].path: {fs.path} is not a folder")
            continue
        reps, concept = parse_folder_name(p.name)
        found.append((p, fs, fs.repeats or reps or ds.default_repeats or 1, concept, bool(fs.is_reg)))
    folders: list[Folder] = []
    for path, fs, reps, concept, is_reg in found:
        try:
            f = _folder(path, fs, ds, reps, concept, is_reg)
        except DatasetError as e:
            problems.append(str(e))
            continue
        if not f.images and not f.unreadable:
            problems.append(f"{path} has no images")
            continue
        missing = sum(not e.has_caption for e in f.images)
        if missing:
            warnings.append(
                f"{path}: {missing} of {len(f.images)} image(s) have no {f.caption_extension} caption; "
                f"they are trained with the folder's concept name {concept!r} as caption"
            )
        folders.append(f)
    seen: dict[Path, int] = {}
    for f in folders:
        seen[f.path.resolve()] = seen.get(f.path.resolve(), 0) + 1
    for p, n in seen.items():
        if n > 1:
            problems.append(f"{p} is listed {n} times (dataset.root and dataset.folders overlap)")
    if not problems and not any(f.images for f in folders if not f.is_reg):
        train = [f for f in folders if not f.is_reg]
        if not train:
            problems.append("the dataset has no training images: every folder given is a regularisation folder (is_reg)")
        for f in train:  # none has a readable image: say which folder holds what
            path, why = f.unreadable[0]
            problems.append(f"{f.path}: none of its {len(f.unreadable)} image(s) can be read "
                            f"(e.g. {path.name}: {why}); replace them or remove them")
    if problems:
        raise DatasetError("the dataset cannot be used:\n  - " + "\n  - ".join(problems))
    return folders, warnings


def fingerprint(folders: list[Folder]) -> dict:
    """File names, sizes and content hashes of every image and caption: what exactly was trained on."""
    files = []
    total = hashlib.sha256()
    for f in folders:
        for e in f.images:
            for p in (e.path, e.path.with_suffix(f.caption_extension)):
                if not p.is_file():
                    continue
                h = hashlib.sha256(p.read_bytes()).hexdigest()
                files.append({"path": str(p), "size": p.stat().st_size, "sha256": h})
                total.update(f"{p.name}:{h}".encode())
    return {"n_files": len(files), "sha256": total.hexdigest(), "files": files}
