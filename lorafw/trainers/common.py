"""Helpers every trainer shares: device and precision, run folders, caches on the device, compiling.
(The loss is in step.py.)"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorafw.config.spec import RunSpec
from lorafw.errors import OutputError
from lorafw.outputs.record import RECORD

log = logging.getLogger("lorafw")
# bitsandbytes warns on import, on CPUs with AVX512-BF16, that an optional 4-bit kernel package is missing;
# lorafw never uses 4-bit layers, so the line only confuses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


@dataclass
class RunResult:
    """What a finished run gives back to Python callers (and the CLI prints)."""

    run_dir: Path
    spec: RunSpec
    lora_files: list[Path]
    loss_history: list[float]  # one value per optimizer step
    epoch_losses: list[float]  # mean training loss of each epoch
    steps: int
    wall_time_s: float
    notes: list[str] = field(default_factory=list)
    val_losses: dict[int, float] = field(default_factory=dict)  # epoch → validation loss

    @property
    def final_loss(self) -> float:
        return self.epoch_losses[-1] if self.epoch_losses else float("nan")

    @property
    def objective(self) -> float:
        """What a sweeper minimises: the best validation loss, or the best epoch's training loss without one."""
        if self.val_losses:
            return min(self.val_losses.values())
        return min(self.epoch_losses) if self.epoch_losses else float("nan")


@contextlib.contextmanager
def quiet(logger: str, level: int = logging.ERROR):
    """Raise one library logger's threshold for a moment (for warnings that do not apply to us)."""
    lg = logging.getLogger(logger)
    old = lg.level
    lg.setLevel(level)
    try:
        yield
    finally:
        lg.setLevel(old)


def progress_bar(shown: bool = True, **kwargs: Any):
    """tqdm in a terminal or a notebook (Colab); silent in logs and CI, where epoch lines say enough, and in
    every data-parallel process but the main one (`shown=False`)."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return tqdm(disable=not (interactive and shown), dynamic_ncols=True, **kwargs)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from lorafw.errors import ConfigError

        raise ConfigError([f"train.device: {name} was asked for but no CUDA GPU is available; use train.device=auto or cpu"])
    return dev


def weight_dtype(precision: str) -> torch.dtype:
    """dtype of the frozen base weights: half where the run is mixed-precision (adapters stay fp32)."""
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def identity(spec: RunSpec) -> dict[str, Any]:
    """What a run computes: the spec without where it writes, whether it resumes, and the files' comment."""
    d = spec.to_dict()
    d.pop("resume", None)
    d.pop("imported", None)  # what `lorafw import` left behind: a record, not a setting
    for key in ("dir", "overwrite", "comment"):
        d["output"].pop(key, None)
    return d


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} for every value that differs between two spec dicts."""
    out: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        key = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(changed_keys(a, b, key + "."))
        elif a != b:
            out[key] = (a, b)
    return out


def check_disk(folder: Path, need: int, what: str) -> None:
    """Fail before training when the disk holding `folder` has less free space than `need` bytes."""
    import shutil

    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise OutputError(
            f"not enough disk space for {what}: about {need / 1e6:,.0f} MB needed, {free / 1e6:,.0f} MB free on "
            f"the disk holding {folder}; free some space or choose another folder"
        )


def ensure_writable(folder: Path, what: str) -> None:
    """Create `folder` and prove a file can be written there, or fail naming the setting to change."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lorafw-write-test-{id(folder)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write to {what} {folder}: {e.strerror}; choose a writable folder") from None


def _holds_results(run_dir: Path) -> bool:
    """A run folder is worth protecting unless its run failed before writing any LoRA or state."""
    import json

    try:
        status = json.loads((run_dir / RECORD).read_text()).get("status", "")
    except (OSError, ValueError):
        return True
    produced = any(run_dir.glob("*.safetensors")) or (run_dir / "state.pt").exists()
    return produced or not str(status).startswith("failed")


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run folder; refuse one that already holds a run (unless output.overwrite=true or resuming).
    Temporaries left by a process that was killed mid-write are removed."""
    if (run_dir / RECORD).exists() and not overwrite and _holds_results(run_dir):
        raise OutputError(
            f"{run_dir} already holds a run (run.json); choose another output.dir, or set output.overwrite=true "
            "to write over it"
        )
    ensure_writable(run_dir, "the output folder (output.dir)")
    for tmp in run_dir.glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            tmp.unlink(missing_ok=True)


# -- speed ---------------------------------------------------------------------------------------------------
# The blocks a UNet repeats (SD1.5: 16 transformer blocks, 22 ResNets; SDXL: 70 and 22): compiled one by
# one, they share compiled code (same class, same shapes), so compiling takes seconds to a minute instead
# of the many minutes a whole-UNet graph takes, and a graph break stays inside one block.
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


def compile_problem(backend: str, device: torch.device) -> str | None:
    """Why torch.compile's code generator cannot run here (checked before any weights load), or None.
    Without it, the first training step would end in a compiler traceback."""
    import importlib.util
    import os
    import shutil

    if backend != "inductor":
        return None
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "train.compile=true on a GPU needs triton (pip install triton)"
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++", "cl")):
        return "train.compile=true on a CPU needs a C++ compiler (g++, clang++ or MSVC's cl) on PATH"
    return None


def place_cache(tensors: list[torch.Tensor], device: torch.device, budget: int = 2 << 30) -> tuple[list[torch.Tensor], str]:
    """Where cached latents / text states live during training: on the GPU when they fit in `budget` bytes
    (no copy per step), else in pinned host memory (copied without blocking). On a CPU: where they are."""
    if device.type != "cuda":
        return tensors, "host"
    size = sum(t.numel() * t.element_size() for t in tensors)
    if size <= budget:
        return [t.to(device) for t in tensors], f"on {device} ({size / 2**20:.0f} MiB)"
    return [t.pin_memory() for t in tensors], f"in pinned host memory ({size / 2**20:.0f} MiB)"


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch to the training device; from host memory through a pinned buffer without blocking on a GPU."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
