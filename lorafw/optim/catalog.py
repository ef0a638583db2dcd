"""What each optimizer and scheduler accepts, as plain tables (no torch import).

The config validator checks a run against these before anything heavy is imported; a test
checks every entry against the real class signature so the tables cannot drift from the
libraries.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OptimizerInfo:
    cls_path: str  # "module:Class", imported only when the optimizer is built
    n_betas: int
    args: frozenset[str]  # extra keyword arguments allowed in `optimizer.args`
    package: str  # pip package that provides it, for the error message when missing


OPTIMIZERS: dict[str, OptimizerInfo] = {
    "adamw": OptimizerInfo(
        "torch.optim:AdamW", 2, frozenset({"eps", "amsgrad", "maximize", "foreach", "capturable", "fused"}), "torch"
    ),
    "adamw8bit": OptimizerInfo(
        "bitsandbytes.optim:AdamW8bit",
        2,
        frozenset({"eps", "amsgrad", "optim_bits", "min_8bit_size", "is_paged"}),
        "bitsandbytes",
    ),
    "prodigy": OptimizerInfo(
        "prodigyopt:Prodigy",
        2,
        frozenset(
            {
                "beta3", "eps", "decouple", "use_bias_correction", "safeguard_warmup",
                "d0", "d_coef", "growth_rate", "fsdp_in_use", "slice_p",
            }
        ),
        "prodigyopt",
    ),
    "came": OptimizerInfo("came_pytorch:CAME", 3, frozenset({"eps", "clip_threshold"}), "came-pytorch"),
}


# Scheduler name → the keys of `scheduler.*` it uses (besides `name`).
SCHEDULERS: dict[str, frozenset[str]] = {
    "constant": frozenset(),
    "constant_with_warmup": frozenset({"warmup_ratio"}),
    "cosine_with_restarts": frozenset({"warmup_ratio", "num_cycles"}),
    "rex": frozenset({"warmup_ratio", "min_lr", "d", "gamma", "num_cycles"}),
}
