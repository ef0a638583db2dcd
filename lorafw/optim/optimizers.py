"""Build the optimizer a spec names, from the library that provides it (catalog.py says which)."""

from __future__ import annotations

import importlib
from typing import Any

from lorafw.config.spec import OptimizerSpec
from lorafw.errors import ConfigError
from lorafw.optim.catalog import OPTIMIZERS


def optimizer_class(name: str) -> Any:
    info = OPTIMIZERS[name]
    module, _, attr = info.cls_path.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError:
        raise ConfigError([f"optimizer.name={name} needs the {info.package} package: pip install {info.package}"]) from None


def optimizer_kwargs(spec: OptimizerSpec) -> dict[str, Any]:
    """Keyword arguments for the optimizer class (lists become tuples where the library wants tuples)."""
    kwargs: dict[str, Any] = {"weight_decay": spec.weight_decay, "betas": tuple(spec.betas)}
    for k, v in spec.args.items():
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return kwargs


def build_optimizer(spec: OptimizerSpec, param_groups: list[dict[str, Any]]) -> Any:
    """`param_groups`: [{"params": [...], "lr": ...}, ...] (UNet and text-encoder groups with their own lr)."""
    cls = optimizer_class(spec.name)
    kwargs = optimizer_kwargs(spec)
    if spec.name == "adamw" and not {"foreach", "fused"} & set(kwargs):
        kwargs["fused"] = fused_ok(param_groups)
    return cls(param_groups, lr=spec.lr, **kwargs)


def fused_ok(param_groups: list[dict[str, Any]]) -> bool:
    """torch's fused AdamW (one kernel for every tensor; same maths as the default foreach path within float
    rounding) takes floating-point parameters on one CPU or CUDA device."""
    params = [p for g in param_groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) \
        and len({p.device for p in params}) == 1


def describe(spec: OptimizerSpec) -> str:
    """`bitsandbytes.optim.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))`, kohya's ss_optimizer style."""
    module, _, attr = OPTIMIZERS[spec.name].cls_path.partition(":")
    args = ",".join(f"{k}={v}" for k, v in optimizer_kwargs(spec).items())
    return f"{module}.{attr}({args})"
