"""kohya's block-wise ranks and learning rates (networks/lora.py), as pure functions over file names.

A UNet layer's block comes from its name in the LoRA file, as kohya computes it:
- SD1.5 (diffusers names): 25 blocks. 0 is unused, 1–11 the down blocks (3·i + j + 1 for
  `down_blocks_i_{resnets|attentions}_j`, 3·i + 3 for block i's downsampler), 12 the mid block, 13–24 the up
  blocks (13 + 3·i + j; 13 + 3·i + 2 for the upsampler).
- SDXL (original-layout names): 23 blocks. 0 = time/label embedding, 1–9 `input_blocks_0…8`,
  10–12 `middle_block_0…2`, 13–21 `output_blocks_0…8`, 22 = `out`.
`block_dims`/`block_alphas`/`conv_block_dims`/`conv_block_alphas` give one value per block (25 or 23).
`down_lr_weight`/`up_lr_weight` give one multiplier per down/up block (12 for SD1.5, 9 for SDXL, the first
one for SD1.5's unused block 0), `mid_lr_weight` one per mid block (1 or 3); SDXL's block 0 and 22 keep 1.0.
A weight at or below `block_lr_zero_threshold` becomes 0, and a block whose lr weight is 0 gets no adapter.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

from lorafw.errors import ConfigError

SD15_DOWN_UP, SD15_MID = 12, 1
SDXL_DOWN_UP, SDXL_MID = 9, 3
PRESETS = ("cosine", "sine", "linear", "reverse_linear", "zeros")
_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


UNET_ARCHS = ("sd15", "sdxl")  # the families kohya's block-wise settings are defined for


def n_blocks(arch: str) -> int:
    """How many values block_dims takes: 25 (SD1.5), 23 (SDXL)."""
    return SD15_DOWN_UP * 2 + SD15_MID if arch == "sd15" else 1 + SDXL_DOWN_UP * 2 + SDXL_MID + 1


def counts(arch: str) -> tuple[int, int]:
    """(down/up lr weights, mid lr weights) kohya takes for the architecture."""
    return (SD15_DOWN_UP, SD15_MID) if arch == "sd15" else (SDXL_DOWN_UP, SDXL_MID)


def block_index(file_name: str, arch: str) -> int:
    """kohya's get_block_index for a UNet layer's file name (`lora_unet_…`); -1 when it is in no block (and for
    every layer of a family without kohya's UNet blocks)."""
    if arch not in UNET_ARCHS:
        return -1
    if arch == "sd15":
        m = _UPDOWN.search(file_name)
        if m:
            side, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
            idx = 3 * i + (2 if kind in ("upsamplers", "downsamplers") else j)
            return 1 + idx if side == "down" else SD15_DOWN_UP + 1 + idx
        return SD15_DOWN_UP if "mid_block_" in file_name else -1
    if not file_name.startswith("lora_unet_"):
        return -1
    name = file_name[len("lora_unet_"):]
    if name.startswith(("time_embed_", "label_emb_")):
        return 0
    for prefix, base in (("input_blocks_", 1), ("middle_block_", 10), ("output_blocks_", 13)):
        if name.startswith(prefix):
            return base + int(name.split("_")[2])
    return 22 if name.startswith("out_") else -1


def preset(name_with_base: str, n: int) -> list[float]:
    """kohya's named lr-weight curves over n blocks: 'cosine', 'sine', 'linear', 'reverse_linear', 'zeros',
    each optionally '+BASE' (added to every value), e.g. 'sine+0.5'."""
    name, _, base_text = name_with_base.partition("+")
    try:
        base = float(base_text) if base_text else 0.0
    except ValueError:
        raise ValueError(f"{name_with_base!r}: the part after '+' must be a number") from None
    if name == "cosine":
        return [math.sin(math.pi * (i / (n - 1)) / 2) + base for i in reversed(range(n))]
    if name == "sine":
        return [math.sin(math.pi * (i / (n - 1)) / 2) + base for i in range(n)]
    if name == "linear":
        return [i / (n - 1) + base for i in range(n)]
    if name == "reverse_linear":
        return [i / (n - 1) + base for i in reversed(range(n))]
    if name == "zeros":
        return [base] * n
    raise ValueError(f"{name_with_base!r} is not a list of numbers or one of {', '.join(PRESETS)} (optionally +BASE)")


def _weights(value: Any, n: int, key: str) -> list[float] | None:
    """A user's lr-weight value as n floats: a list (cut or padded with 1.0 as kohya does) or a preset."""
    if value is None or (isinstance(value, (list, tuple)) and not value) or value == "":
        return None
    if isinstance(value, str) and "," not in value and not _is_number(value):
        try:
            return preset(value.strip(), n)
        except ValueError as e:
            raise ConfigError([f"network.{key}: {e}"]) from None
    items = value.split(",") if isinstance(value, str) else list(value)
    try:
        out = [float(v) if str(v).strip() else 0.0 for v in items]
    except (TypeError, ValueError):
        raise ConfigError([f"network.{key}: expected numbers, got {value!r}"]) from None
    return (out + [1.0] * n)[:n]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def lr_weights(arch: str, down: Any, mid: Any, up: Any, zero_threshold: float) -> list[float] | None:
    """One lr multiplier per block (kohya's get_block_lr_weight), or None when none was given."""
    n_du, n_mid = counts(arch)
    d, m, u = _weights(down, n_du, "down_lr_weight"), _weights(mid, n_mid, "mid_lr_weight"), _weights(up, n_du, "up_lr_weight")
    if d is None and m is None and u is None:
        return None

    def cut(ws: list[float] | None, size: int) -> list[float]:
        return [1.0] * size if ws is None else [w if w > zero_threshold else 0.0 for w in ws]

    out = cut(d, n_du) + cut(m, n_mid) + cut(u, n_du)
    return [1.0] + out + [1.0] if arch == "sdxl" else out


@dataclass(frozen=True)
class BlockPlan:
    """Per-block ranks and alphas (None where that kind of layer keeps network.dim/conv_dim) and lr weights."""

    dims: list[int] | None
    alphas: list[float] | None
    conv_dims: list[int] | None
    conv_alphas: list[float] | None
    lr_weight: list[float] | None

    def rank_alpha(self, block: int, conv: bool, default: tuple[int | None, float | None]) -> tuple[int | None, float | None]:
        """The (rank, alpha) of a UNet layer in `block` (a k×k conv when `conv`); rank 0/None = no adapter."""
        if self.dims is None:
            return default
        if conv:
            if self.conv_dims is None:
                return default
            return self.conv_dims[block], self.conv_alphas[block]  # type: ignore[index]
        return self.dims[block], self.alphas[block]  # type: ignore[index]

    def lr_multiplier(self, block: int) -> float:
        return 1.0 if self.lr_weight is None or block < 0 else self.lr_weight[block]


def plan(arch: str, spec: Any) -> BlockPlan:
    """The block-wise settings of a NetworkSpec, checked against the architecture's block count."""
    given = [k for k in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight",
                         "mid_lr_weight", "up_lr_weight") if getattr(spec, k)]
    if arch not in UNET_ARCHS:
        if given:
            raise ConfigError([f"network.{k}: block-wise settings exist for SD1.5 and SDXL UNets only, not {arch}; "
                               f"remove network.{k}" for k in given])
        return BlockPlan(None, None, None, None, None)
    n = n_blocks(arch)
    weights = lr_weights(arch, spec.down_lr_weight, spec.mid_lr_weight, spec.up_lr_weight, spec.block_lr_zero_threshold)
    problems = []
    for key in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
        v = getattr(spec, key)
        if v and len(v) != n:
            problems.append(f"network.{key}: {arch} has {n} blocks (kohya's order), got {len(v)} values")
    if spec.conv_block_alphas and not spec.conv_block_dims:
        problems.append("network.conv_block_alphas: set without network.conv_block_dims")
    if problems:
        raise ConfigError(problems)
    if not spec.block_dims and weights is None and not spec.conv_block_dims:
        return BlockPlan(None, None, None, None, None)
    dims = list(spec.block_dims) if spec.block_dims else [spec.dim] * n
    alphas = list(spec.block_alphas) if spec.block_alphas else [spec.alpha] * n
    if spec.conv_block_dims:
        conv_dims: list[int] | None = list(spec.conv_block_dims)
        conv_alphas: list[float] | None = list(spec.conv_block_alphas) if spec.conv_block_alphas else [spec.conv_alpha or spec.alpha] * n
    elif spec.conv_dim is not None:
        conv_dims, conv_alphas = [spec.conv_dim] * n, [spec.conv_alpha] * n
    else:
        conv_dims = conv_alphas = None
    if weights is not None:  # kohya's remove_block_dims_and_alphas: no adapter where the lr is 0
        for i, w in enumerate(weights):
            if w == 0:
                dims[i] = 0
                if conv_dims is not None:
                    conv_dims[i] = 0
    return BlockPlan(dims, alphas, conv_dims, conv_alphas, weights)


BLOCK_KEYS = ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas", "down_lr_weight", "mid_lr_weight",
              "up_lr_weight")


def check(arch: str, spec: Any) -> list[str]:
    """Problems with the block-wise keys, for config validation; a family without kohya's UNet blocks (Anima) has
    none to set, so any of them is refused rather than ignored."""
    if arch not in UNET_ARCHS:
        given = [k for k in BLOCK_KEYS if getattr(spec, k) not in (None, (), "")]
        return [f"network.{k}: kohya's block-wise settings address the SD1.5/SDXL UNet's blocks, which "
                f"base_model.arch={arch} has not; remove it" for k in given]
    try:
        plan(arch, spec)
    except ConfigError as e:
        return list(e.problems)
    return []


def describe(weights: Sequence[float] | None) -> str:
    return "" if weights is None else ",".join(f"{w:g}" for w in weights)
