"""Where the model parts and the batches live (the training device; caches on it or in pinned memory), and a
check that every tensor reaches the device of the module consuming it.

Training keeps the UNet (and trained text encoders) on the training device. Frozen parts that are done
with their work are *parked* in CPU memory: the VAE once the latents are cached, the text encoders once
their outputs are cached. Samples need them back for a moment: `Parking.borrow` brings them to the device
and parks them again afterwards. Everything else a parked module would have computed (validation
captions' text states) is computed before it is parked.

On a CPU-only machine the training device and the parking place are the same, so a mix-up (a CPU tensor
fed to a CUDA UNet) cannot show. Two tools make it show anyway:
- `guard(modules)`: forward pre-hooks that raise PlacementError when an input tensor is not on the
  module's own device (set LORAFW_CHECK_DEVICES=1 and a run installs them on its UNet, VAE and text
  encoders; the tests and the GPU smoke tests do);
- `MetaParking`: parks on the `meta` device (the weights kept aside in CPU memory), a second "device"
  that refuses to compute anything real: a parked module used without `borrow`, or its output fed to a
  module elsewhere, fails at once.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import torch

from lorafw.errors import ConfigError


class PlacementError(RuntimeError):
    """A tensor reached a module on another device: a bug in lorafw, not in the user's settings."""


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter (or buffer); the CPU for a module with neither."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def tensors_in(obj: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(where, tensor) for every tensor in nested args/kwargs (lists, tuples, dicts, dataclass-like outputs)."""
    if isinstance(obj, torch.Tensor):
        yield path or "input", obj
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from tensors_in(v, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from tensors_in(v, f"{path}.{k}" if path else str(k))


def misplaced(module: torch.nn.Module, args: tuple, kwargs: dict) -> list[str]:
    """What of a call's inputs is not on the module's device (indices of integer tensors included)."""
    dev = device_of(module)
    out = []
    for where, t in [*tensors_in(list(args), "args"), *tensors_in(kwargs)]:
        if t.device != dev:
            out.append(f"{where} on {t.device}")
    return out


def guard(modules: dict[str, torch.nn.Module]) -> list[Any]:
    """Install device-asserting forward pre-hooks; returns their handles (`.remove()` each to take them off)."""
    handles = []
    for name, m in modules.items():
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict, _name: str = name) -> None:
            bad = misplaced(module, args, kwargs)
            if bad:
                raise PlacementError(f"{_name} (on {device_of(module)}) was given {', '.join(bad)}: every tensor must be "
                                     "moved to the device of the module that consumes it")
        handles.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    return handles


@contextlib.contextmanager
def guarded(modules: dict[str, torch.nn.Module]) -> Iterator[None]:
    handles = guard(modules)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def resolve_device(name: str) -> torch.device:
    """train.device → the training device (`auto`: the GPU when there is one)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError([f"train.device: {name} was asked for but no CUDA GPU is available; use train.device=auto or cpu"])
    return dev


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch to the training device; from host memory through a pinned buffer without blocking on a GPU."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def place_cache(tensors: list[torch.Tensor], device: torch.device, budget: int = 2 << 30) -> tuple[list[torch.Tensor], str]:
    """Where cached latents / text states live during training: on the GPU when they fit in `budget` bytes
    (no copy per step), else in pinned host memory (copied without blocking). On a CPU: where they are."""
    if device.type != "cuda":
        return tensors, "host"
    size = sum(t.numel() * t.element_size() for t in tensors)
    if size <= budget:
        return [t.to(device) for t in tensors], f"on {device} ({size / 2**20:.0f} MiB)"
    return [t.pin_memory() for t in tensors], f"in pinned host memory ({size / 2**20:.0f} MiB)"


def checks_wanted() -> bool:
    """LORAFW_CHECK_DEVICES=1 (or =meta): runs install `guard` on their model parts (tests, GPU smoke tests)."""
    return os.environ.get("LORAFW_CHECK_DEVICES", "") not in ("", "0")


def new_parking() -> "Parking":
    """A run's parking: CPU memory; on `meta` with LORAFW_CHECK_DEVICES=meta (the CPU-only placement tests)."""
    return MetaParking() if os.environ.get("LORAFW_CHECK_DEVICES", "") == "meta" else Parking()


class Parking:
    """Where frozen model parts wait while the training device does not need them: CPU memory."""

    place = torch.device("cpu")

    def __init__(self) -> None:
        self.parked: dict[int, torch.nn.Module] = {}

    def park(self, *modules: torch.nn.Module) -> None:
        for m in modules:
            self._move_away(m)
            self.parked[id(m)] = m

    def is_parked(self, module: torch.nn.Module) -> bool:
        return id(module) in self.parked

    @contextlib.contextmanager
    def borrow(self, device: torch.device, *modules: torch.nn.Module) -> Iterator[None]:
        """The parked ones of `modules` on `device` for the duration (the others are where they are)."""
        taken = [m for m in modules if self.is_parked(m)]
        for m in taken:
            self._bring(m, device)
        try:
            yield
        finally:
            for m in taken:
                self._move_away(m)

    def _move_away(self, m: torch.nn.Module) -> None:
        m.to(self.place)

    def _bring(self, m: torch.nn.Module, device: torch.device) -> None:
        m.to(device)


class MetaParking(Parking):
    """For tests on a CPU: parks on `meta`, keeping the real weights aside, so that any use of a parked module
    (or of what it computed) outside `borrow` fails instead of silently working on the one CPU."""

    place = torch.device("meta")

    def __init__(self) -> None:
        super().__init__()
        self._kept: dict[int, dict[tuple[str, str], torch.Tensor]] = {}

    def _move_away(self, m: torch.nn.Module) -> None:
        # every parameter and buffer (non-persistent ones too, e.g. CLIP's position_ids), by name
        self._kept[id(m)] = {("p", k): v.detach().to("cpu", copy=True) for k, v in m.named_parameters()} | \
                            {("b", k): v.detach().to("cpu", copy=True) for k, v in m.named_buffers()}
        m.to("meta")

    @torch.no_grad()
    def _bring(self, m: torch.nn.Module, device: torch.device) -> None:
        kept = self._kept[id(m)]
        m.to_empty(device=device)
        for (kind, name), v in kept.items():
            (m.get_parameter(name) if kind == "p" else m.get_buffer(name)).copy_(v)
