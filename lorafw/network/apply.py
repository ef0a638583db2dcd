"""Apply a LoRA file to a model at a weight the way the UIs do: patch the weights, W + w·(W_full − W).

A1111/Forge and ComfyUI merge a LoRA into the layer weights rather than running adapters: for LoRA and
LoCon W_full = W + ΔW (ΔW = up·down·alpha/rank; LoHa/LoKr/GLoRA/IA3 ΔW from LyCORIS's own rebuild), for DoRA
W_full = the decomposed weight as the chosen UI computes it (network/dora.py), and a weight w ≠ 1
interpolates, W + w·(W_full − W). `lorafw grid` renders with this, so its images are what users will see;
at w = 0 the model is the base model, bit for bit.
"""

from __future__ import annotations

from typing import Callable, cast

import torch

from lorafw.network.dora import UI, patched
from lorafw.network.targets import kohya_name, te_module_path


def delta_weight(down: torch.Tensor, up: torch.Tensor, alpha: float, mid: torch.Tensor | None = None) -> torch.Tensor:
    """ΔW of one kohya-format layer: (out, in) for Linear, (out, in, k, k) for convolutions."""
    rank = down.shape[0]
    scale = alpha / rank
    if mid is not None:  # LoCon with Tucker: lora_down 1×1, lora_mid k×k, lora_up 1×1
        from lycoris.functional.general import rebuild_tucker

        return rebuild_tucker(mid, up.flatten(1).t(), down.flatten(1)) * scale  # (rank, out), as LyCORIS passes it
    if down.ndim == 2:
        return (up @ down) * scale
    return (up.flatten(1) @ down.flatten(1)).reshape(up.shape[0], *down.shape[1:]) * scale


def layer_delta(lora: dict[str, torch.Tensor], name: str, layer: torch.nn.Module) -> torch.Tensor | None:
    """ΔW (fp32, the layer's weight shape) of one layer of a LoRA/LyCORIS file; None when the reader ignores it."""
    w = layer.weight
    get = lambda k: lora.get(f"{name}.{k}")  # noqa: E731
    if get("lora_down.weight") is not None:
        down, up, mid = get("lora_down.weight"), get("lora_up.weight"), get("lora_mid.weight")
        alpha = float(get("alpha")) if get("alpha") is not None else float(down.shape[0])
        return delta_weight(down.float().to(w.device), up.float().to(w.device), alpha,
                            None if mid is None else mid.float().to(w.device)).reshape(w.shape)
    module = rebuild(lora, name, layer).to(w.device).float()
    if type(module).__name__ in ("LohaModule", "LokrModule"):
        # their forward's ΔW (alpha/dim once, as ComfyUI and A1111 compute it); LyCORIS 4.1's get_diff_weight
        # applies alpha/dim a second time
        diff = module.get_weight(module.shape) * module.scalar
    else:
        diff = module.get_diff_weight(1.0, w.shape, w.device)[0]
    return diff.float().reshape(w.shape)


def rebuild(lora: dict[str, torch.Tensor], name: str, layer: torch.nn.Module) -> torch.nn.Module:
    """LyCORIS's own loader for one layer (lycoris.modules.get_module + make_module). IA3 is built directly:
    LyCORIS 4.1's generic path passes IA3's `on_input` flag to a constructor that takes only the weight."""
    from lycoris.modules import IA3Module, LokrModule, get_module, make_module

    cls, params = get_module(lora, name)
    if cls is None:
        raise KeyError(f"{name}: no LoRA or LyCORIS tensors this reader knows")
    if cls is IA3Module:
        weight, on_input = params
        module = IA3Module(name, layer, 1, train_on_input=bool(on_input))
        module.weight.data.copy_(weight)
        return module
    if cls is LokrModule and lora.get(f"{name}.lokr_t2") is not None:
        return _tucker_lokr(lora, name, layer)
    module = make_module(cls, params, name, layer)
    if module is None:
        raise KeyError(f"{name}: {cls.__name__} cannot be rebuilt from the file")
    return module


def _tucker_lokr(lora: dict[str, torch.Tensor], name: str, layer: torch.nn.Module) -> torch.nn.Module:
    """A LoKr layer with a Tucker core (k×k convolutions, `lokr_t2`). LyCORIS 4.1's make_module_from_state_dict
    reads the rank and w2's shape as if lokr_w2_a were (out, rank), but with lokr_t2 it is (rank, out) (as LyCORIS
    writes it): it builds a full-matrix module and fails. Here the rank is lokr_t2's, and the factor the one that
    gives the file's shapes."""
    from lycoris.modules import LokrModule

    own = {k[len(name) + 1:]: v for k, v in lora.items() if k.startswith(name + ".")}
    shapes = {k: tuple(v.shape) for k, v in own.items() if k.startswith("lokr_")}
    candidates = dict.fromkeys([-1, *(d for sh in shapes.values() for d in sh[:2])])
    for factor in candidates:
        module = LokrModule(name, layer, 1, own["lokr_t2"].shape[0], float(own.get("alpha", own["lokr_t2"].shape[0])),
                            use_tucker=True, decompose_both="lokr_w1_a" in own, factor=factor,
                            weight_decompose="dora_scale" in own)
        mine = module.state_dict()
        if all(k in mine and tuple(mine[k].shape) == sh for k, sh in shapes.items()):
            with torch.no_grad():
                for k, v in own.items():
                    if k.startswith("lokr_") or k == "dora_scale":
                        getattr(module, k).copy_(v)
            return module
    raise KeyError(f"{name}: no LoKr factorisation of {tuple(layer.weight.shape)} gives the file's shapes {shapes}")


def module_names(unet: torch.nn.Module, text_encoders: list[torch.nn.Module], te_prefixes: tuple[str, ...] | list[str],
                 unet_name: Callable[[str], str] | None = None,
                 te_names: list[Callable[[str], str]] | None = None) -> dict[str, torch.nn.Module]:
    """Every Linear/Conv2d of the model under the name a LoRA file gives it (`lora_unet_…`, `lora_te…`): the
    denoiser's through the family's `unet_name` (default: diffusers paths), the text encoders' under `te_prefixes`
    (through `te_names`, one per encoder, where the family names them itself)."""
    name = unet_name or (lambda p: kohya_name("lora_unet", p))
    out: dict[str, torch.nn.Module] = {}
    for path, m in unet.named_modules():  # (norms: network.train_norm's w_norm/b_norm)
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.LayerNorm, torch.nn.GroupNorm)):
            try:
                out[name(path)] = m
            except KeyError:  # a layer the original layout has no name for
                continue
    for i, (prefix, te) in enumerate(zip(te_prefixes, text_encoders)):
        te_name = te_names[i] if te_names else (lambda p, pre=prefix: kohya_name(pre, te_module_path(p)))
        for path, m in te.named_modules():
            if isinstance(m, torch.nn.Linear):
                out[te_name(path)] = m
    return out


class WeightPatcher:
    """Puts a LoRA file into a model at a weight, and takes it out again (the originals are kept).

    `ui` picks whose DoRA maths to use (network/dora.py) and whether IA3 files count: ComfyUI ignores them."""

    def __init__(self, modules: dict[str, torch.nn.Module], ui: UI = "exact") -> None:
        self.modules = modules
        self.ui = ui
        self.originals: dict[str, torch.Tensor] = {}
        self.original_biases: dict[str, torch.Tensor] = {}

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
        if self.ui == "comfyui" and any(k.endswith(".on_input") for k in lora):
            return 0  # ComfyUI's loader has no IA3: it renders the base model
        for n in names:
            m = self.modules[n]
            w = m.weight
            self.originals[n] = w.detach().clone()
            if f"{n}.w_norm" in lora:
                self._patch_norm(lora, n, m, weight)
                continue
            delta = layer_delta(lora, n, m)
            dora = lora.get(f"{n}.dora_scale")
            new = patched(w, delta, weight, None if dora is None else dora.to(w.device), self.ui)
            w.copy_(new.to(w.dtype))
        return len(names)

    def _patch_norm(self, lora: dict[str, torch.Tensor], n: str, m: torch.nn.Module, weight: float) -> None:
        """A trained norm (network.train_norm): W + w·w_norm, b + w·b_norm, ComfyUI's "diff" patch and LyCORIS's."""
        w, bias = cast(torch.Tensor, m.weight), cast("torch.Tensor | None", getattr(m, "bias", None))
        w.add_(lora[f"{n}.w_norm"].to(w.device, w.dtype).reshape(w.shape), alpha=weight)
        b_norm = lora.get(f"{n}.b_norm")
        if b_norm is not None and bias is not None:
            self.original_biases[n] = bias.detach().clone()
            bias.add_(b_norm.to(bias.device, bias.dtype).reshape(bias.shape), alpha=weight)

    @torch.no_grad()
    def restore(self) -> None:
        for n, original in self.originals.items():
            self.modules[n].weight.copy_(original)
        for n, original in self.original_biases.items():
            cast(torch.Tensor, self.modules[n].bias).copy_(original)
        self.originals.clear()
        self.original_biases.clear()
