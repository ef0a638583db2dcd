"""Atomic file writes: a temporary name in the same folder, fsync, then rename.

A crash, a full disk or Ctrl-C mid-write leaves the previous file (or none) — never half a file
that a UI would load as a broken LoRA.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO, Callable

from lorafw import faults
from lorafw.errors import OutputError


def atomic_write(path: str | Path, data: bytes | str | Callable[[BinaryIO], None]) -> Path:
    """Write `data` (bytes, text, or a function writing into the open file: no copy of a large
    serialization in memory) to `path` atomically."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            if callable(raw):
                raw(f)
            else:
                f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        faults.kill_if("kill_in_save", name=p.name)  # tests: die with the new file written but not yet in place
        os.replace(tmp, p)
    except BaseException as e:  # also Ctrl-C: never leave a half-written temporary behind
        try:
            tmp.unlink()
        except OSError:
            pass
        if not isinstance(e, OSError):
            raise
        if e.errno == errno.ENOSPC:
            raise OutputError(
                f"the disk is full: could not write {p}{'' if callable(raw) else f' ({len(raw) / 1e6:.1f} MB)'}; "
                "free some space — "
                "files written before this one are intact"
            ) from None
        if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM, errno.ENOTDIR):
            raise OutputError(f"cannot write {p}: {e.strerror}; check the folder's permissions or choose another location") from None
        raise
    return p
