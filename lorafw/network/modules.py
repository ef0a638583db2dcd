"""The adapter of one layer: a LyCORIS module (its parameters, init and file keys are LyCORIS's own).

LoRA, LoCon and DoRA run in `KohyaLoCon`, LyCORIS's LoConModule with the forward kohya's networks/lora.py
has, because users' settings mean kohya's things there:
- network_dropout drops elements of the rank-r activation lora_down(x) (LyCORIS drops the adapter output);
- rank_dropout keeps each rank per sample with probability 1 − p and scales the update by 1/(1 − p);
- module_dropout skips the whole adapter for a step.
The update runs beside the frozen layer (y = W·x + up(down(x))·scale): no full-size weight is built, so
there is no full-size weight gradient either.

DoRA (LyCORIS's `weight_decompose`, norm per output channel) is y = c ⊙ (W·x + s·ΔW·x) + b with
c = m / (‖W + s·ΔW‖ + eps), the same function and gradients as LyCORIS's merged-weight forward. The norm
is computed from small matrices, ‖W_i + sΔ_i‖² = ‖W_i‖² + 2s·Σ_k U_ik (W Dᵀ)_ik + s²·U_i (D Dᵀ) U_iᵀ for
ΔW = U·D, with ‖W_i‖² computed once (W is frozen): one pass over W (W·Dᵀ) instead of building W + ΔW,
its norm and its full-size gradient on every forward. benchmarks/dora_cost.py measures it.

LoHa, LoKr, IA3 and GLoRA are LyCORIS's modules as they are (their dropouts are LyCORIS's, and so is
network.rank_dropout_scale: the kept part of ΔW divided by the fraction kept, or not rescaled without it).
network.train_norm's norms are LyCORIS's NormModule (`make_norm`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lycoris.modules import GLoRAModule, IA3Module, LohaModule, LokrModule
from lycoris.modules.locon import LoConModule
from lycoris.modules.norms import NormModule

from lorafw import speed
from lorafw.config.spec import NetworkSpec


class KohyaLoCon(LoConModule):
    """LyCORIS LoRA/LoCon/DoRA parameters, kohya's forward (see the module docstring)."""

    def __init__(self, lora_name: str, org_module: torch.nn.Module, lora_dim: int, alpha: float, *,
                 dropout: float = 0.0, rank_dropout: float = 0.0, module_dropout: float = 0.0,
                 use_tucker: bool = False, use_scalar: bool = False, weight_decompose: bool = False) -> None:
        super().__init__(lora_name, org_module, 1.0, lora_dim, alpha, dropout=0.0, rank_dropout=0.0, module_dropout=0.0,
                         use_tucker=use_tucker, use_scalar=use_scalar, weight_decompose=weight_decompose,
                         bypass_mode=False)
        self.p_dropout, self.p_rank, self.p_module = dropout, rank_dropout, module_dropout
        self._w_sq: torch.Tensor | None = None  # ‖W_i‖², per output channel
        self._w_key: tuple[int, int, torch.device, torch.dtype] | None = None
        self._unit_key: tuple[int, int, torch.device] | None = None  # the scalar buffer last seen to be 1
        self._wd_cache: tuple[tuple, torch.Tensor, torch.Tensor] | None = None  # (key, Dᵀ, W·Dᵀ): see _w_down

    # -- the rank-r path --------------------------------------------------------------------------
    def _lx(self, x: torch.Tensor) -> torch.Tensor:
        lx = self.lora_down(x)
        if self.tucker:
            lx = self.lora_mid(lx)
        return lx

    def _lx_dropped(self, x: torch.Tensor) -> tuple[torch.Tensor, float]:
        """dropouts(down(x)) and the update's scale (kohya's rank-dropout rescale included)."""
        # torch.is_autocast_enabled() without a device answers for CUDA only
        lever = speed.on("autocast_no_upcast")
        autocast = torch.is_autocast_enabled(x.device.type) if lever else torch.is_autocast_enabled()
        lx = self._lx(x.to(self.lora_down.weight.dtype) if not autocast else x)
        scale = self.scale
        if self.training and self.p_dropout:
            lx = F.dropout(lx, p=self.p_dropout)
        if self.training and self.p_rank:
            mask = (torch.rand((lx.size(0), self.lora_dim), device=lx.device) > self.p_rank).to(lx.dtype)
            if lx.dim() == 3:
                mask = mask.unsqueeze(1)  # (batch, tokens, rank)
            elif lx.dim() == 4:
                mask = mask[:, :, None, None]  # (batch, rank, h, w)
            lx = lx * mask
            scale = scale / (1.0 - self.p_rank)
        return lx, scale

    def _up(self, lx: torch.Tensor, factor: torch.Tensor | float, bias: torch.Tensor | None = None) -> torch.Tensor:
        """lora_up(lx) · factor (+ bias), the factor (a number or one per output channel) folded into the
        r-column weight so no extra pass over the layer's output is made."""
        w = self.lora_up.weight
        if torch.compiler.is_compiling() or not (speed.on("adapter_unit_scalar") and self._unit_scalar()):
            w = w * self.scalar.to(w.dtype)
        if isinstance(factor, torch.Tensor):
            w = w * factor.reshape(-1, *[1] * (w.dim() - 1)).to(w.dtype)
        else:
            w = w * factor
        if self.isconv:
            return F.conv2d(lx, w.to(lx.dtype), None if bias is None else bias.to(lx.dtype))
        return F.linear(lx, w.to(lx.dtype), None if bias is None else bias.to(lx.dtype))

    def _unit_scalar(self) -> bool:
        """True when `scalar` is LyCORIS's constant 1 (no use_scalar): multiplying by it changes no bit, so it is
        skipped. Checked again (one host read) only when the buffer is replaced, moved or written in place."""
        s = self.scalar
        if isinstance(s, torch.nn.Parameter):
            return False
        key = (s.data_ptr(), s._version, s.device)
        if key != self._unit_key:
            if s.numel() != 1 or float(s) != 1.0:
                return False
            self._unit_key = key
        return True

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.module_dropout_hit():
            return self.org_forward(x, *args, **kwargs)
        base = self.org_forward(x, *args, **kwargs)
        lx, scale = self._lx_dropped(x)
        if not self.wd:
            return base + self._up(lx, scale * self.multiplier).to(base.dtype)
        return self._dora(base, lx, scale)

    def module_dropout_hit(self) -> bool:
        return bool(self.training and self.p_module and torch.rand(1) < self.p_module)

    # -- DoRA -------------------------------------------------------------------------------------
    def _base_sq_norm(self) -> torch.Tensor:
        """‖W_i‖² in fp32, computed again only if the frozen weight is replaced or moved."""
        w = self._current_weight()
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if self._w_sq is None or self._w_key != key:
            self._w_sq = w.detach().float().reshape(w.shape[0], -1).pow(2).sum(1)
            self._w_key = key
        return self._w_sq

    def dora_column_scale(self, scale: float) -> torch.Tensor:
        """c = m / (‖W + s·ΔW‖ + eps) per output channel (differentiable in m, up and down; fp32)."""
        w = self._current_weight()
        out = w.shape[0]
        down = self.lora_down.weight.reshape(self.lora_dim, -1).float()
        up = (self.lora_up.weight.reshape(out, self.lora_dim) * self.scalar).float()
        if self.tucker:  # the merged Δ is not U·D here; build it (rare: use_tucker with DoRA)
            delta = self.get_diff_weight(1.0)[0].float().reshape(out, -1) / self.scale * scale
            sq = (w.detach().float().reshape(out, -1) + delta).pow(2).sum(1)
        else:
            wd = self._w_down(w.detach().reshape(out, -1), down)  # (out, r)
            gram = torch.mm(down, down.t())  # (r, r)
            sq = self._base_sq_norm() + 2 * scale * (up * wd).sum(1) + scale * scale * ((up @ gram) * up).sum(1)
        norm = sq.clamp_min(0).sqrt() + torch.finfo(torch.float32).eps
        c = self.dora_scale.reshape(out).float() / norm
        if self.multiplier != 1:
            c = self.multiplier * (c - 1) + 1
        return c

    @staticmethod
    def _norm_operands(w: torch.Tensor, down: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(W, Dᵀ) for W·Dᵀ. Under autocast mm runs in the autocast dtype whatever it is given: a W already in that
        dtype is used as it is (a view; autocast would cast an fp32 copy back to the same values, and keep that
        copy for the backward pass) and Dᵀ is cast as autocast casts it, so the product is bit-identical."""
        dev = w.device.type
        if (speed.on("autocast_no_upcast") and torch.is_autocast_enabled(dev)
                and w.dtype == torch.get_autocast_dtype(dev) and down.dtype == torch.float32):
            return w, down.t().to(w.dtype)
        return w.to(down.dtype), down.t()

    def _w_down(self, w: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
        """W·Dᵀ, the norm's one pass over the frozen weight. Gradient checkpointing runs each forward twice per
        step with the same D; the product is kept (one (out, r) tensor a layer) and the recompute reuses it."""
        a, b = self._norm_operands(w, down)
        if torch.compiler.is_compiling() or not speed.on("dora_norm_cache"):
            return torch.mm(a, b)
        dev = a.device.type
        if torch.is_autocast_enabled(dev):  # autocast's own casts, made here so the backward sees what mm saw
            dt = torch.get_autocast_dtype(dev)
            a, b = a.to(dt), b.to(dt)
        if not (b.stride(0) == 1 and b.stride(1) == b.size(0)):  # _CachedProduct's backward assumes a column-major b
            return torch.mm(a, b)
        key = (w.data_ptr(), self._current_weight()._version, a.dtype, b.dtype)
        return _CachedProduct.apply(a, b, self, key)

    def _dora(self, base: torch.Tensor, lx: torch.Tensor, scale: float) -> torch.Tensor:
        """y = c ⊙ (W·x + scale·up(lx)) + b = c ⊙ base + [up(lx)·scale·c + (1 − c)·b]: the bracket is one small-weight
        projection with a bias, then one multiply-add over the output. The norm uses the undropped weights at the
        layer's own scale."""
        c = self.dora_column_scale(self.scale)
        bias = self._current_bias()
        shift = self._up(lx, c * scale, None if bias is None else (1 - c) * bias.float()).to(base.dtype)
        return torch.addcmul(shift, base, c.reshape((1, -1, 1, 1) if self.isconv else (-1,)).to(base.dtype))


class _CachedProduct(torch.autograd.Function):
    """a·b for a frozen `a` and a column-major b (here Dᵀ), computed once for the same `a` (`key`: its storage and
    in-place version) and the same values of b (compared: bitsandbytes' optimizers update the adapter's weights
    without bumping their version, so a version cannot say whether D changed). The same values, and the same
    gradient for b as mm's own backward gives a column-major b (mm_mat2_backward: (gᵀ·a)ᵀ)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, owner: KohyaLoCon, key: tuple) -> torch.Tensor:  # noqa: ANN001
        cached = owner._wd_cache
        if cached is None or cached[0] != key or not torch.equal(cached[1], b):
            cached = owner._wd_cache = (key, b.detach().clone(), torch.mm(a, b))
        ctx.save_for_backward(a)
        return cached[2].clone()  # a new tensor each call: the graph of one forward never reaches another's

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: ANN001
        if not ctx.needs_input_grad[1]:
            return None, None, None, None
        (a,) = ctx.saved_tensors
        return None, g.t().mm(a).t(), None, None


LYCORIS = {"loha": LohaModule, "lokr": LokrModule, "ia3": IA3Module, "glora": GLoRAModule}


def make(algo: str, name: str, layer: torch.nn.Module, rank: int, alpha: float, spec: Any) -> torch.nn.Module:
    """The adapter module of one layer for `network.algo` (not yet applied)."""
    if algo in ("lora", "locon"):
        return KohyaLoCon(name, layer, rank, alpha, dropout=spec.dropout, rank_dropout=spec.rank_dropout,
                          module_dropout=spec.module_dropout, use_tucker=spec.use_tucker, use_scalar=spec.use_scalar,
                          weight_decompose=spec.dora_wd)
    cls = LYCORIS[algo]
    kwargs: dict[str, Any] = dict(multiplier=1.0, lora_dim=rank, alpha=alpha, dropout=spec.dropout,
                                  rank_dropout=spec.rank_dropout, module_dropout=spec.module_dropout, bypass_mode=False,
                                  rank_dropout_scale=spec.rank_dropout_scale)
    if algo in ("loha", "lokr"):
        kwargs.update(use_tucker=spec.use_tucker, use_scalar=spec.use_scalar, weight_decompose=spec.dora_wd)
    if algo == "lokr":
        kwargs.update(factor=spec.factor, decompose_both=spec.decompose_both, full_matrix=spec.full_matrix)
    if algo == "ia3":
        kwargs.update(train_on_input=spec.train_on_input)
    return cls(name, layer, **kwargs)


def make_norm(name: str, layer: torch.nn.Module, spec: NetworkSpec) -> NormModule:
    """network.train_norm's adapter of one LayerNorm/GroupNorm: LyCORIS's NormModule (a trainable difference of the
    layer's weight and bias, `w_norm`/`b_norm`, starting at zero), built with the dropouts LyCORIS's kohya network
    gives it (its rank_dropout keeps elements of the difference; it takes no rank_dropout_scale)."""
    return NormModule(name, layer, 1.0, rank_dropout=spec.rank_dropout, module_dropout=spec.module_dropout)
