"""`train.full_bf16` / `train.full_fp16`: adapters, their gradients and the frozen model in half precision,
updates that still land.

bf16 keeps 8 bits of mantissa: next to a weight of 1.0 the smallest step is 2⁻⁷ ≈ 0.008, so an
optimizer update of 1e-4 … 1e-6 written straight into a bf16 weight rounds to nothing. The optimizer
therefore steps fp32 master copies of the adapter weights (a few MB for a LoRA) and each bf16 weight
is written back with stochastic rounding: rounded up or down with probabilities that make it right on
average, so small updates move the bf16 weights in expectation even between two master updates.
fp16 (10 mantissa bits, but 5 exponent bits) is written back rounded to nearest: its precision is enough
for the forward pass, and the loss scaler, which unscales the gradients into the fp32 masters, skips a
step whose scaled gradients overflowed.
"""

from __future__ import annotations

from typing import Any

import torch


def stochastic_round_bf16(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """fp32 → bf16, rounding to either neighbour with probability proportional to closeness."""
    x = x.float().contiguous()
    bits = x.view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    rounded = (bits + noise) & -65536  # keep the top 16 bits (sign, exponent, 7 mantissa bits)
    out = rounded.view(torch.float32)
    out = torch.where(torch.isfinite(x), out, x)  # leave inf/nan as they are
    return out.to(torch.bfloat16)  # exact: the low 16 bits are zero


class MasterWeights:
    """fp32 masters for bf16/fp16 parameters: build the optimizer on `groups`, call `pull_grads` before
    clipping and stepping, and `push` after each optimizer step."""

    def __init__(self, param_groups: list[dict[str, Any]]) -> None:
        self.pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter]] = []
        self.groups: list[dict[str, Any]] = []
        for g in param_groups:
            masters = []
            for p in g["params"]:
                m = torch.nn.Parameter(p.detach().float().clone())
                self.pairs.append((p, m))
                masters.append(m)
            self.groups.append({**g, "params": masters})

    def pull_grads(self) -> None:
        for p, m in self.pairs:
            m.grad = None if p.grad is None else p.grad.float()

    @torch.no_grad()
    def push(self, generator: torch.Generator | None = None) -> None:
        """Masters → the half-precision weights: bf16 stochastically rounded, fp16 (and fp32) rounded to nearest."""
        for p, m in self.pairs:
            p.copy_(stochastic_round_bf16(m, generator) if p.dtype == torch.bfloat16 else m)
