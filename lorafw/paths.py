"""Paths as users type them: `~/data/kafka`, `$DATA/kafka`. No other lorafw imports, so any module may use it."""

from __future__ import annotations

import os
from pathlib import Path


def expand(path: str) -> Path:
    """User paths may use ~ and $VARS."""
    return Path(os.path.expandvars(os.path.expanduser(path)))
