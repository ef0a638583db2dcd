"""`lorafw [train] +recipe=NAME key=value ...`: training through Hydra's own main, checked before Hydra starts.

    lorafw +recipe=sd15_character base_model.path=M dataset.root=D     train (Hydra overrides)
    lorafw -m +recipe=sd15_character optimizer.lr=1e-4,5e-4             a sweep, one folder per job
    lorafw +recipe=pdxl --cfg job                                      print the resolved config

Before Hydra starts, the flags are checked against Hydra's own parser and every job of the command line
is composed and validated (no torch, no weights): a typo, a missing folder or a malformed recipe file is
one message listing every problem, not a traceback after the models have loaded. `--cfg job|hydra|all`
goes through the same checks (only the file-system ones are skipped: a recipe can be shown without a
model). Hydra is then run with HYDRA_FULL_ERROR=1 so that whatever it still raises reaches us as an
exception with its fields (explained by config/problems.py), never as Hydra's own printout.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Callable

from lorafw.cli import print_help
from lorafw.cli.args import unknown_flag
from lorafw.config.schema import REQUIRED
from lorafw.config.shipped import conf_dir
from lorafw.errors import ConfigError, LorafwError, UsageError

# Hydra, the config and the run are imported inside the functions that use them (on purpose): every command
# imports this module (commands.py shares fail and print_result), and `lorafw keys` must not load them.

log = logging.getLogger("lorafw")

_OTHER_PRIMARY = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
_PRINT_ONLY = ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version")


def fail(e: LorafwError) -> int:
    print(f"lorafw: {e}", file=sys.stderr)
    return e.exit_code


def hydra_flags() -> dict[str, Any]:
    """Hydra's own flags (`--cfg`, `-m`, `--info` …) → their argparse actions, from Hydra's parser itself."""
    from hydra._internal.utils import get_args_parser  # the parser @hydra.main uses (Hydra 1.3)

    return {s: a for a in get_args_parser()._actions for s in a.option_strings}


def split_argv(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """(overrides, hydra flags with their values, only_prints) of a Hydra command line."""
    actions = hydra_flags()
    overrides, flags = [], []
    prints = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-"):  # overrides never start with "-" (they are key=v, +key=v, ~key)
            flag = a.split("=", 1)[0]
            flags.append(a)
            prints = prints or flag in _PRINT_ONLY or flag in ("--cfg", "-c")
            action = actions.get(flag)
            takes = action is not None and action.nargs != 0
            optional = action is not None and action.nargs == "?"
            if takes and "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("-") and (
                    not optional or "=" not in argv[i + 1]):
                flags.append(argv[i + 1])
                i += 1
        else:
            overrides.append(a)
        i += 1
    return overrides, flags, prints


def check_flags(argv: list[str]) -> None:
    """Refuse a flag Hydra does not have (`--cgf`) or a value it does not take (`--cfg jb`), by name."""
    actions = hydra_flags()
    _, flags, _ = split_argv(argv)
    i = 0
    while i < len(flags):
        a = flags[i]
        name, _, value = a.partition("=")
        action = actions.get(name)
        if action is None:
            raise UsageError(unknown_flag(name, [s for s in actions if s not in ("--version",)], "lorafw"))
        if action.nargs != 0 and not value and i + 1 < len(flags) and not flags[i + 1].startswith("-"):
            value = flags[i + 1]
            i += 1
        if action.choices and value and value not in action.choices:
            raise UsageError(f"{name} {value}: choose one of {', '.join(action.choices)}")
        if action.nargs is None and not value:
            raise UsageError(f"{name} needs a value" + (f": one of {', '.join(action.choices)}" if action.choices else ""))
        i += 1


def _shown_only(data: dict) -> dict:
    """A composed config with unset required values (`???`) filled in, so that `--cfg job` validates the rest."""
    def fill(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: fill(v) for k, v in x.items()}
        if isinstance(x, list):
            return [fill(v) for v in x]
        return "(unset)" if x == REQUIRED else x

    out = fill(data)
    ds = out.get("dataset")
    if isinstance(ds, dict) and ds.get("root") is None and not ds.get("folders"):
        out["dataset"] = dict(ds, root="(unset)")  # the dataset is required like base_model.path: shown unset
    return out


def precheck(argv: list[str]) -> None:
    """Compose and validate every job before Hydra starts; notes go to stderr. Raises ConfigError / UsageError."""
    from lorafw.config.compose import check_all, compose_dict, expand_sweep
    from lorafw.config.validate import spec_from_dict

    check_flags(argv)
    overrides, flags, prints = split_argv(argv)
    multirun = any(f in ("-m", "--multirun") for f in flags)
    if any(o.startswith("hparams_search=") and not o.endswith("=null") for o in overrides) and not multirun:
        raise ConfigError(["hparams_search: a search runs many jobs; add -m (lorafw -m hparams_search=optuna ...)"])
    if any(f.split("=")[0] in _OTHER_PRIMARY for f in flags):
        return  # another primary config: not lorafw's schema
    names = {f.split("=")[0] for f in flags}
    if prints and not names & {"--cfg", "-c"}:
        return  # --info, --hydra-help, --shell-completion: nothing is composed for a run
    ours = [o for o in overrides if not o.lstrip("+~").startswith("hydra/")]
    jobs = expand_sweep(ours)
    if names & {"--cfg", "-c"}:  # showing: the same checks as a run, except the files (a recipe shows without a model)
        problems: list[str] = []
        for job in jobs:
            try:
                spec_from_dict(_shown_only(compose_dict(None, job)), check_paths=False)
            except ConfigError as e:
                label = f"[{' '.join(job)}] " if len(jobs) > 1 else ""
                problems += [label + p for p in e.problems if label + p not in problems]
        if problems:
            raise ConfigError(problems)
        return
    for note in check_all(jobs, multirun=multirun):
        print(f"lorafw: note: {note}", file=sys.stderr)


def sweep_dir_names(argv: list[str]) -> list[str]:
    """For `-m`: name each job's folder after the swept keys only (`0_optimizer.lr=0.0001,network.dim=8`),
    by adding every fixed key to Hydra's override_dirname exclusions."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    overrides, flags, _ = split_argv(argv)
    if not any(f in ("-m", "--multirun") for f in flags):
        return []
    ours = [o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]
    fixed = [o.key_or_group for o in OverridesParser.create().parse_overrides(ours) if not o.is_sweep_override()]
    base = OmegaConf.load(conf_dir() / "config.yaml").hydra.job.config.override_dirname.exclude_keys
    keys = list(dict.fromkeys([*base, *fixed]))
    return [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(keys)}]"]


def hydra_main(argv: list[str]) -> int:
    """Train (or, with --cfg, show) what a Hydra command line describes; 0, or an exit code after one message."""
    from lorafw.config.compose import with_recipe_files

    overrides, _flags, _ = split_argv(argv)
    if any(o.startswith("resume=") and o != "resume=null" for o in overrides):
        return _resume_from_command_line(overrides)
    rewritten = with_recipe_files(overrides)  # `+recipe=./my_recipe.yaml` → a name Hydra can find, + its search path
    same_place = dict(zip(overrides, rewritten))
    argv = [same_place.get(a, a) for a in argv] + rewritten[len(overrides):]  # flags keep their positions
    try:
        precheck(argv)
        argv = argv + sweep_dir_names(argv)
    except LorafwError as e:
        return fail(e)
    if any(a.split("=")[0] in ("--cfg", "-c") for a in argv) and "--resolve" not in argv:
        argv = argv + ["--resolve"]  # print values (unet_lr: 0.0005), not interpolations (${.lr})
    overrides, flags, _ = split_argv(argv)
    return run_hydra(flags + overrides)  # argparse takes the overrides only as one run of positionals


def run_hydra(argv: list[str]) -> int:
    """Hydra's main with `argv`; what Hydra raises comes back as one explained line (exit 2)."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from lorafw.config.compose import recipe_files_shown
    from lorafw.config.problems import explain_compose_error, yaml_problem

    saved, saved_env = sys.argv, os.environ.get("HYDRA_FULL_ERROR")
    sys.argv = ["lorafw"] + argv
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing its own report
    try:
        _hydra_app()
    except LorafwError as e:
        return fail(e)
    except yaml.YAMLError as e:
        return fail(ConfigError([yaml_problem(e, recipe_files_shown())], title="cannot read a config file"))
    except (HydraException, OmegaConfBaseException) as e:
        overrides, _, _ = split_argv(argv)
        return fail(ConfigError([explain_compose_error(e, overrides)], title="cannot compose the config"))
    finally:
        sys.argv = saved
        if saved_env is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved_env
    return 0


def _task(cfg) -> float | None:
    """One training job (Hydra calls this once per job of a sweep); returns the final loss for sweepers."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from lorafw.config.validate import spec_from_dict
    from lorafw.run import train

    run_dir = HydraConfig.get().runtime.output_dir
    try:
        spec, notes = spec_from_dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
        for n in notes:
            log.info(f"note: {n}")
        result = train(spec, run_dir)
    except LorafwError as e:
        sys.exit(fail(e))
    print_result(result)
    return result.objective  # for sweepers (Optuna): the best validation loss, else the best training loss


def print_result(result) -> None:
    files = "\n".join(f"  {p}" for p in result.lora_files)
    best = min(range(len(result.epoch_losses)), key=result.epoch_losses.__getitem__) if result.epoch_losses else None
    lines = [f"lorafw: {len(result.lora_files)} LoRA file(s) in {result.run_dir}:", files]
    if best is not None:
        lines.append(f"lorafw: {result.steps} steps in {result.wall_time_s:.0f}s; lowest epoch loss: epoch {best + 1} "
                     f"({result.epoch_losses[best]:.4f}); last: {result.epoch_losses[-1]:.4f}")
    if result.val_losses:
        e, v = min(result.val_losses.items(), key=lambda kv: kv[1])
        lines.append(f"lorafw: lowest validation loss: epoch {e} ({v:.4f})")
    print("\n".join(lines))


def _make_hydra_app() -> Callable[[], None]:
    import hydra

    return hydra.main(config_path=str(conf_dir()), config_name="config", version_base="1.3")(_task)


_hydra_app: Callable[[], None] = lambda: _make_hydra_app()()  # noqa: E731


def _resume_from_command_line(overrides: list[str]) -> int:
    """`lorafw +recipe=... resume=RUN_DIR`: the composed config must be the run's own."""
    from lorafw.config.compose import compose_dict, with_recipe_files
    from lorafw.config.validate import spec_from_dict
    from lorafw.run import train

    try:
        spec, _ = spec_from_dict(compose_dict(None, with_recipe_files(overrides)))
        print_result(train(spec))
    except LorafwError as e:
        return fail(e)
    return 0


def cmd_train(argv: list[str]) -> int:
    """`lorafw train ...` is `lorafw ...`: the explicit spelling of a training command line."""
    if any(a in ("--help", "-h") for a in argv):
        print_help()
        return 0
    return hydra_main(argv)
