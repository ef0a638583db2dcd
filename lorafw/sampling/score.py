"""Score the epoch × weight grid and recommend one cell: the guide's last step (judge the X/Y plot by eye),
done with numbers.

Each cell (epoch, weight) gets:
- its epoch's validation loss (fixed noise and timesteps, so comparable across epochs);
- concept fidelity: the local WD tagger's mean probability for the concept's defining tags — those in at
  least `grid.concept_share` of the training captions and not in the prompt (hair colour, outfit …);
- prompt adherence: the share of the prompt's tags the tagger sees (probability ≥ `grid.tag_threshold`);
- collapse: how alike the cell's images of different prompts/seeds are (perceptual hash). Near-identical
  images for different prompts mean the LoRA swallowed the prompt.

`rank` orders cells: collapsed cells last; first the cells within `tolerance` of the best tagger score, and
among those weight 1.0 first, then the nearest weight below it (the guide: a good LoRA works at 1.0, ~0.8 is
acceptable), then the lowest validation loss; the other cells follow by score. Without a tagger the same order uses validation loss (or,
without a validation set, training loss) alone, and the sentence in `why` says so. Pure functions, except
`score_grid`, which runs the tagger over the cell images.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from lorafw.data.imagehash import _POPCOUNT, dhash
from lorafw.prep.autotag import CHARACTER, GENERAL, KAOMOJI

SCORES = "scores.json"
_WEIGHTED = re.compile(r"^\((.*):\s*[-+]?\d*\.?\d+\)$")  # A1111 emphasis: (long hair:1.2)


def normalise_tag(tag: str) -> str:
    """'Long_Hair' / '(long hair:1.2)' / '((smile))' / 'kafka \\(honkai\\)' → 'long hair' / 'smile' / 'kafka (honkai)'."""
    t = tag.strip()
    for _ in range(8):
        m = _WEIGHTED.match(t)
        if m:
            t = m.group(1).strip()
        elif len(t) > 2 and t[0] + t[-1] in ("()", "[]", "{}") and "\\" + t[-1] not in t[-2:]:
            t = t[1:-1].strip()
        else:
            break
    t = t.replace("\\(", "(").replace("\\)", ")").lower()
    return t if t in KAOMOJI else " ".join(t.replace("_", " ").split())


def prompt_tags(prompt: str) -> list[str]:
    """The prompt's tags, normalised, in order, without LoRA calls (<lora:x:1>) or BREAK."""
    out = []
    for part in re.sub(r"<[^>]*>", ",", prompt).replace(" BREAK ", ",").split(","):
        t = normalise_tag(part)
        if t and t != "break" and t not in out:
            out.append(t)
    return out


def tag_shares(tag_frequency: dict[str, dict[str, int]], image_counts: dict[str, int]) -> dict[str, float]:
    """{tag: share of training captions holding it} from ss_tag_frequency and each folder's image count."""
    total = sum(image_counts.get(f, 0) for f in tag_frequency)
    if not total:
        return {}
    counts: dict[str, int] = {}
    for folder, tags in tag_frequency.items():
        if image_counts.get(folder, 0):
            for t, n in tags.items():
                k = normalise_tag(t)
                counts[k] = counts.get(k, 0) + int(n)
    return {t: min(1.0, n / total) for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def concept_tags(shares: dict[str, float], vocabulary: Iterable[str], min_share: float,
                 exclude: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """(the concept's defining tags the tagger knows, frequent tags it does not know) — tags in at least
    `min_share` of the captions, minus `exclude` (trigger words; the prompt's own tags are left out per prompt)."""
    vocab = set(vocabulary)
    skip = {normalise_tag(t) for t in exclude}
    frequent = [t for t, s in shares.items() if s >= min_share and t not in skip]
    return [t for t in frequent if t in vocab], [t for t in frequent if t not in vocab]


def similarity(hash_a: np.ndarray, hash_b: np.ndarray) -> float:
    """1 for identical perceptual hashes, about 0 for unrelated pictures (half their bits differ)."""
    bits = hash_a.size * 8
    d = int(_POPCOUNT[np.bitwise_xor(hash_a, hash_b)].sum())
    return max(0.0, 1.0 - 2.0 * d / bits)


def cross_similarity(hashes: Sequence[np.ndarray]) -> float | None:
    """The highest similarity between any two images of one cell (different prompts or seeds); None for < 2."""
    if len(hashes) < 2:
        return None
    return max(similarity(hashes[i], hashes[j]) for i in range(len(hashes)) for j in range(i + 1, len(hashes)))


@dataclass(frozen=True)
class CellScore:
    """One grid cell (or, without a grid, one saved epoch at weight 1.0)."""

    epoch: int
    weight: float
    label: str  # the LoRA file's stem, e.g. kafka-08 or kafka-08-ema
    val_loss: float | None = None
    train_loss: float | None = None
    fidelity: float | None = None  # mean tagger probability of the concept's tags, over the prompts
    adherence: float | None = None  # share of the prompt's tags the tagger sees, over the prompts
    similarity: float | None = None  # highest cross-prompt similarity of the cell's images
    collapsed: bool = False
    run: str = ""  # the run's folder name (compare ranks runs' recommended cells together)

    @property
    def score(self) -> float | None:
        """Fidelity and adherence together (their harmonic mean: a cell must do both); None without a tagger."""
        parts = [v for v in (self.fidelity, self.adherence) if v is not None]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        f, a = parts
        return 0.0 if f + a == 0 else 2 * f * a / (f + a)

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"score": self.score}


def mark_collapse(cells: list[CellScore], threshold: float) -> list[CellScore]:
    """Flag cells whose prompts came out near-identical — unless the same prompts are as alike at the grid's
    lowest weight (then the prompts themselves are alike, which says nothing about the LoRA)."""
    if not cells:
        return cells
    low = min(c.weight for c in cells)
    base = {c.label: c.similarity for c in cells if c.weight == low}
    out = []
    for c in cells:
        b = base.get(c.label)
        alike = c.similarity is not None and c.similarity >= threshold
        inherent = c.weight != low and b is not None and b >= threshold
        out.append(replace(c, collapsed=alike and not inherent))
    return out


def _weight_key(w: float) -> tuple[float, float]:
    return (abs(w - 1.0), w)  # 1.0, then 0.9 / 1.1 (lower first), 0.8 …


def rank(cells: Sequence[CellScore], tolerance: float = 0.05) -> list[CellScore]:
    """Best first (see the module's docstring)."""
    scored = [c.score for c in cells if c.score is not None and not c.collapsed]
    best = max(scored) if scored else None

    def key(c: CellScore) -> tuple:
        near = best is None or (c.score is not None and c.score >= best - tolerance - 1e-12)
        losses = (c.val_loss is None, c.val_loss or 0.0, -(c.score or 0.0), c.train_loss is None, c.train_loss or 0.0)
        tail = (-c.epoch, c.label, c.run)
        if near:  # equally good: weight nearest 1.0, then the lowest validation loss
            return (c.collapsed, 0, _weight_key(c.weight), *losses, *tail)
        return (c.collapsed, 1, (-(c.score or 0.0), 0.0), *losses, *tail)  # the rest: by score

    return sorted(cells, key=key)


def basis(cells: Sequence[CellScore]) -> str:
    """What a recommendation over these cells rests on."""
    tagger = any(c.score is not None for c in cells)
    if tagger:
        return "tagger + validation loss" if any(c.val_loss is not None for c in cells) else "tagger"
    if any(c.val_loss is not None for c in cells):
        return "validation loss"
    return "training loss" if any(c.train_loss is not None for c in cells) else "none"


def _name(c: CellScore) -> str:
    return (f"{c.run}: " if c.run else "") + f"epoch {c.epoch}{' (EMA)' if 'ema' in c.label.split('-')[-1:] else ''}"


def explain(ranked: Sequence[CellScore], tolerance: float, collapse_threshold: float) -> str:
    """One sentence, with the numbers, saying why ranked[0] won."""
    top = ranked[0]
    how = basis(ranked)
    parts = [f"{_name(top)} at weight {top.weight:g}"]
    vals = [c for c in ranked if c.val_loss is not None]
    if top.score is not None:
        best = max((c for c in ranked if c.score is not None and not c.collapsed), key=lambda c: c.score or 0.0,
                   default=top)
        bits = []
        if top.fidelity is not None:
            bits.append(f"concept fidelity {top.fidelity:.2f}")
        if top.adherence is not None:
            bits.append(f"prompt adherence {top.adherence:.0%}")
        parts.append(": " + " and ".join(bits) + f" (score {top.score:.2f}")
        if best is not top and best.score is not None:
            parts.append(f"; the highest, {best.score:.2f}, is {_name(best)} at weight {best.weight:g}, within "
                         f"{tolerance:g}, so the weight nearer 1.0 and the lower validation loss decide)"
                         if (best.score - (top.score or 0)) <= tolerance + 1e-12 else
                         f"; the highest, {best.score:.2f}, is {_name(best)} at weight {best.weight:g})")
        else:
            parts.append(", the highest)")
    if top.val_loss is not None:
        low = min(vals, key=lambda c: c.val_loss or 0.0)
        parts.append(f"; validation loss {top.val_loss:.4f}" + (" (the lowest)" if low.val_loss == top.val_loss else
                                                               f" (lowest {low.val_loss:.4f}, {_name(low)})"))
    elif top.train_loss is not None and how == "training loss":
        parts.append(f": the lowest training loss, {top.train_loss:.4f}")
    if top.similarity is not None:
        parts.append(f"; its prompts stay distinct (similarity {top.similarity:.2f} < {collapse_threshold:g})"
                     if not top.collapsed else f"; but its prompts look alike (similarity {top.similarity:.2f})")
    n_collapsed = sum(c.collapsed for c in ranked)
    if n_collapsed:
        parts.append(f"; {n_collapsed} cell(s) left out as collapsed (different prompts, near-identical images)")
    if top.weight < 0.75:
        parts.append(f". It only works at weight {top.weight:g}: the LoRA is likely overtrained (the guide: a good "
                     "LoRA works at 1.0; train fewer epochs or at a lower learning rate)")
    if how == "validation loss":
        parts.append(". No tagger (grid.tagger), so this uses validation loss alone and prefers weight 1.0")
    elif how == "training loss":
        parts.append(". No tagger (grid.tagger) and no validation set (validation.split), so this uses training loss "
                     "alone, which keeps falling as a LoRA overfits: check the grid by eye")
    elif how == "tagger":
        parts.append(". No validation set (validation.split), so epochs are told apart by the tagger alone")
    return "".join(parts) + "."


def recommendation(cells: Sequence[CellScore], tolerance: float = 0.05, collapse_threshold: float = 0.8,
                   files: dict[str, str] | None = None) -> dict[str, Any] | None:
    """run_summary.json's `recommended`: {epoch, weight, why, basis, file, scores}; None with nothing to rank."""
    if not cells:
        return None
    ranked = rank(cells, tolerance)
    top = ranked[0]
    return {"epoch": top.epoch, "weight": top.weight, "why": explain(ranked, tolerance, collapse_threshold),
            "basis": basis(ranked), "file": (files or {}).get(top.label, f"{top.label}.safetensors"),
            "label": top.label, "scores": top.to_json()}


def epoch_cells(epochs: Sequence[dict[str, Any]]) -> list[CellScore]:
    """Without a grid: each epoch with a saved file, at weight 1.0 (from run_summary.json's `epochs`)."""
    out = []
    for e in epochs:
        if e.get("file"):
            out.append(CellScore(int(e["epoch"]), 1.0, Path(e["file"]).stem, e.get("val_loss"), e.get("train_loss")))
    return out


# -- the tagger over a rendered grid ---------------------------------------------------------------------
@dataclass
class GridScores:
    """What `score_grid` found, as scores.json holds it."""

    cells: list[CellScore]
    concept: list[str] = field(default_factory=list)  # the concept's tags the tagger knows
    unknown: list[str] = field(default_factory=list)  # frequent caption tags the tagger does not know
    prompts: list[dict[str, Any]] = field(default_factory=list)  # per prompt: text, tags, concept tags
    details: dict[str, Any] = field(default_factory=dict)  # "p|label|w" → {tag: probability}
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"cells": [c.to_json() for c in self.cells], "concept": self.concept, "unknown": self.unknown,
                "prompts": self.prompts, "details": self.details, "notes": self.notes, "settings": self.settings}


def cell_key(prompt: int, label: str, weight: float) -> str:
    return f"{prompt}|{label}|{weight:g}"


def score_grid(images: dict[tuple[int, str, float], Path], prompts: Sequence[str], rows: Sequence[tuple[str, int, bool]],
               weights: Sequence[float], losses: dict[int, tuple[float | None, float | None]], tagger: Any = None,
               shares: dict[str, float] | None = None, triggers: Sequence[str] = (), concept_share: float = 0.5,
               tag_threshold: float = 0.35, collapse_threshold: float = 0.8) -> GridScores:
    """Score every cell. `images[(prompt index, row label, weight)]` is a cell image; `rows` are (label, epoch,
    ema); `losses[epoch]` is (train, validation); `tagger` a lorafw.prep.autotag.Tagger or None."""
    from PIL import Image

    notes: list[str] = []
    hashes: dict[tuple[int, str, float], np.ndarray] = {}
    for k, p in images.items():
        with Image.open(p) as im:
            hashes[k] = dhash(im)
    ptags = [prompt_tags(p) for p in prompts]
    probs: dict[tuple[int, str, float], dict[str, float]] = {}
    concept: list[str] = []
    unknown: list[str] = []
    per_prompt: list[dict[str, Any]] = [{"prompt": p, "tags": t} for p, t in zip(prompts, ptags)]
    if tagger is not None:
        names = [normalise_tag(n) for n in tagger.tags.names]
        usable = {n for n, c in zip(names, tagger.tags.categories) if int(c) in (GENERAL, CHARACTER)}
        concept, unknown = concept_tags(shares or {}, usable, concept_share, triggers)
        if not shares:
            notes.append("no caption statistics (ss_tag_frequency) in the LoRA files: concept fidelity not measured")
        elif not concept:
            notes.append(f"no caption tag the tagger knows is in {concept_share:.0%} of the captions: concept fidelity "
                         "not measured (lower grid.concept_share?)")
        index = {n: i for i, n in enumerate(names)}
        keys = list(images)
        for k, (_, sc, err) in zip(keys, tagger.tag_images([images[k] for k in keys])):
            if sc is None:
                notes.append(f"{images[k]}: the tagger could not read it ({err})")
                continue
            wanted = set(concept) | set(ptags[k[0]])
            probs[k] = {t: float(sc[index[t]]) for t in wanted if t in index}
        for i, t in enumerate(ptags):
            per_prompt[i]["concept"] = [c for c in concept if c not in t]
            per_prompt[i]["known"] = [x for x in t if x in usable]
    cells = []
    for label, epoch, ema in rows:
        for w in weights:
            fid, adh = [], []
            for i in range(len(prompts)):
                pr = probs.get((i, label, w))
                if pr is None:
                    continue
                cc = per_prompt[i].get("concept") or []
                if cc:
                    fid.append(float(np.mean([pr[t] for t in cc])))
                known = per_prompt[i].get("known") or []
                if known:
                    adh.append(sum(pr[t] >= tag_threshold for t in known) / len(known))
            train, val = losses.get(epoch, (None, None))
            sim = cross_similarity([hashes[(i, label, w)] for i in range(len(prompts)) if (i, label, w) in hashes])
            cells.append(CellScore(epoch, float(w), label, None if ema else val, None if ema else train,
                                   float(np.mean(fid)) if fid else None, float(np.mean(adh)) if adh else None, sim))
    if tagger is not None and not any(per_prompt[i].get("known") for i in range(len(prompts))):
        notes.append("no prompt tag is one the tagger knows: prompt adherence not measured")
    if len(prompts) < 2:
        notes.append("one prompt: collapse (different prompts coming out alike) needs two or more sample prompts")
    details = {cell_key(*k): v for k, v in probs.items()}
    settings = {"concept_share": concept_share, "tag_threshold": tag_threshold, "collapse_similarity": collapse_threshold,
                "tagger": bool(tagger)}
    return GridScores(mark_collapse(cells, collapse_threshold), concept, unknown, per_prompt, details, notes, settings)


def cells_from_json(rows: Iterable[dict[str, Any]]) -> list[CellScore]:
    names = {f.name for f in CellScore.__dataclass_fields__.values()}  # type: ignore[attr-defined]
    return [CellScore(**{k: v for k, v in r.items() if k in names}) for r in rows]
