"""kohya's scale_weight_norms: max-norm regularisation of each adapter's update (networks/lora.py
apply_max_norm_regularization), restated.

After every optimizer step, each adapter's update ΔW = (alpha/rank)·up·down is measured (Frobenius norm);
where it exceeds the limit, up and down are both multiplied by √(limit/‖ΔW‖), so ΔW's norm becomes the limit.
kohya logs three figures, returned here: how many adapters were scaled, and the mean and largest norm after
scaling.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Pair:
    """One adapter: its down (rank × in [× k × k]) and up (out × rank [× 1 × 1]) weights, and its alpha."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float
    also: tuple[torch.Tensor, ...] = ()  # copies scaled alike (full_bf16: the bf16 weights of fp32 masters)


def update_of(down: torch.Tensor, up: torch.Tensor, alpha: float) -> torch.Tensor:
    """ΔW = (alpha/rank)·up·down, for linear, 1×1 and k×k convolution adapters."""
    rank = down.shape[0]
    d, u = down.float(), up.float()
    if d.ndim == 4 and d.shape[2:] != (1, 1):  # k×k conv: up is 1×1, compose as a convolution
        w = F_conv(d, u)
    elif d.ndim == 4:
        w = (u.flatten(1) @ d.flatten(1)).unsqueeze(2).unsqueeze(3)
    else:
        w = u @ d
    return w * (alpha / rank)


def F_conv(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """(out, in, k, k) = up (out, rank, 1, 1) ∘ down (rank, in, k, k)."""
    return torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)


@torch.no_grad()
def scale_weight_norms(pairs: list[Pair], max_norm: float) -> tuple[int, float, float]:
    """Scale (in place) every pair whose update norm exceeds `max_norm`. Returns (keys scaled, mean norm, max
    norm), the norms after scaling, as kohya logs them (max_norm/keys_scaled, norm/avg_key_norm,
    max_norm/max_key_norm)."""
    if not pairs:
        return 0, 0.0, 0.0
    scaled, norms = 0, []
    for p in pairs:
        norm = float(update_of(p.down, p.up, p.alpha).norm())
        ratio = min(max(norm, max_norm / 2), max_norm) / max(norm, max_norm / 2)
        if ratio != 1:
            scaled += 1
            root = ratio**0.5
            for x in (p.up, p.down, *p.also):
                x.mul_(root)
        norms.append(norm * ratio)
    return scaled, sum(norms) / len(norms), max(norms)


def adapter_pairs(network: Any, masters: Any = None) -> list[Pair]:
    """Each LoRA/LoCon adapter of a lorafw Network as (down, up, alpha); with full_bf16's fp32 masters, the masters
    are measured and scaled and the bf16 weights follow (the `also` copies). Like kohya's, it covers lora_down/
    lora_up pairs only: LoHa, LoKr, IA3, GLoRA and Tucker (lora_mid) adapters are left as they are."""
    master_of = {id(p): m for p, m in masters.pairs} if masters is not None else {}
    out = []
    for e in network.entries:
        m = e.module
        if not (hasattr(m, "lora_down") and hasattr(m, "lora_up")) or getattr(m, "lora_mid", None) is not None:
            continue
        down, up = m.lora_down.weight, m.lora_up.weight
        if id(down) in master_of:
            out.append(Pair(master_of[id(down)], master_of[id(up)], float(e.target.alpha), (down, up)))
        else:
            out.append(Pair(down, up, float(e.target.alpha)))
    return out


def apply_max_norm(network: Any, masters: Any, max_norm: float | None) -> dict[str, float] | None:
    """train.scale_weight_norms after an optimizer step: kohya's logged figures, or None when off."""
    if not max_norm:
        return None
    keys_scaled, mean, biggest = scale_weight_norms(adapter_pairs(network, masters), max_norm)
    return {"max_norm/keys_scaled": float(keys_scaled), "norm/avg_key_norm": mean, "max_norm/max_key_norm": biggest}
