"""What each optimizer and scheduler accepts, as plain tables (no torch import): the values `optimizer.name`,
`optimizer.args`, `scheduler.name` and the `scheduler.*` keys may take, so they sit with the rest of the config.

The config validator checks a run against these before anything heavy is imported, and lorafw/optim/ builds
what they name; a test checks every entry against the real class signature so the tables cannot drift from
the libraries. `kohya` lists the
`optimizer_type` spellings sd-scripts and the GUIs write (matched without case), for the importer.

Packages (pyproject says why each is a dependency): torch (AdamW, SGD), bitsandbytes (8-bit and paged
AdamW/Lion, Lion, 8-bit SGD; it runs them on CPUs too, unpaged), prodigyopt, came-pytorch, dadaptation
(Facebook Research's D-Adaptation, what kohya imports), schedulefree (Facebook Research's Schedule-Free),
transformers (Adafactor).
bitsandbytes' SGD8bit accepts nesterov and ignores it, so sgd_nesterov8bit (kohya's SGDNesterov8bit) is 8-bit
momentum SGD, exactly as under kohya.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lorafw.config.spec import OptimizerSpec, SchedulerSpec


@dataclass(frozen=True)
class OptimizerInfo:
    cls_path: str  # "module:Class", imported only when the optimizer is built
    package: str  # pip package that provides it, for the error message when missing
    n_betas: int  # how many betas it takes (0: none; optimizer.betas is not passed)
    args: dict[str, Any]  # keyword arguments allowed in `optimizer.args`, with the library's defaults
    kohya: tuple[str, ...] = ()  # optimizer_type spellings (lower case) that mean this optimizer
    fixed: dict[str, Any] = field(default_factory=dict)  # always passed (SGDNesterov: nesterov=True)
    defaults: dict[str, Any] = field(default_factory=dict)  # passed unless optimizer.args sets them (kohya's)
    adaptive: bool = False  # D-Adaptation / Prodigy: lr is a multiplier near 1.0, one lr for every group
    schedule_free: bool = False  # needs optimizer.train()/eval() around evaluation and saving; no lr schedule


_EPS = {"eps": 1e-8}
_BNB = {"optim_bits": 32, "min_8bit_size": 4096}
_DADAPT = {"log_every": 0, "decouple": False, "use_bias_correction": False, "d0": 1e-6, "growth_rate": float("inf"),
           "fsdp_in_use": False}

OPTIMIZERS: dict[str, OptimizerInfo] = {
    "adamw": OptimizerInfo("torch.optim:AdamW", "torch", 2,
                           {**_EPS, "amsgrad": False, "maximize": False, "foreach": None, "capturable": False, "fused": None},
                           ("adamw", "torch.optim.adamw")),
    "adamw8bit": OptimizerInfo("bitsandbytes.optim:AdamW8bit", "bitsandbytes", 2,
                               {**_EPS, "amsgrad": False, **_BNB, "is_paged": False},
                               ("adamw8bit", "bitsandbytes.optim.adamw8bit")),
    "paged_adamw8bit": OptimizerInfo("bitsandbytes.optim:PagedAdamW8bit", "bitsandbytes", 2,
                                     {**_EPS, "amsgrad": False, **_BNB},
                                     ("pagedadamw8bit", "bitsandbytes.optim.pagedadamw8bit")),
    "lion": OptimizerInfo("bitsandbytes.optim:Lion", "bitsandbytes", 2, {**_BNB, "is_paged": False},
                          ("lion", "lion_pytorch.lion", "bitsandbytes.optim.lion")),
    "lion8bit": OptimizerInfo("bitsandbytes.optim:Lion8bit", "bitsandbytes", 2, {"min_8bit_size": 4096, "is_paged": False},
                              ("lion8bit", "bitsandbytes.optim.lion8bit")),
    "paged_lion8bit": OptimizerInfo("bitsandbytes.optim:PagedLion8bit", "bitsandbytes", 2, {"min_8bit_size": 4096},
                                    ("pagedlion8bit", "bitsandbytes.optim.pagedlion8bit")),
    "sgd_nesterov": OptimizerInfo("torch.optim:SGD", "torch", 0, {"momentum": 0.9, "dampening": 0.0, "maximize": False,
                                                                   "foreach": None},
                                  ("sgdnesterov",), fixed={"nesterov": True}, defaults={"momentum": 0.9}),
    "sgd_nesterov8bit": OptimizerInfo("bitsandbytes.optim:SGD8bit", "bitsandbytes", 0,
                                      {"momentum": 0.9, "dampening": 0.0, "min_8bit_size": 4096},
                                      ("sgdnesterov8bit",), fixed={"nesterov": True}, defaults={"momentum": 0.9}),
    "dadaptation": OptimizerInfo("dadaptation.experimental:DAdaptAdamPreprint", "dadaptation", 2,
                                 {"eps": 1e-8, "log_every": 0, "decouple": False, "d0": 1e-6, "growth_rate": float("inf")},
                                 ("dadaptation", "dadaptadampreprint"), adaptive=True),
    "dadapt_adam": OptimizerInfo("dadaptation:DAdaptAdam", "dadaptation", 2, {**_EPS, **_DADAPT},
                                 ("dadaptadam", "dadaptation.dadaptadam"), adaptive=True),
    "dadapt_lion": OptimizerInfo("dadaptation:DAdaptLion", "dadaptation", 2,
                                 {"log_every": 0, "d0": 1e-6, "fsdp_in_use": False},
                                 ("dadaptlion", "dadaptation.dadaptlion"), adaptive=True),
    "prodigy": OptimizerInfo("prodigyopt:Prodigy", "prodigyopt", 2,
                             {"beta3": None, "eps": 1e-8, "decouple": True, "use_bias_correction": False,
                              "safeguard_warmup": False, "d0": 1e-6, "d_coef": 1.0, "growth_rate": float("inf"),
                              "fsdp_in_use": False, "slice_p": 1},
                             ("prodigy", "prodigyopt.prodigy"), adaptive=True),
    "adafactor": OptimizerInfo("transformers.optimization:Adafactor", "transformers", 0,
                               {"eps": (1e-30, 1e-3), "clip_threshold": 1.0, "decay_rate": -0.8, "beta1": None,
                                "scale_parameter": True, "relative_step": True, "warmup_init": False},
                               ("adafactor", "transformers.optimization.adafactor"), defaults={"relative_step": True}),
    "came": OptimizerInfo("came_pytorch:CAME", "came-pytorch", 3, {"eps": (1e-30, 1e-16), "clip_threshold": 1.0},
                          ("came", "came_pytorch.came", "loraeasycustomoptimizer.came.came")),
    "schedulefree_adamw": OptimizerInfo("schedulefree:AdamWScheduleFree", "schedulefree", 2,
                                        {**_EPS, "warmup_steps": 0, "r": 0.0, "weight_lr_power": 2.0, "foreach": True},
                                        ("adamwschedulefree", "schedulefree.adamwschedulefree"), schedule_free=True),
    "schedulefree_radam": OptimizerInfo("schedulefree:RAdamScheduleFree", "schedulefree", 2,
                                        {**_EPS, "r": 0.0, "weight_lr_power": 2.0, "foreach": True, "silent_sgd_phase": True},
                                        ("radamschedulefree", "schedulefree.radamschedulefree"), schedule_free=True),
}


def kohya_aliases() -> dict[str, str]:
    """kohya optimizer_type (lower case) → lorafw optimizer name."""
    return {alias: name for name, info in OPTIMIZERS.items() for alias in info.kohya}


def is_class_path(name: str) -> bool:
    """`module.Class` (kohya's "any optimizer" form) rather than a catalog name."""
    return "." in name and name not in OPTIMIZERS


_W = frozenset({"warmup_ratio", "warmup_steps"})
# Scheduler name → the `scheduler.*` keys it reads (besides name). The formulas are lorafw/optim/schedulers.py's
# (tested against diffusers' and transformers' implementations); `adafactor` is transformers' AdafactorSchedule.
SCHEDULERS: dict[str, frozenset[str]] = {
    "constant": frozenset(),
    "constant_with_warmup": _W,
    "linear": _W,
    "cosine": _W,
    "cosine_with_restarts": _W | {"num_cycles"},
    "polynomial": _W | {"power", "min_lr"},
    "piecewise_constant": frozenset({"step_rules"}),
    "cosine_with_min_lr": _W | {"num_cycles", "min_lr_ratio"},
    "warmup_stable_decay": _W | {"decay_ratio", "num_cycles", "min_lr_ratio"},
    "rex": _W | {"num_cycles", "min_lr", "d", "gamma"},
    "adafactor": frozenset(),
}

POLY_LR_END = 1e-7  # transformers' default lr_end for polynomial


def relative_step(spec: OptimizerSpec) -> bool:
    """Adafactor computes its own lr (kohya's default, and whenever warmup_init is on)."""
    if spec.name != "adafactor":
        return False
    return bool(spec.args.get("relative_step", True)) or bool(spec.args.get("warmup_init", False))


def parse_step_rules(rules: str) -> tuple[dict[int, float], float]:
    """diffusers' piecewise_constant rules 'MULT:STEP,...,LAST' → ({step: multiplier before it}, last multiplier)."""
    parts = [p.strip() for p in rules.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty; write e.g. '1:100,0.1:200,0.01'")
    out: dict[int, float] = {}
    try:
        for part in parts[:-1]:
            mult, step = part.split(":")
            out[int(step)] = float(mult)
        last = float(parts[-1])
    except ValueError:
        raise ValueError(f"{rules!r} is not 'MULT:STEP,...,LAST', e.g. '1:100,0.1:200,0.01'") from None
    return out, last


def scheduler_problems(spec: SchedulerSpec, lr: float | None) -> list[str]:
    """Problems only the formulas know about (lorafw/optim/schedulers.py's; config validation calls this)."""
    p = []
    if spec.warmup_ratio is not None and spec.warmup_steps is not None:
        p.append(f"scheduler.warmup_steps: set ({spec.warmup_steps}) together with scheduler.warmup_ratio="
                 f"{spec.warmup_ratio}; give the warmup one way, e.g. scheduler.warmup_ratio=null")
    if spec.name == "piecewise_constant":
        try:
            parse_step_rules(spec.step_rules or "")
        except ValueError as e:
            p.append(f"scheduler.step_rules: {e}")
    if spec.name == "polynomial" and lr is not None:
        end = POLY_LR_END if spec.min_lr is None else spec.min_lr
        if end >= lr:
            p.append(f"scheduler.min_lr: polynomial decays from the lr ({lr:g}) to min_lr ({end:g}), so it must be "
                     "smaller than the lr")
    if spec.name == "warmup_stable_decay" and spec.decay_ratio is None:
        p.append("scheduler.decay_ratio: warmup_stable_decay needs the fraction of steps spent decaying, e.g. 0.2")
    return p
