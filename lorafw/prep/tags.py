"""Caption tag processing, as the guide does it in a dataset processor: add a trigger tag first, prune
the tags the trigger should absorb (hair length, hairstyle, eye colour), replace tags, count them.

Tags are compared the way users read them: `long_hair`, `long hair` and `Long Hair` are one tag
(captions hold either spelling), and so are `kafka_\\(hsr\\)` and `kafka (hsr)`. A pattern's `*`
matches any run of characters (`*_hair` → `long hair`, `black_hair`); nothing else is special.
The tag functions are pure; `plan_*` read the caption files and return a ChangeSet to show or apply.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from lorafw.data.captions import join_tags, read_caption_text, split_tags
from lorafw.data.folders import list_images
from lorafw.prep.files import decode, image_folders, with_caption_line
from lorafw.prep.journal import ChangeSet, Write

# Trait tags the guide prunes into a character's trigger ("calculate frequency" shows them):
# hair colour and length, hairstyle, eye colour. Only a suggestion in `tags freq`.
_COLOURS = ("black blonde brown red blue green pink purple white grey gray silver orange aqua yellow "
            "light_brown light_blue light_purple light_green dark_blue dark_green dark_red multicolored "
            "two-tone gradient streaked colored_inner").split()
TRAIT_PATTERNS = tuple(
    [f"{c}_hair" for c in _COLOURS] + [f"{c}_eyes" for c in _COLOURS]
    + ["very_short_hair", "short_hair", "medium_hair", "long_hair", "very_long_hair", "absurdly_long_hair",
       "heterochromia", "hair_between_eyes", "bangs", "*_bangs", "sidelocks", "ahoge", "ponytail", "*_ponytail",
       "twintails", "*_twintails", "braid", "*_braid", "braided_*", "hair_bun", "*_hair_bun", "double_bun",
       "drill_hair", "twin_drills", "hime_cut", "bob_cut", "wavy_hair", "straight_hair", "messy_hair",
       "hair_intakes", "hair_flaps", "hair_over_one_eye", "antenna_hair", "streaked_hair"]
)


def norm(tag: str) -> str:
    """The form tags are compared in: lower case, `_` as space, prompt escapes dropped, spaces collapsed."""
    t = tag.replace("\\(", "(").replace("\\)", ")").replace("_", " ").lower()
    return " ".join(t.split())


def matcher(patterns: Sequence[str]) -> Callable[[str], bool]:
    """A test for 'does this tag match one of the patterns' (exact tags, or `*` wildcards)."""
    exact = {norm(p) for p in patterns if "*" not in p}
    wild = [re.compile(".*".join(re.escape(part) for part in norm(p).split("*")), re.DOTALL)
            for p in patterns if "*" in p]
    return lambda tag: norm(tag) in exact or any(r.fullmatch(norm(tag)) for r in wild)


def _unique(tags: list[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for t in tags:
        if norm(t) not in seen:
            seen.add(norm(t))
            out.append(t)
    return out


def add_tags(tags: list[str], new: list[str]) -> list[str]:
    """`new` first (where keep_tokens holds them), in the given spelling; any copy already present moves there."""
    new = _unique(new)
    fresh = {norm(n) for n in new}
    return new + [t for t in tags if norm(t) not in fresh]


def remove_tags(tags: list[str], patterns: Sequence[str]) -> list[str]:
    match = matcher(patterns)
    return [t for t in tags if not match(t)]


def replace_tags(tags: list[str], old: Sequence[str], new: list[str]) -> list[str]:
    """Every tag matching `old` → `new` (at the first match's place); copies of `new` that would result are dropped.

    An empty `new` removes. Tags are otherwise left as they are (even repeated ones).
    """
    match = matcher(old)
    if not any(match(t) for t in tags):
        return list(tags)
    out: list[str] = []
    placed = False
    for t in tags:
        if not match(t):
            out.append(t)
        elif not placed:
            out += _unique(new)
            placed = True
    fresh, seen, result = {norm(n) for n in new}, set(), []
    for t in out:  # one copy of each new tag: the first
        if norm(t) in fresh:
            if norm(t) in seen:
                continue
            seen.add(norm(t))
        result.append(t)
    return result


def describe(old: list[str], new: list[str]) -> str:
    """'+kafka −long hair' (or 'kafka moved first'), for the preview of a caption change."""
    before, after = Counter(norm(t) for t in old), Counter(norm(t) for t in new)
    added = [t for t in _unique(new) if after[norm(t)] > before[norm(t)]]
    gone = [t for t in _unique(old) if before[norm(t)] > after[norm(t)]]
    parts = [f"+{t}" for t in added] + [f"−{t}" for t in gone]
    if not parts:
        respelled = [f"{a}→{b}" for a, b in zip(old, new) if a != b and norm(a) == norm(b)]
        moved = [t for t in new[:1] if old and norm(t) != norm(old[0])]
        parts = ([f"{moved[0]} moved first"] if moved else []) + respelled
    return " ".join(parts) or "reordered"


# -- on caption files -------------------------------------------------------------------------------
def plan_edit(dirs: Sequence[str | Path], edit: Callable[[list[str]], list[str]], command: str,
              caption_ext: str = ".txt") -> ChangeSet:
    """Apply `edit` to the tags of every caption in the folders; only captions whose tags change are written."""
    cs = ChangeSet(command)
    seen: set[Path] = set()
    missing = 0
    for folder in image_folders(dirs):
        for image in list_images(folder.path):
            cap = image.with_suffix(caption_ext)
            if cap in seen:
                continue  # 001.png and 001.jpg share 001.txt
            seen.add(cap)
            try:
                raw = cap.read_bytes()
            except FileNotFoundError:
                missing += 1
                continue
            text = decode(raw)
            tags = split_tags(read_caption_text(text))
            new = edit(tags)
            if new == tags:
                continue
            cs.writes.append(Write(folder.root, cap, with_caption_line(text, join_tags(new)).encode("utf-8"), raw,
                                   describe(tags, new)))
    if missing:
        cs.notes.append(f"{missing} image(s) have no {caption_ext} caption and were left alone (lorafw autotag writes them)")
    return cs


def parse_tag_list(text: str | Sequence[str]) -> list[str]:
    """'kafka, 1girl' or ['kafka', '1girl'] → ['kafka', '1girl']."""
    items = [text] if isinstance(text, str) else list(text)
    return [t for item in items for t in split_tags(item)]


def plan_add(dirs: Sequence[str | Path], tags: str | Sequence[str], caption_ext: str = ".txt") -> ChangeSet:
    """Put `tags` (a trigger) first in every caption, moving any copy already there."""
    new = parse_tag_list(tags)
    if not new:
        raise ValueError("no tag to add")
    return plan_edit(dirs, lambda t: add_tags(t, new), "tags add", caption_ext)


def plan_remove(dirs: Sequence[str | Path], patterns: Sequence[str], caption_ext: str = ".txt") -> ChangeSet:
    pats = parse_tag_list(patterns)
    return plan_edit(dirs, lambda t: remove_tags(t, pats), "tags remove", caption_ext)


def plan_replace(dirs: Sequence[str | Path], old: str, new: str | Sequence[str], caption_ext: str = ".txt") -> ChangeSet:
    olds, news = parse_tag_list(old), parse_tag_list(new)
    return plan_edit(dirs, lambda t: replace_tags(t, olds, news), "tags replace", caption_ext)


# -- frequency ---------------------------------------------------------------------------------------
@dataclass
class Frequencies:
    captions: int  # caption files read
    images: int
    counts: list[tuple[str, int]]  # (tag as most often spelled, captions holding it), most frequent first
    traits: set[str] = field(default_factory=set)  # tags that look like traits a trigger absorbs

    def to_json(self) -> dict:
        return {"images": self.images, "captions": self.captions,
                "tags": [{"tag": t, "count": n, "share": round(n / max(self.captions, 1), 4), "trait": t in self.traits}
                         for t, n in self.counts]}

    def table(self, top: int | None = None) -> list[str]:
        rows = self.counts[:top] if top else self.counts
        width = max([len(t) for t, _ in rows] + [3])
        out = [f"{'tag':<{width}}  {'count':>5}  share", f"{'-' * width}  -----  -----"]
        out += [f"{t:<{width}}  {n:>5}  {100 * n / max(self.captions, 1):4.0f}%" + ("  ◆ trait" if t in self.traits else "")
                for t, n in rows]
        return out

    def suggested_prune(self, min_share: float = 0.3) -> list[str]:
        """Trait tags in at least `min_share` of the captions: what the guide removes so the trigger absorbs them."""
        return [t for t, n in self.counts if t in self.traits and n >= min_share * max(self.captions, 1)]


def count_tags(captions: Sequence[str]) -> list[tuple[str, int]]:
    """(tag, captions holding it), most frequent first; spellings of one tag count together. Pure."""
    counts: Counter[str] = Counter()
    spellings: dict[str, Counter[str]] = {}
    for cap in captions:
        present: dict[str, str] = {}
        for t in split_tags(cap):
            present.setdefault(norm(t), t)
            spellings.setdefault(norm(t), Counter())[t] += 1
        counts.update(present.keys())
    named = [(spellings[k].most_common(1)[0][0], n) for k, n in counts.items()]
    return sorted(named, key=lambda kv: (-kv[1], norm(kv[0])))


def tag_frequencies(dirs: Sequence[str | Path], caption_ext: str = ".txt") -> Frequencies:
    captions, images, seen = [], 0, set()
    for folder in image_folders(dirs):
        for image in list_images(folder.path):
            images += 1
            cap = image.with_suffix(caption_ext)
            if cap in seen or not cap.is_file():
                continue
            seen.add(cap)
            captions.append(read_caption_text(decode(cap.read_bytes())))
    counts = count_tags(captions)
    is_trait = matcher(TRAIT_PATTERNS)
    return Frequencies(len(captions), images, counts, {t for t, _ in counts if is_trait(t)})


def chart_png(freq: Frequencies, top: int = 40) -> bytes:
    """A horizontal bar chart of the `top` tags (traits in another colour), as PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = freq.counts[:top][::-1]
    fig, ax = plt.subplots(figsize=(8, 0.25 * max(len(rows), 4) + 1.2))
    colours = ["#d62728" if t in freq.traits else "#1f77b4" for t, _ in rows]
    ax.barh([t for t, _ in rows], [n for _, n in rows], color=colours)
    ax.set_xlabel(f"captions holding the tag (of {freq.captions})")
    ax.set_title(f"top {len(rows)} tags" + (" (red: traits a trigger tag usually absorbs)" if freq.traits else ""), fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    ax.xaxis.get_major_locator().set_params(integer=True)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
