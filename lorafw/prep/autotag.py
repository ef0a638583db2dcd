"""`lorafw autotag`: booru-tag captions from a WD v3 tagger (SmilingWolf's), as the guide's dataset
processor makes them — threshold 0.25 for general tags.

The model folder is what its authors publish: `model.onnx` and `selected_tags.csv`
(`tag_id,name,category,count`; category 0 general, 4 character, 9 rating). Nothing is downloaded.
Preprocessing is the model's own: transparency composited on white, padded to a white square,
resized (bicubic) to the model's input size (read from the graph), RGB → BGR, float 0–255, NHWC.
The graph ends in a sigmoid: one score per CSV row.

Captions list character tags, then general tags, each by falling score (a rating tag first only
when asked). Existing captions are never overwritten unless asked; empty ones count as missing.
"""

from __future__ import annotations

import csv
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from lorafw.data.captions import join_tags, read_caption_text
from lorafw.data.folders import list_images
from lorafw.errors import ModelError
from lorafw.prep.files import decode, image_folders, progress
from lorafw.prep.journal import ChangeSet, Write

GENERAL, CHARACTER, RATING = 0, 4, 9
# Tags whose underscores are part of the face, not word separators (the WD taggers' own demo keeps them).
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
                     ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})
WHERE = ("put the tagger's files there: model.onnx and selected_tags.csv, as published by its authors, e.g. from "
         "https://huggingface.co/SmilingWolf/wd-vit-tagger-v3 (or wd-swinv2-tagger-v3, wd-eva02-large-tagger-v3); "
         "lorafw downloads nothing")


@dataclass(frozen=True)
class TagList:
    names: tuple[str, ...]
    categories: np.ndarray  # int, one per name


def read_tags(path: Path) -> TagList:
    """selected_tags.csv → names and categories, in row order (the order of the model's outputs)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise ModelError(f"{path}: cannot read the tag list ({e})") from None
    if not rows or not {"name", "category"} <= set(rows[0]):
        raise ModelError(f"{path}: not a WD tagger tag list (expected columns tag_id,name,category,count)")
    try:
        cats = np.array([int(r["category"]) for r in rows])
    except (TypeError, ValueError):
        raise ModelError(f"{path}: a category is not a number; is this a WD tagger's selected_tags.csv?") from None
    return TagList(tuple(r["name"] for r in rows), cats)


def caption_tag(name: str, underscores: bool = False) -> str:
    """'long_hair' → 'long hair' (unless `underscores`); kaomoji like '^_^' keep theirs."""
    return name if underscores or name in KAOMOJI else name.replace("_", " ")


def select_tags(scores: np.ndarray, tags: TagList, threshold: float = 0.25, character_threshold: float = 0.85,
                rating: bool = False) -> list[tuple[str, float]]:
    """(tag, score) for one image: characters above theirs, then general tags above `threshold`, each by
    falling score (ties: CSV order); the best rating first when `rating`. Pure."""
    scores = np.asarray(scores, dtype=np.float64)

    def pick(cat: int, above: float) -> list[tuple[str, float]]:
        idx = np.flatnonzero((tags.categories == cat) & (scores > above))
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        return [(tags.names[i], float(scores[i])) for i in idx]

    out = pick(CHARACTER, character_threshold) + pick(GENERAL, threshold)
    if rating:
        r = np.flatnonzero(tags.categories == RATING)
        if len(r):
            best = r[np.argmax(scores[r])]
            out.insert(0, (tags.names[best], float(scores[best])))
    return out


def prepare(image, size: int) -> np.ndarray:
    """A PIL image → (size, size, 3) float32 BGR 0–255, padded to a square on white (the WD taggers' preprocessing)."""
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        canvas.alpha_composite(rgba)
        rgb = canvas.convert("RGB")
    else:
        rgb = image.convert("RGB")  # opaque: compositing on white would change nothing
    w, h = rgb.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), (255, 255, 255))
    square.paste(rgb, ((side - w) // 2, (side - h) // 2))
    if side != size:
        square = square.resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(square, dtype=np.float32)[:, :, ::-1]


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    have = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device in ("cuda", "gpu"):
        if "CUDAExecutionProvider" not in have:
            raise ModelError("--device cuda: this onnxruntime has no CUDA support; install onnxruntime-gpu, or use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in have]


class Tagger:
    """A WD v3 tagger folder loaded for onnxruntime (`device`: auto, cpu or cuda)."""

    def __init__(self, model_dir: str | Path, device: str = "auto") -> None:
        d = Path(model_dir).expanduser()
        if not d.is_dir():
            raise ModelError(f"no tagger folder at {model_dir}: make that folder and {WHERE}")
        missing = [n for n in ("model.onnx", "selected_tags.csv") if not (d / n).is_file()]
        if missing:
            raise ModelError(f"{model_dir} has no {' and no '.join(missing)}: {WHERE}")
        self.tags = read_tags(d / "selected_tags.csv")
        import onnxruntime as ort

        try:
            self.session = ort.InferenceSession(str(d / "model.onnx"), providers=_providers(device))
        except Exception as e:  # onnxruntime raises its own types for damaged or foreign files
            raise ModelError(f"{d / 'model.onnx'} cannot be loaded by onnxruntime ({str(e).splitlines()[0]}); "
                             "is it a complete WD tagger model?") from None
        inp = self.session.get_inputs()[0]
        shape = inp.shape
        if len(shape) != 4 or shape[3] != 3 or not isinstance(shape[1], int) or shape[1] != shape[2]:
            raise ModelError(f"{d / 'model.onnx'}: input {inp.name} has shape {shape}; a WD v3 tagger takes "
                             "(batch, size, size, 3) images")
        self.input_name = inp.name
        self.size = int(shape[1])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.providers = self.session.get_providers()

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) prepared images → (n, tags) scores."""
        if self.fixed_batch and len(batch) != self.fixed_batch:
            return np.concatenate([self.scores(batch[i:i + 1]) for i in range(len(batch))])
        out = self.session.run(None, {self.input_name: batch.astype(np.float32, copy=False)})[0]
        if out.ndim != 2 or out.shape[1] != len(self.tags.names):
            raise ModelError(f"the model gives {out.shape[-1]} scores per image but selected_tags.csv lists "
                             f"{len(self.tags.names)} tags; they must come from the same tagger")
        return out

    def tag_images(self, paths: Sequence[Path], batch_size: int = 8, workers: int | None = None,
                   ) -> Iterator[tuple[Path, np.ndarray | None, str | None]]:
        """(path, scores, error) for each image, in order; images are decoded in threads while the model runs."""
        from PIL import Image

        def load(p: Path) -> np.ndarray | str:
            try:
                with Image.open(p) as im:
                    im.load()
                    return prepare(im, self.size)
            except Exception as e:  # damaged or unreadable images are reported, not fatal
                return str(e) or type(e).__name__

        with ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 2)) as pool:
            chunks = [list(paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
            pending = pool.map(load, chunks[0]) if chunks else iter(())
            for k, chunk in enumerate(chunks):
                arrays = list(pending)
                if k + 1 < len(chunks):
                    pending = pool.map(load, chunks[k + 1])  # decode the next batch while this one runs
                ok = [i for i, a in enumerate(arrays) if not isinstance(a, str)]
                scores = self.scores(np.stack([arrays[i] for i in ok])) if ok else np.zeros((0, len(self.tags.names)))
                by = dict(zip(ok, scores))
                for i, p in enumerate(chunk):
                    yield (p, by[i], None) if i in by else (p, None, arrays[i])


@dataclass
class AutotagResult:
    changes: ChangeSet
    tagged: int
    skipped: int  # already captioned
    failed: list[tuple[Path, str]]


def plan_autotag(dirs: Sequence[str | Path], model: str | Path | Tagger, threshold: float = 0.25,
                 character_threshold: float = 0.85, rating: bool = False, underscores: bool = False,
                 overwrite: bool = False, caption_ext: str = ".txt", batch_size: int = 8,
                 device: str = "auto") -> AutotagResult:
    """Tag every image of the folders that has no caption (all of them with `overwrite`); the captions
    to write come back as a ChangeSet."""
    for name, v in (("--threshold", threshold), ("--character-threshold", character_threshold)):
        if not 0.0 <= v <= 1.0:
            raise ModelError(f"{name} must be between 0 and 1 (a score), got {v}")
    tagger = model if isinstance(model, Tagger) else Tagger(model, device)
    todo: list[tuple[Path, Path, bytes | None]] = []
    skipped = 0
    for folder in image_folders(dirs):
        for image in list_images(folder.path):
            cap = image.with_suffix(caption_ext)
            before = cap.read_bytes() if cap.is_file() else None
            if before is not None and read_caption_text(decode(before)) and not overwrite:
                skipped += 1
                continue
            todo.append((folder.root, image, before))
    cs = ChangeSet("autotag")
    failed: list[tuple[Path, str]] = []
    caps = {}
    with progress(len(todo), "tagging") as bar:
        for (root, image, before), (_, scores, err) in zip(todo, tagger.tag_images([t[1] for t in todo], batch_size)):
            bar.update(1)
            if err is not None or scores is None:
                failed.append((image, err or "?"))
                continue
            tags = [caption_tag(n, underscores) for n, _ in select_tags(scores, tagger.tags, threshold,
                                                                        character_threshold, rating)]
            cap = image.with_suffix(caption_ext)
            if cap in caps:
                continue  # 001.png and 001.jpg: the first one's tags
            caps[cap] = True
            data = (join_tags(tags) + "\n").encode("utf-8")
            if data != before:
                cs.writes.append(Write(root, cap, data, before, join_tags(tags) or "(no tag above the thresholds)"))
    if skipped:
        cs.notes.append(f"{skipped} image(s) already have a caption and were left alone (--overwrite replaces them)")
    if failed:
        cs.notes.append(f"{len(failed)} image(s) could not be read: " + ", ".join(p.name for p, _ in failed[:5]))
    return AutotagResult(cs, len(todo) - len(failed), skipped, failed)
