"""Put a network's adapters on the UNet and text encoder(s), and read/write them in the kohya/LyCORIS format.

Each adapted layer gets a LyCORIS module (network/modules.py) made for `network.algo`, registered as a
child of the layer (`<layer>.lycoris`) so it moves, casts and switches train/eval with the model, and
applied with LyCORIS's `apply_to` (the layer's forward runs the adapter). Where: network/targets.py (kohya's
layer choice) and config/blocks.py (kohya's per-block ranks). The file holds, under the name every UI
expects (`lora_unet_…`, `lora_te_text_model_…`), each module's own LyCORIS state dict: `lora_down/lora_up/
alpha[/dora_scale]` for LoRA/LoCon/DoRA, `hada_*` for LoHa, `lokr_*` for LoKr, `weight/on_input` for IA3,
`a1/a2/b1/b2` for GLoRA, `w_norm/b_norm` for network.train_norm's norm layers — so LyCORIS's own loader and the
UIs' take every tensor as written. network.init_weights fills them from a file (network/init_weights.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch

from lorafw.config import blocks
from lorafw.config.spec import NetworkSpec
from lorafw.network.modules import make, make_norm
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

if TYPE_CHECKING:
    from lorafw.network.init_weights import Loaded

log = logging.getLogger("lorafw")
CHILD = "lycoris"  # the adapter's attribute name on its layer


def layers_of(model: torch.nn.Module, containers: tuple[str, ...]) -> list[Layer]:
    """Every Linear/Conv2d inside a module whose class is in `containers` (innermost container wins)."""
    out: list[Layer] = []
    seen: set[str] = set()
    for cname, container in model.named_modules():
        kind_name = type(container).__name__
        if kind_name not in containers:
            continue
        for sub, m in container.named_modules():
            if not sub or f".{CHILD}." in f".{sub}.":
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


def norms_of(model: torch.nn.Module, containers: tuple[str, ...]) -> list[str]:
    """Every LayerNorm/GroupNorm inside a module whose class is in `containers`: what LyCORIS's train_norm adapts
    (its NormModule takes only those two)."""
    out: list[str] = []
    for cname, container in model.named_modules():
        if type(container).__name__ not in containers:
            continue
        for sub, m in container.named_modules():
            full = f"{cname}.{sub}" if cname else sub
            if sub and f".{CHILD}." not in f".{sub}." and isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm)) \
                    and full not in out:
                out.append(full)
    return out


@dataclass
class Adapted:
    """One adapted layer: its LyCORIS module and its name in the LoRA file."""

    file_name: str
    path: str
    part: str  # "unet", "llm_adapter" (in the denoiser: Anima's), "te", "te1", "te2"
    target: Target
    module: Any
    block: int = -1  # kohya's UNet block index (config/blocks.py); -1 for text encoders


class Network:
    """The adapters of one run, on the UNet (unless `train_unet` is false), the denoiser's LLM adapter (with
    network.train_llm_adapter, where the family has one) and (if trained) the text encoder(s).

    `te_names` names each text encoder's layers in the file (default: kohya's CLIP names, `lora_te_text_model_…`).
    `ranks` (network.dim_from_weights: network/init_weights.py) gives each layer's rank and alpha by file name, as
    kohya's create_network_from_weights does: the layers it does not name get no adapter."""

    def __init__(self, spec: NetworkSpec, unet: torch.nn.Module, text_encoders: list[torch.nn.Module],
                 te_prefixes: list[str], train_text_encoder: bool, unet_name: Callable[[str], str], *,
                 arch: str | None = None, train_unet: bool = True, targets: Any = None,
                 te_names: list[Callable[[str], str]] | None = None,
                 ranks: dict[str, tuple[int, float]] | None = None) -> None:
        self.spec = spec
        self.ranks = ranks
        self.started_from: Loaded | None = None  # what network.init_weights filled it from (network/init_weights.py)
        self.arch = arch or ("sdxl" if len(te_prefixes) > 1 else "sd15")
        self.plan = blocks.plan(self.arch, spec)
        self.entries: list[Adapted] = []
        self.enabled = True
        if spec.algo == "ia3":
            log.warning("network.algo=ia3: ComfyUI's LoRA loader ignores IA3 files; A1111/Forge and LyCORIS read them")
        # the family's adapter targets (archs/protocol.py AdapterTargets): block class names holding the layers
        attn, conv, te_blocks = ((targets.denoiser, targets.denoiser_conv, targets.text_encoder) if targets is not None
                                 else (UNET_ATTN_CONTAINERS, UNET_CONV_CONTAINERS, TE_CONTAINERS))
        if train_unet:
            self._inject("unet", unet, attn, conv, unet_name)
        if spec.train_llm_adapter and getattr(targets, "llm_adapter", ()):
            self._inject("llm_adapter", unet, targets.llm_adapter, (), unet_name)
        if train_text_encoder:
            for i, (te, prefix) in enumerate(zip(text_encoders, te_prefixes)):
                name = te_names[i] if te_names else (lambda p, pre=prefix: kohya_name(pre, te_module_path(p)))
                self._inject(prefix.removeprefix("lora_"), te, te_blocks, (), name)
        if not self.entries:
            raise RuntimeError("no layers to adapt")  # validation refuses runs that train nothing

    def _inject(self, part: str, model: torch.nn.Module, containers: tuple[str, ...], conv_containers: tuple[str, ...],
                name_of: Callable[[str], str]) -> None:
        s = self.spec
        conv_dim = s.conv_dim if s.algo != "lora" else None
        conv_alpha = (s.conv_alpha if s.conv_alpha is not None else s.alpha) if conv_dim is not None else None
        if part == "unet" and (self.plan.conv_dims is not None or (self.ranks is not None and s.algo != "lora")):
            conv_dim, conv_alpha = conv_dim or 1, conv_alpha or s.alpha  # conv layers chosen; ranks per block / file
        targets = select(layers_of(model, containers + conv_containers), containers, conv_containers,
                         s.dim, s.alpha, conv_dim, conv_alpha)
        if not targets:
            raise RuntimeError(f"no layers to adapt in the {part}")  # a bug: every SD model has them
        for pname, p in model.named_parameters():  # only the adapters train (as peft's injection did)
            if f".{CHILD}." not in f".{pname}":
                p.requires_grad_(False)
        modules = dict(model.named_modules())
        for t in targets:
            file_name = name_of(t.name)
            block = blocks.block_index(file_name, self.arch) if part == "unet" else -1
            if self.ranks is not None:
                if file_name not in self.ranks:
                    continue  # kohya's create_network_from_weights: only the file's layers
                t = Target(t.name, t.kind, *self.ranks[file_name])
            elif part == "unet":
                rank, alpha = self.plan.rank_alpha(block, t.kind == "conv", (t.rank, t.alpha))
                if not rank:
                    continue  # kohya: rank 0 (or a block lr weight of 0) = no adapter there
                t = Target(t.name, t.kind, rank, alpha)  # type: ignore[arg-type]
            layer = modules[t.name]
            adapter = make(s.algo, file_name, layer, t.rank, t.alpha, s).to(layer.weight.device)
            layer.add_module(CHILD, adapter)
            adapter.apply_to()
            self.entries.append(Adapted(file_name, t.name, part, t, adapter, block))
        if s.train_norm and part == "unet":  # LyCORIS: the norms inside the blocks it adapts (none in CLIP's)
            for path in norms_of(model, containers + (conv_containers if conv_dim is not None else ())):
                file_name = name_of(path)
                if self.ranks is not None and file_name not in self.ranks:
                    continue
                adapter = make_norm(file_name, modules[path], s).to(modules[path].weight.device)
                modules[path].add_module(CHILD, adapter)
                adapter.apply_to()
                self.entries.append(Adapted(file_name, path, part, Target(path, "norm", 0, 0.0), adapter,
                                            blocks.block_index(file_name, self.arch)))

    # -- parameters ---------------------------------------------------------------------------------
    def parameters(self, part_prefix: str) -> Iterator[torch.nn.Parameter]:
        """Trainable adapter parameters of the UNet ("unet") or text encoders ("te"); "" = all."""
        for e in self.entries:
            if e.part.startswith(part_prefix):
                yield from e.module.parameters()

    def n_parameters(self) -> int:
        return sum(p.numel() for e in self.entries for p in e.module.parameters())

    def param_groups(self, unet_lr: float, text_encoder_lr: float,
                     llm_adapter_lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer groups as kohya forms them: per UNet block when block lr weights are set, and with LoRA+ a
        second group per part for lora_up at lr × ratio. Parts with lr 0 are left out (and frozen). The LLM
        adapter's adapters get their own group at `llm_adapter_lr` (None: the UNet's lr), as sd-scripts'."""
        s = self.spec
        groups: dict[tuple[str, int, bool], dict[str, Any]] = {}
        for e in self.entries:
            unet = e.part == "unet"
            if e.part == "llm_adapter":  # in the denoiser, but its own lr
                part, lr, block = "llm_adapter", unet_lr if llm_adapter_lr is None else llm_adapter_lr, -1
                ratio = s.loraplus_unet_lr_ratio or s.loraplus_lr_ratio
            else:
                part = "unet" if unet else "text_encoder"
                ratio = (s.loraplus_unet_lr_ratio if unet else s.loraplus_text_encoder_lr_ratio) or s.loraplus_lr_ratio
                block = e.block if unet and self.plan.lr_weight is not None else -1
                lr = (unet_lr if unet else text_encoder_lr) * (self.plan.lr_multiplier(block) if unet else 1.0)
            for pname, p in e.module.named_parameters():
                plus = ratio is not None and "lora_up" in pname
                g_lr = lr * ratio if plus else lr
                if g_lr == 0:
                    p.requires_grad_(False)
                    continue
                key = (part, block, plus)
                if key not in groups:
                    name = part + (f"_block{block:02d}" if block >= 0 else "") + ("_plus" if plus else "")
                    groups[key] = {"params": [], "lr": g_lr, "name": name}
                groups[key]["params"].append(p)
        order = sorted(groups, key=lambda k: (k[0] != "unet", k[0] != "llm_adapter", k[1], k[2]))
        return [groups[k] for k in order]

    def set_enabled(self, enabled: bool) -> None:
        """Adapters on or off (off: every layer runs its own forward, the base model bit for bit)."""
        if enabled == self.enabled:
            return
        for e in self.entries:
            e.module.apply_to() if enabled else e.module.restore()
        self.enabled = enabled

    # -- files --------------------------------------------------------------------------------------
    @torch.no_grad()
    def kohya_state_dict(self, dtype: torch.dtype = torch.float16,
                         exact: dict[int, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The adapters as a kohya/LyCORIS file's tensors. `exact` maps id(parameter) to a more precise copy of
        it to write instead (full_bf16's fp32 masters, or the EMA's shadows)."""
        out: dict[str, torch.Tensor] = {}
        for e in self.entries:
            swapped = []
            if exact:
                for p in e.module.parameters():
                    if id(p) in exact:
                        swapped.append((p, p.data))
                        p.data = exact[id(p)].to(p.device)
            try:
                for k, v in e.module.state_dict().items():
                    # a copy even where the dtype and device match: a background writer reads it during later steps
                    out[f"{e.file_name}.{k}"] = v.detach().to("cpu", dtype, copy=True).contiguous()
            finally:
                for p, data in swapped:
                    p.data = data
        return out
