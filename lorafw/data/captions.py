"""Caption processing: booru tags, trigger tags, keep_tokens shuffling. Pure functions.

`keep_tokens` counts comma-separated tags (not CLIP tokens), as in kohya sd-scripts.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Iterable


def read_caption_text(text: str) -> str:
    """The caption in a caption file: its first non-empty line (kohya reads the first line)."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def split_tags(caption: str) -> list[str]:
    """'1girl,  kafka , , sunglasses' → ['1girl', 'kafka', 'sunglasses']."""
    return [t.strip() for t in caption.split(",") if t.strip()]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def with_trigger(tags: list[str], trigger: str | None) -> list[str]:
    """Put the trigger tag first (where keep_tokens=1 holds it), dropping any other copy of it."""
    if not trigger:
        return list(tags)
    return [trigger] + [t for t in tags if t != trigger]


def fixed_and_flexible(raw: str, trigger: str | None, keep_tokens: int,
                       separator: str | None) -> tuple[list[str], list[str], list[str]]:
    """(tags that stay first, tags that may be shuffled or dropped, tags that stay last).

    With a separator in the caption the tags before it stay first, and a second separator marks a fixed
    suffix, as kohya does: "kafka, 1girl ||| smile, jacket ||| masterpiece, best quality" keeps
    "masterpiece, best quality" at the end. Without one the first `keep_tokens` tags stay. A trigger tag
    is put first and is always kept, also with keep_tokens=0 (it counts as one of the kept tags).
    """
    if separator and separator in raw:
        head, tail = raw.split(separator, 1)
        suffix_part = ""
        if separator in tail:
            tail, suffix_part = tail.split(separator, 1)
        fixed, flex, suffix = split_tags(head), split_tags(tail), split_tags(suffix_part.replace(separator, ","))
        if trigger:
            fixed = with_trigger(fixed, trigger)
            flex, suffix = [t for t in flex if t != trigger], [t for t in suffix if t != trigger]
        return fixed, flex, suffix
    tags = with_trigger(split_tags(raw), trigger)
    keep = max(keep_tokens, 1) if trigger else keep_tokens
    return tags[:keep], tags[keep:], []


def build_caption(raw: str, trigger: str | None = None, keep_tokens: int = 0, shuffle: bool = False,
                  rng: random.Random | None = None, separator: str | None = None, tag_dropout: float = 0.0,
                  caption_dropout: float = 0.0) -> str:
    """The caption the text encoder sees for one draw of an image (kohya's order: whole-caption dropout,
    then shuffling, then tag dropout; kept tags, first or last, are never shuffled or dropped)."""
    if (shuffle or tag_dropout or caption_dropout) and rng is None:
        raise ValueError("shuffling and dropout need an rng")
    if caption_dropout and rng.random() < caption_dropout:  # type: ignore[union-attr]
        return ""
    fixed, flex, suffix = fixed_and_flexible(raw, trigger, keep_tokens, separator)
    if shuffle:
        rng.shuffle(flex)  # type: ignore[union-attr]
    if tag_dropout:
        flex = [t for t in flex if rng.random() >= tag_dropout]  # type: ignore[union-attr]
    return join_tags(fixed + flex + suffix)


def tag_frequency(captions: Iterable[str]) -> dict[str, int]:
    """{tag: number of captions holding it}, most frequent first (for ss_tag_frequency)."""
    counts: Counter[str] = Counter()
    for cap in captions:
        counts.update(dict.fromkeys(split_tags(cap), 1))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
