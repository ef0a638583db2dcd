"""Inject LoRA / LoCon / DoRA adapters with peft, and read/write them in the kohya/LyCORIS format.

peft does the adapting (the same engine diffusers loads LoRAs with); this module only decides
where (network/targets.py) and translates peft's tensors to the file layout every UI reads:
`<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha`, and for DoRA `<name>.dora_scale`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch

from lorafw.config.spec import NetworkSpec
from lorafw.network.targets import (
    TE_CONTAINERS,
    UNET_ATTN_CONTAINERS,
    UNET_CONV_CONTAINERS,
    Layer,
    Target,
    kohya_name,
    select,
    te_module_path,
)

ADAPTER = "lorafw"


def layers_of(model: torch.nn.Module, containers: tuple[str, ...]) -> list[Layer]:
    """Every Linear/Conv2d inside a module whose class is in `containers` (innermost container wins)."""
    out: list[Layer] = []
    seen: set[str] = set()
    for cname, container in model.named_modules():
        kind_name = type(container).__name__
        if kind_name not in containers:
            continue
        for sub, m in container.named_modules():
            if not sub:
                continue
            full = f"{cname}.{sub}" if cname else sub
            if full in seen:
                continue
            if isinstance(m, torch.nn.Linear):
                kind = "linear"
            elif isinstance(m, torch.nn.Conv2d):
                kind = "conv1x1" if m.kernel_size == (1, 1) else "conv"
            else:
                continue
            seen.add(full)
            out.append(Layer(full, kind, kind_name))  # type: ignore[arg-type]
    return out


@dataclass
class Adapted:
    """One adapted layer: its peft module and its name in the LoRA file."""

    file_name: str
    path: str
    part: str  # "unet", "te", "te1", "te2"
    target: Target
    module: Any


class Network:
    """The adapters of one run, on the UNet and (if trained) the text encoder(s)."""

    def __init__(self, spec: NetworkSpec, unet: torch.nn.Module, text_encoders: list[torch.nn.Module],
                 te_prefixes: list[str], train_text_encoder: bool, unet_name: Callable[[str], str]) -> None:
        self.spec = spec
        self.entries: list[Adapted] = []
        self._inject("unet", unet, UNET_ATTN_CONTAINERS, UNET_CONV_CONTAINERS, unet_name)
        if train_text_encoder:
            for te, prefix in zip(text_encoders, te_prefixes):
                self._inject(prefix.removeprefix("lora_"), te, TE_CONTAINERS, (), lambda p, pre=prefix: kohya_name(pre, te_module_path(p)))

    def _inject(self, part: str, model: torch.nn.Module, containers: tuple[str, ...], conv_containers: tuple[str, ...],
                name_of: Callable[[str], str]) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        s = self.spec
        targets = select(layers_of(model, containers + conv_containers), containers, conv_containers,
                         s.dim, s.alpha, s.conv_dim, s.conv_alpha)
        if not targets:
            raise RuntimeError(f"no layers to adapt in the {part}")  # a bug: every SD model has them
        special = {re.escape(t.name): t for t in targets if t.rank != s.dim or t.alpha != s.alpha}
        config = LoraConfig(
            r=s.dim,
            lora_alpha=s.alpha,
            target_modules=[t.name for t in targets],
            rank_pattern={k: t.rank for k, t in special.items()},
            alpha_pattern={k: t.alpha for k, t in special.items()},
            lora_dropout=s.dropout,
            use_dora=s.dora_wd,
            init_lora_weights=True,
        )
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
        modules = dict(model.named_modules())
        for t in targets:
            self.entries.append(Adapted(name_of(t.name), t.name, part, t, modules[t.name]))

    def parameters(self, part_prefix: str) -> Iterator[torch.nn.Parameter]:
        """Trainable adapter parameters of the UNet ("unet") or text encoders ("te")."""
        for e in self.entries:
            if e.part.startswith(part_prefix):
                yield from (p for p in _adapter_params(e.module))

    def n_parameters(self) -> int:
        return sum(p.numel() for e in self.entries for p in _adapter_params(e.module))

    def set_enabled(self, enabled: bool) -> None:
        for e in self.entries:
            e.module.enable_adapters(enabled)

    @torch.no_grad()
    def kohya_state_dict(self, dtype: torch.dtype = torch.float16,
                         exact: dict[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The adapters as a kohya/LyCORIS LoRA file's tensors. `exact` maps id(parameter) to a more
        precise copy of it to write instead (full_bf16's fp32 masters)."""
        out: dict[str, torch.Tensor] = {}

        def value(p: torch.Tensor) -> torch.Tensor:
            return exact.get(id(p), p) if exact else p

        for e in self.entries:
            m = e.module
            down = value(m.lora_A[ADAPTER].weight)
            up = value(m.lora_B[ADAPTER].weight)
            out[f"{e.file_name}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous()
            out[f"{e.file_name}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous()
            out[f"{e.file_name}.alpha"] = torch.tensor(float(e.target.alpha), dtype=dtype)
            if self.spec.dora_wd:
                mag = value(m.lora_magnitude_vector[ADAPTER].weight).detach()
                base = m.get_base_layer().weight
                shape = (base.shape[0],) + (1,) * (base.ndim - 1)  # LyCORIS: (out, 1) / (out, 1, 1, 1)
                out[f"{e.file_name}.dora_scale"] = mag.reshape(shape).to("cpu", dtype).contiguous()
        return out

    @torch.no_grad()
    def load_kohya_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Put a kohya-format state dict (as written by `kohya_state_dict`) back into the adapters."""
        missing = []
        for e in self.entries:
            m = e.module
            try:
                m.lora_A[ADAPTER].weight.copy_(sd[f"{e.file_name}.lora_down.weight"])
                m.lora_B[ADAPTER].weight.copy_(sd[f"{e.file_name}.lora_up.weight"])
                if self.spec.dora_wd:
                    mag = m.lora_magnitude_vector[ADAPTER].weight
                    mag.copy_(sd[f"{e.file_name}.dora_scale"].reshape(mag.shape))
            except KeyError as err:
                missing.append(str(err))
        if missing:
            raise KeyError(f"{len(missing)} adapter tensors missing, e.g. {missing[:3]}")


def _adapter_params(module: Any) -> Iterator[torch.nn.Parameter]:
    yield module.lora_A[ADAPTER].weight
    yield module.lora_B[ADAPTER].weight
    if hasattr(module, "lora_magnitude_vector") and ADAPTER in module.lora_magnitude_vector:
        yield module.lora_magnitude_vector[ADAPTER].weight
