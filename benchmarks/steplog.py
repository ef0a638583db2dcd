"""Per-step timestamps from TensorBoard event files, and the s/step figures benchmarks/vs_kohya.py prints.

Both trainers log a scalar to TensorBoard once per optimizer step, right after the step (kohya sd-scripts:
`loss/current` from train_network.py's step logs, through accelerate's tracker; lorafw: `loss/step` from
outputs/metrics.py). Each event carries the wall-clock time at which the scalar was logged, so the same
reader gives both trainers' step-end times, taken at the same point of their loops. The event files are
read here directly (TFRecord framing + TensorBoard's Event proto): no TensorBoard server, no torch.

The figures, identical for both trainers (t_i = step i's event time, N steps, E epochs of S steps):
- steady s/step: the median of t_i − t_(i−1) over the steps that are not the first of an epoch
  (the first step of epoch 1 holds the warm-up; the first of each later one the previous epoch's save);
- with save s/step: (T_end − t_1) / (N − 1), T_end being when the last epoch-end save was written (the
  newest mtime among the files the trainer writes at its last epoch end): every step but the first, plus
  every epoch-end save.
"""

from __future__ import annotations

import json
import statistics
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

STEP_TAGS = {"kohya": "loss/current", "lorafw": "loss/step"}


def read_records(path: Path) -> Iterator[bytes]:
    """The records of a TFRecord file (uint64 length, uint32 crc, data, uint32 crc); a record cut off by a
    process that was still writing ends the file."""
    with open(path, "rb") as f:
        while True:
            head = f.read(12)
            if len(head) < 12:
                return
            (n,) = struct.unpack("<Q", head[:8])
            data = f.read(n)
            if len(data) < n or len(f.read(4)) < 4:
                return
            yield data


def scalar_events(paths: Iterable[Path]) -> list[tuple[str, int, float]]:
    """(tag, step, wall_time) of every summary value in the event files, in file order."""
    from tensorboard.compat.proto import event_pb2

    out = []
    for p in paths:
        for rec in read_records(Path(p)):
            ev = event_pb2.Event.FromString(rec)
            for v in ev.summary.value:
                out.append((v.tag, int(ev.step), float(ev.wall_time)))
    return out


def event_files(folder: Path) -> list[Path]:
    return sorted(Path(folder).rglob("events.out.tfevents.*"))


def step_times(events: Iterable[tuple[str, int, float]], tag: str) -> dict[int, float]:
    """step → the wall time its `tag` scalar was first logged at."""
    out: dict[int, float] = {}
    for t, step, wall in events:
        if t == tag and step not in out:
            out[step] = wall
    return out


@dataclass
class StepFigures:
    """One run's step times and what is printed from them."""

    times: dict[int, float]
    steps_per_epoch: int
    end: float | None  # when the last epoch-end save was written
    steady: float = field(init=False)
    with_save: float | None = field(init=False)
    epoch_firsts: list[float] = field(init=False)  # t_i − t_(i−1) for the first step of epochs 2…E (holds a save)

    def __post_init__(self) -> None:
        steps = sorted(self.times)
        n = len(steps)
        if n < 2 or steps != list(range(1, n + 1)):
            raise ValueError(f"need the steps 1…N logged once each; got {steps[:12]}{'…' if n > 12 else ''}")
        if self.steps_per_epoch < 2:
            raise ValueError("need at least 2 steps per epoch (the first of each is not steady)")
        gaps = {i: self.times[i] - self.times[i - 1] for i in steps[1:]}
        self.steady = statistics.median(g for i, g in gaps.items() if (i - 1) % self.steps_per_epoch)
        self.epoch_firsts = [g for i, g in gaps.items() if (i - 1) % self.steps_per_epoch == 0]
        self.with_save = (self.end - self.times[1]) / (n - 1) if self.end is not None else None

    @property
    def n_steps(self) -> int:
        return len(self.times)

    def to_json(self) -> dict:
        return {"steps": self.n_steps, "steady_s_per_step": self.steady, "with_save_s_per_step": self.with_save,
                "epoch_first_steps_s": self.epoch_firsts}


def newest_mtime(paths: Iterable[Path]) -> float | None:
    times = [p.stat().st_mtime for p in paths if p.is_file()]
    return max(times) if times else None


def save_end(trainer: str, out_dir: Path) -> float | None:
    """When the trainer's last epoch-end save was written: kohya writes NAME.safetensors last (after
    accelerator.end_training); lorafw writes NAME-EE.safetensors, the summary, then state.pt."""
    files = list(out_dir.glob("*.safetensors"))
    if trainer == "lorafw":
        files.append(out_dir / "state.pt")
    return newest_mtime(files)


# -- LoRA files ------------------------------------------------------------------------------------------------
def safetensors_header(path: Path) -> dict:
    """A .safetensors file's JSON header (tensor names, dtypes, shapes), read without loading the tensors."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n))


def lora_census(header: dict) -> dict[str, int]:
    """From a LoRA file's header: adapted layers (UNet / text encoder, by kohya's lora_unet_ / lora_te_ names)
    and trainable parameters (every tensor but the alphas)."""
    layers = {"unet": 0, "te": 0}
    params = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if name.endswith(".lora_down.weight"):
            layers["unet" if name.startswith("lora_unet_") else "te"] += 1
        if not name.endswith(".alpha"):
            n = 1
            for d in info["shape"]:
                n *= d
            params += n
    return {"unet_layers": layers["unet"], "te_layers": layers["te"], "parameters": params}
