"""Perceptual hashes for finding near-duplicate images (what dupeGuru's picture mode does).

A difference hash: the image in grey, shrunk to (size+1)×size, one bit per pair of horizontal
neighbours (is the left one brighter?). Resizing and re-compressing an image flips few bits;
a different picture flips about half. `hardness` (1–100, as dupeGuru's filter hardness) sets
how many bits may differ: 100 = only identical hashes match.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HASH_SIZE = 16  # 256 bits: flat-coloured anime images need more than the classic 64
THUMB = 256  # every image is hashed from a square grey thumbnail of this size


def dhash(image: Any, size: int = HASH_SIZE) -> np.ndarray:
    """Packed bits (size*size/8 bytes) of a PIL image's difference hash.

    The image first becomes one THUMB×THUMB box-filtered thumbnail whatever its size: reducing by a
    size-dependent integer factor instead hashed a 1024 px picture and its 682 px copy from different
    intermediates (~20 bits apart on average; ~2 from one thumbnail size)."""
    from PIL import Image

    grey = image.convert("L").resize((THUMB, THUMB), Image.Resampling.BOX)
    if min(grey.size) > 8 * size:  # cheap integer reduction first: the hash only sees a thumbnail
        grey = grey.reduce(max(1, min(grey.size) // (4 * size)))
    small = np.asarray(grey.resize((size + 1, size), Image.Resampling.LANCZOS), dtype=np.float32)
    return np.packbits(small[:, 1:] > small[:, :-1])


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint16)


def distances(hashes: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances of packed hashes (n, bytes) → (n, n)."""
    out = np.zeros((len(hashes), len(hashes)), dtype=np.uint16)
    for i in range(len(hashes)):
        out[i] = _POPCOUNT[np.bitwise_xor(hashes[i], hashes)].sum(axis=1)
    return out


def max_distance(hardness: int, bits: int = HASH_SIZE * HASH_SIZE) -> int:
    """Bits that may differ at a given hardness: 100 → 0; 90 → 10% of the bits; the default 93 → 17 of 256."""
    return int((100 - hardness) * bits / 100)


def near_duplicate_groups(hashes: list[np.ndarray], hardness: int) -> list[list[int]]:
    """Groups (indices, each group ≥ 2, sorted) of images whose hashes are within the hardness."""
    if len(hashes) < 2:
        return []
    d = distances(np.stack(hashes))
    limit = max_distance(hardness)
    parent = list(range(len(hashes)))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    close = np.argwhere(np.triu(d <= limit, k=1))
    for i, j in close:
        parent[find(int(i))] = find(int(j))
    groups: dict[int, list[int]] = {}
    for i in range(len(hashes)):
        groups.setdefault(find(i), []).append(i)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)
