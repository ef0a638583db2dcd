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


def shuffle_tags(tags: list[str], keep_tokens: int, rng: random.Random) -> list[str]:
    """Shuffle all tags but the first `keep_tokens`, which stay in place."""
    head, tail = tags[:keep_tokens], tags[keep_tokens:]
    rng.shuffle(tail)
    return head + tail


def build_caption(raw: str, trigger: str | None, keep_tokens: int, shuffle: bool, rng: random.Random | None) -> str:
    """The caption the text encoder sees for one draw of an image."""
    tags = with_trigger(split_tags(raw), trigger)
    if shuffle:
        if rng is None:
            raise ValueError("shuffling needs an rng")
        tags = shuffle_tags(tags, keep_tokens, rng)
    return join_tags(tags)


def tag_frequency(captions: Iterable[str]) -> dict[str, int]:
    """{tag: number of captions holding it}, most frequent first (for ss_tag_frequency)."""
    counts: Counter[str] = Counter()
    for cap in captions:
        counts.update(dict.fromkeys(split_tags(cap), 1))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
