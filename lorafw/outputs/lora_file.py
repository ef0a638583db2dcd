"""Write a LoRA .safetensors: tensors + metadata + the hashes A1111 and Civitai use, atomically."""

from __future__ import annotations

import hashlib
from io import BytesIO
from pathlib import Path

import torch

from lorafw.outputs.atomic import atomic_write


def data_sha256(blob: bytes) -> str:
    """sha256 of the bytes after a safetensors header (A1111's and kohya's `sshs_model_hash`)."""
    n = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(blob[8 + n :]).hexdigest()


def legacy_hash(blob: bytes) -> str:
    """kohya's `sshs_legacy_hash`: 64 KiB at offset 1 MiB of the file written with only ss_* metadata."""
    b = BytesIO(blob)
    b.seek(0x100000)
    return hashlib.sha256(b.read(0x10000)).hexdigest()[:8]


def file_data_sha256(path: str | Path) -> str:
    """`sshs_model_hash` of a file on disk (what A1111 computes when it lists the LoRA)."""
    p = Path(path)
    with p.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        f.seek(8 + n)
        h = hashlib.sha256()
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_lora(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Serialize with the hashes in the metadata; the tensor bytes (and so the hash) do not depend on it."""
    from safetensors.torch import save

    ss_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    probe = save(tensors, ss_only)
    meta = dict(metadata, sshs_model_hash=data_sha256(probe), sshs_legacy_hash=legacy_hash(probe))
    return atomic_write(path, save(tensors, meta))
