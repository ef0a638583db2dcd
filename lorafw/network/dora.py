"""DoRA as each reader computes it, as pure functions of (W, ΔW, dora_scale, strength).

The readers disagree (each read from its source; FORMATS.md):
- exact — LyCORIS (`weight_decompose`, wd_on_out) and peft: W' = m · (W + ΔW) / (‖W + ΔW‖_row + eps), the
  norm per output channel. This is the training forward, so it is what the file was optimised for.
- comfyui — ComfyUI's `comfy/weight_adapter/base.py: weight_decompose` (Forge has the same code): when
  dora_scale has one value per output channel it divides by the norm of the ORIGINAL weight,
  W' = (W + ΔW) · m / (‖W‖_row + eps); a per-input dora_scale gets the column norm of W + ΔW.
- a1111 — A1111 1.10 `extensions-builtin/Lora/network.py: apply_weight_decompose`: always the per-input-
  column norm of W + ΔW, without eps, W' = (W + ΔW) · (m / ‖W + ΔW‖_col); an (out, 1) dora_scale then
  broadcasts into an (out, in) matrix of m_o / ‖col_i‖.
All three then apply a UI weight w as W + w · (W' − W) (ComfyUI's strength, A1111's multiplier), and
without dora_scale the patch is W + w · ΔW in every reader.
"""

from __future__ import annotations

from typing import Literal

import torch

UI = Literal["comfyui", "a1111", "exact"]


def _row_norm(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).norm(dim=1).reshape(w.shape[0], *[1] * (w.dim() - 1))


def _col_norm(w: torch.Tensor) -> torch.Tensor:
    t = w.transpose(0, 1)
    return t.reshape(t.shape[0], -1).norm(dim=1).reshape(t.shape[0], *[1] * (w.dim() - 1)).transpose(0, 1)


def decomposed(w: torch.Tensor, delta: torch.Tensor, dora_scale: torch.Tensor, ui: UI) -> torch.Tensor:
    """W' at weight 1: the layer's weight with the DoRA file applied the way `ui` applies it (fp32)."""
    w, merged = w.float(), w.float() + delta.float()
    m = dora_scale.float()
    eps = torch.finfo(torch.float32).eps
    if ui == "exact":
        return merged * (m.reshape(w.shape[0], *[1] * (w.dim() - 1)) / (_row_norm(merged) + eps))
    if ui == "comfyui":
        if m.shape[0] == w.shape[0]:
            return merged * (m / (_row_norm(w) + eps))
        return merged * (m / (_col_norm(merged) + eps))
    if ui == "a1111":
        return merged * (m / _col_norm(merged))
    raise ValueError(f"unknown ui {ui!r}; choose comfyui, a1111 or exact")


def patched(w: torch.Tensor, delta: torch.Tensor, strength: float, dora_scale: torch.Tensor | None = None,
            ui: UI = "exact") -> torch.Tensor:
    """The weight a UI runs with a LoRA at `strength`: W + w·ΔW, or W + w·(W' − W) for DoRA (fp32)."""
    if dora_scale is None:
        return w.float() + strength * delta.float()
    full = decomposed(w, delta, dora_scale, ui)
    return w.float() + strength * (full - w.float())
