"""Apply a LoRA file to a model at a weight the way the UIs do: patch the weights, W + w·(W_full − W).

A1111/Forge and ComfyUI merge a LoRA into the layer weights rather than running adapters: for LoRA and
LoCon W_full = W + ΔW (ΔW = up·down·alpha/rank), for DoRA W_full = m·(W + ΔW)/‖W + ΔW‖ per output
channel (m = dora_scale), and a weight w ≠ 1 interpolates, W + w·(W_full − W). `lorafw grid` renders
with this, so its images are what users will see; at w = 0 the model is the base model, bit for bit.
"""

from __future__ import annotations

from typing import Callable

import torch

from lorafw.network.targets import kohya_name, te_module_path


def delta_weight(down: torch.Tensor, up: torch.Tensor, alpha: float) -> torch.Tensor:
    """ΔW of one kohya-format layer: (out, in) for Linear, (out, in, k, k) for convolutions."""
    rank = down.shape[0]
    scale = alpha / rank
    if down.ndim == 2:
        return (up @ down) * scale
    return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]) * scale


def full_weight(w: torch.Tensor, down: torch.Tensor, up: torch.Tensor, alpha: float,
                dora_scale: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's weight with the LoRA at weight 1 (fp32)."""
    merged = w.float() + delta_weight(down.float(), up.float(), alpha)
    if dora_scale is None:
        return merged
    norm = merged.reshape(merged.shape[0], -1).norm(dim=1).reshape(merged.shape[0], *[1] * (merged.ndim - 1))
    return merged * (dora_scale.float().reshape(norm.shape) / (norm + torch.finfo(torch.float32).eps))


def module_names(arch: str, unet: torch.nn.Module, text_encoders: list[torch.nn.Module],
                 to_original: Callable[[str], str] | None = None) -> dict[str, torch.nn.Module]:
    """Every Linear/Conv2d of the model under the name a LoRA file gives it (`lora_unet_…`, `lora_te…`)."""
    out: dict[str, torch.nn.Module] = {}
    for path, m in unet.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            try:
                out[kohya_name("lora_unet", to_original(path) if to_original else path)] = m
            except KeyError:
                continue
    prefixes = ["lora_te"] if arch == "sd15" else ["lora_te1", "lora_te2"]
    for prefix, te in zip(prefixes, text_encoders):
        for path, m in te.named_modules():
            if isinstance(m, torch.nn.Linear):
                out[kohya_name(prefix, te_module_path(path))] = m
    return out


class WeightPatcher:
    """Puts a LoRA file into a model at a weight, and takes it out again (the originals are kept)."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.modules = modules
        self.originals: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def apply(self, lora: dict[str, torch.Tensor], weight: float) -> int:
        """Patch every layer the file names; returns how many. Unknown layer names are an error."""
        self.restore()
        names = sorted({k.split(".", 1)[0] for k in lora})
        unknown = [n for n in names if n not in self.modules]
        if unknown:
            raise KeyError(f"{len(unknown)} LoRA layers do not exist in this model, e.g. {unknown[:3]}")
        if weight == 0:
            return 0
        for n in names:
            m = self.modules[n]
            w = m.weight
            self.originals[n] = w.detach().clone()
            alpha = float(lora[f"{n}.alpha"]) if f"{n}.alpha" in lora else float(lora[f"{n}.lora_down.weight"].shape[0])
            full = full_weight(w, lora[f"{n}.lora_down.weight"].to(w.device), lora[f"{n}.lora_up.weight"].to(w.device), alpha,
                               lora[f"{n}.dora_scale"].to(w.device) if f"{n}.dora_scale" in lora else None)
            w.copy_((w.float() + weight * (full - w.float())).to(w.dtype))
        return len(names)

    @torch.no_grad()
    def restore(self) -> None:
        for n, original in self.originals.items():
            self.modules[n].weight.copy_(original)
        self.originals.clear()
