"""Build the optimizer a spec names: a catalog entry (catalog.py says which library) or any `module.Class`.

kohya's rules are kept: SGDNesterov gets nesterov=True and momentum 0.9 unless given; Adafactor defaults to
relative_step=True, and then its lr is None and the `adafactor` scheduler reads the lr it computes (config
validation switches the scheduler, as kohya does, with a note); D-Adaptation and Prodigy take the lr as a
multiplier near 1.0. Schedule-free optimizers keep two copies of the weights: training steps the "train"
point, while sampling, validation and the saved LoRA files use the "eval" (averaged) point —
`evaluation_weights` switches around those, and `train_mode` before stepping.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
from typing import Any, Iterator

from lorafw.config.catalog import OPTIMIZERS, relative_step
from lorafw.config.spec import OptimizerSpec
from lorafw.errors import ConfigError


def optimizer_class(name: str) -> Any:
    """The class a catalog name or `module.Class` names; a ConfigError naming the package when it is missing."""
    if name in OPTIMIZERS:
        info = OPTIMIZERS[name]
        module, _, attr = info.cls_path.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError:
            raise ConfigError([f"optimizer.name={name} needs the {info.package} package: pip install {info.package}"]) from None
    module, _, attr = name.rpartition(".")
    if not module:
        raise ConfigError([f"optimizer.name: unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}, "
                           "or give any optimizer class as module.Class"])
    try:
        return getattr(importlib.import_module(module), attr)
    except ImportError as e:
        raise ConfigError([f"optimizer.name: cannot import {module!r} for {name} ({e}); install the package that "
                           "provides it, or choose one of: " + ", ".join(OPTIMIZERS)]) from None
    except AttributeError:
        raise ConfigError([f"optimizer.name: {module} has no {attr!r}"]) from None


def optimizer_kwargs(spec: OptimizerSpec, cls: Any | None = None) -> dict[str, Any]:
    """Keyword arguments for the optimizer class (lists become tuples where the library wants tuples).

    For a `module.Class`, weight_decay and betas are passed only if the class takes them."""
    kwargs: dict[str, Any] = {}
    info = OPTIMIZERS.get(spec.name)
    if info is not None:
        kwargs["weight_decay"] = spec.weight_decay
        if info.n_betas:
            kwargs["betas"] = tuple(spec.betas)
        kwargs.update(info.defaults)
    else:
        params = inspect.signature(cls).parameters if cls is not None else {}
        if "weight_decay" in params:
            kwargs["weight_decay"] = spec.weight_decay
        if "betas" in params:
            kwargs["betas"] = tuple(spec.betas)
    for k, v in spec.args.items():
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    if info is not None:
        kwargs.update(info.fixed)
    return kwargs


def build_optimizer(spec: OptimizerSpec, param_groups: list[dict[str, Any]]) -> Any:
    """`param_groups`: [{"params": [...], "lr": ...}, ...] (UNet and text-encoder groups with their own lr)."""
    cls = optimizer_class(spec.name)
    kwargs = optimizer_kwargs(spec, cls)
    lr: float | None = spec.lr
    if spec.name == "adamw" and not {"foreach", "fused"} & set(kwargs):
        kwargs["fused"] = fused_ok(param_groups)
    if relative_step(spec):
        kwargs["relative_step"] = True
        lr = None
        param_groups = [{k: v for k, v in g.items() if k != "lr"} for g in param_groups]
    try:
        optimizer = cls(param_groups, lr=lr, **kwargs)
    except TypeError as e:
        raise ConfigError([f"optimizer.args: {spec.name} does not take {sorted(kwargs)}: {e}"]) from None
    train_mode(optimizer)  # schedule-free optimizers start in eval mode and refuse to step there
    return optimizer


def fused_ok(param_groups: list[dict[str, Any]]) -> bool:
    """torch's fused AdamW (one kernel for every tensor; same maths as the default foreach path within float
    rounding) takes floating-point parameters on one CPU or CUDA device."""
    params = [p for g in param_groups for p in g["params"]]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) \
        and len({p.device for p in params}) == 1


def describe(spec: OptimizerSpec) -> str:
    """`bitsandbytes.optim.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))`, kohya's ss_optimizer style."""
    if spec.name in OPTIMIZERS:
        module, _, attr = OPTIMIZERS[spec.name].cls_path.partition(":")
        kwargs = optimizer_kwargs(spec)
    else:
        module, _, attr = spec.name.rpartition(".")
        kwargs = dict(spec.args)
    args = ",".join(f"{k}={v}" for k, v in kwargs.items())
    return f"{module}.{attr}({args})"


def _inner(optimizer: Any) -> Any:
    """The library optimizer under accelerate's AcceleratedOptimizer wrapper."""
    return getattr(optimizer, "optimizer", optimizer)


def is_schedule_free(optimizer: Any) -> bool:
    """Schedule-free optimizers (and any optimizer with their train()/eval() switch)."""
    inner = _inner(optimizer)
    return callable(getattr(inner, "train", None)) and callable(getattr(inner, "eval", None)) \
        and any("train_mode" in g for g in inner.param_groups)


def train_mode(optimizer: Any) -> None:
    """Put a schedule-free optimizer's weights at the point it steps from (a no-op for other optimizers)."""
    if is_schedule_free(optimizer):
        _inner(optimizer).train()


@contextlib.contextmanager
def evaluation_weights(optimizer: Any) -> Iterator[None]:
    """Within: the weights a schedule-free optimizer is evaluated at (its average); after: back to training."""
    if optimizer is None or not is_schedule_free(optimizer):
        yield
        return
    inner = _inner(optimizer)
    was_training = any(g.get("train_mode") for g in inner.param_groups)
    params = [p for g in inner.param_groups for p in g["params"]]
    import torch

    kept = [p.detach().clone() for p in params] if was_training else []  # eval()/train() round trips inexactly
    inner.eval()
    try:
        yield
    finally:
        if was_training:
            inner.train()
            with torch.no_grad():
                for p, v in zip(params, kept):
                    p.copy_(v)  # training continues from exactly where it was


def text_encoder_stop_step(spec: OptimizerSpec, total_steps: int) -> int | None:
    """The optimizer step from which the text encoder(s) no longer train (kohya's stop_text_encoder_training:
    a step count, or here also a fraction of all steps); None = they train throughout."""
    v = spec.stop_text_encoder_training
    if v is None or not spec.text_encoder_lr:
        return None
    return int(v) if v >= 1 else int(v * total_steps)
