"""Read a .safetensors header (names, dtypes, shapes, metadata) without torch and without the tensors.

A 7 GB SDXL checkpoint's header is a few hundred KB of JSON: reading it tells the architecture
in milliseconds, so a wrong base model fails before anything heavy is loaded.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from lorafw.errors import ModelError

_DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
}
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorInfo:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Header:
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str]
    data_offset: int  # byte offset where tensor data starts (8 + header length)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: v.shape for k, v in self.tensors.items()}


def read_header(path: str | Path) -> Header:
    """Parse the header of `path`; a truncated or corrupt file is a ModelError naming the file."""
    p = Path(path)
    try:
        size = p.stat().st_size
        with p.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelError(f"{p}: not a safetensors file (only {size} bytes); the download is probably incomplete")
            (n,) = struct.unpack("<Q", head)
            if n <= 1 or n > _MAX_HEADER or 8 + n > size:
                raise ModelError(
                    f"{p}: not a valid safetensors file (header length {n} does not fit the {size}-byte file); "
                    "it may be truncated, or another format renamed to .safetensors"
                )
            raw = f.read(n)
    except OSError as e:
        raise ModelError(f"{p}: cannot read ({e.strerror})") from None
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ModelError(f"{p}: the safetensors header is corrupt (not JSON); re-download the file") from None
    meta = obj.pop("__metadata__", None) or {}
    tensors: dict[str, TensorInfo] = {}
    end = 0
    for name, info in obj.items():
        try:
            dtype, shape, (start, stop) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise ModelError(f"{p}: the safetensors header is corrupt at tensor {name!r}") from None
        count = 1
        for s in shape:
            count *= s
        if dtype in _DTYPE_BYTES and stop - start != count * _DTYPE_BYTES[dtype]:
            raise ModelError(f"{p}: tensor {name!r} has the wrong byte size; the file is corrupt")
        end = max(end, stop)
        tensors[name] = TensorInfo(dtype, shape)
    if 8 + n + end > size:
        raise ModelError(
            f"{p}: truncated: the header promises {8 + n + end} bytes, the file has {size}; "
            "re-download or re-copy it"
        )
    return Header(tensors=tensors, metadata={str(k): str(v) for k, v in meta.items()}, data_offset=8 + n)
