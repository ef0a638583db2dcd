"""Data parallel training: which process this is, which batches it takes, and the few collectives a step needs.

Every process holds the same adapter weights and steps the same optimizer on the same (summed) gradients,
so the weights stay identical without DDP wrapping the models. An optimizer step covers
`gradient_accumulation_steps × processes` batches of the epoch's list; process r takes batches r, r+W, ...
of that span, and every batch keeps the random draws (micro-step index) it would have in one process:
W processes × A accumulation train exactly what one process with W×A accumulation trains.
With one process every operation here is a no-op, so the single-GPU path is the same code.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import torch


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "World":
        """The process's place as set by accelerate launch / torchrun (RANK, WORLD_SIZE, LOCAL_RANK)."""
        size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if size <= 1:
            return cls()
        return cls(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def shard(n: int, rank: int, size: int) -> list[int]:
    """Positions of a span of `n` batches that process `rank` of `size` takes: every batch exactly once,
    counts differing by at most one (a short last span leaves some processes with none)."""
    return list(range(rank, n, size))


def spans(batches: list, per_step: int) -> list[list]:
    """An epoch's batches cut into optimizer steps of `per_step` batches (the last may be shorter)."""
    return [batches[i : i + per_step] for i in range(0, len(batches), per_step)]


class Comm:
    """The collectives of one training step; no-ops in a single process."""

    def __init__(self, world: World) -> None:
        self.world = world

    @property
    def active(self) -> bool:
        return self.world.size > 1

    def sum(self, values: Iterable[float]) -> list[float]:
        """Element-wise sum over processes (float64 on the CPU-side copy, so the order of ranks cannot matter)."""
        vals = [float(v) for v in values]
        if not self.active:
            return vals
        import torch.distributed as dist

        t = torch.tensor(vals, dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return t.tolist()

    def sum_grads(self, params: list[torch.Tensor]) -> None:
        """Sum every parameter's gradient over processes in one flat all-reduce. A process that had no batch
        this step contributes zeros."""
        if not self.active:
            return
        import torch.distributed as dist

        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params]
        for dtype in dict.fromkeys(g.dtype for g in grads):
            group = [g for g in grads if g.dtype == dtype]
            flat = torch.cat([g.reshape(-1) for g in group])
            dist.all_reduce(flat)
            offset = 0
            for g in group:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def broadcast(self, tensors: list[torch.Tensor]) -> None:
        """Make every process hold the main process's values (the adapters' initial weights)."""
        if not self.active:
            return
        import torch.distributed as dist

        with torch.no_grad():
            for t in tensors:
                dist.broadcast(t.data, src=0)

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def _device(self) -> torch.device:
        import torch.distributed as dist

        return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def init_process_group(world: World, cpu: bool) -> None:
    """Join the launched processes (accelerate's PartialState: NCCL on GPUs, gloo on CPUs)."""
    if world.size <= 1:
        return
    from accelerate import PartialState

    PartialState(cpu=cpu)


@contextlib.contextmanager
def main_first(comm: Comm) -> Iterator[None]:
    """For work whose results the other processes read from disk (the latent cache): the main process first."""
    if not comm.world.is_main:
        comm.barrier()
    yield
    if comm.world.is_main:
        comm.barrier()
