"""torch.compile for training: the UNet's repeated blocks compiled one by one, and why it cannot run here.

The blocks a UNet repeats (SD1.5: 16 transformer blocks, 22 ResNets; SDXL: 70 and 22): compiled one by
one, they share compiled code (same class, same shapes), so compiling takes seconds to a minute instead
of the many minutes a whole-UNet graph takes, and a graph break stays inside one block.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any

REPEATED_BLOCKS = ("BasicTransformerBlock", "ResnetBlock2D")


def compile_blocks(model: Any, backend: str = "inductor") -> int:
    """Regional torch.compile through diffusers' `compile_repeated_blocks` (each block compiled in place:
    state-dict keys unchanged, so saving and loading adapters is untouched), with the ResNet blocks added to
    the transformer blocks diffusers lists for the UNet. Returns how many blocks."""
    import torch._dynamo

    # one compiled variant per distinct block shape (SD1.5 has 10 ResNet shapes) and bucket size
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    model._repeated_blocks = list(dict.fromkeys([*getattr(model, "_repeated_blocks", []), *REPEATED_BLOCKS]))
    model.compile_repeated_blocks(backend=backend)
    return sum(type(m).__name__ in model._repeated_blocks for m in model.modules())


def compile_problem(backend: str, device: Any) -> str | None:
    """Why torch.compile's code generator cannot run here (checked before any weights load), or None.
    Without it, the first training step would end in a compiler traceback."""
    if backend != "inductor":
        return None
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "train.compile=true on a GPU needs triton (pip install triton)"
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++", "cl")):
        return "train.compile=true on a CPU needs a C++ compiler (g++, clang++ or MSVC's cl) on PATH"
    return None
