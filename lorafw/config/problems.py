"""Hydra's, OmegaConf's and YAML's errors → one line naming the key, option or file, with the nearest valid one.

Each message is built from the exception's own fields, never from its message text (which changes between
Hydra releases): MissingConfigException's `missing_cfg_file` and `options`, OverrideParseException's
`override`, the OmegaConf cause's `full_key` and `parent_node`, a YAML error's `problem_mark`. Deleting a key
that is not there (`~network.dimm`) has no structured error in Hydra, so it is checked here on the composed
config instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from lorafw.config.catalog import OPTIMIZERS
from lorafw.config.typed import suggest

# Hydra plugins that a group option needs (`launcher=joblib` → hydra/launcher/joblib), and their packages.
PLUGINS = {"joblib": "hydra-joblib-launcher", "submitit_slurm": "hydra-submitit-launcher",
           "submitit_local": "hydra-submitit-launcher", "optuna": "hydra-optuna-sweeper"}


def explain_compose_error(err: BaseException, overrides: Sequence[str],
                          compose: Callable[[Sequence[str]], Any] | None = None) -> str:
    """One line for a failed composition. `compose(overrides)` composes again (used only to check `~key`
    deletions, for which Hydra raises no structured error)."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(err, MissingConfigException):
        return missing_option(err.missing_cfg_file, err.options)
    if isinstance(err, OverrideParseException):
        return override_problem(err.override)
    cause = err.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and cause.full_key:
        return unknown_key(cause.full_key, cause.parent_node, overrides)
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:  # e.g. hydra.job.chdir=maybe
        return f"{cause.full_key}: {(cause.msg or str(cause)).splitlines()[0]}"
    if compose is not None:
        missing = missing_deletions(overrides, compose)
        if missing:
            return missing
    bad = unparsable(overrides)
    if bad:
        return bad
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip() and not ln.startswith(("Config search path", "\tprovider="))]
    return " ".join(lines).removeprefix("In 'config': ") or type(err).__name__


def missing_option(missing_cfg_file: str | None, options: Sequence[str] | None) -> str:
    """`optimizer=adamx` / `+recipe=sd15_charcter`: no such option file; the nearest and all of them."""
    group, _, name = (missing_cfg_file or "").rpartition("/")
    if not group:
        return f"config {missing_cfg_file!r} not found"
    options = list(options or [])
    if group.startswith("hydra/") and name in PLUGINS:
        return (f"{group.removeprefix('hydra/')}={name} needs a Hydra plugin that is not installed: "
                f"pip install {PLUGINS[name]} (or: pip install 'lorafw[sweep]')")
    plus = "+" if group == "recipe" else ""
    near = suggest(name, options)
    hint = f"did you mean {plus}{group}={near}? " if near else ""
    listed = f"(available: {', '.join(options)})" if options else "(this group has no options)"
    return f"{plus}{group}={name}: no such {group} option; {hint}{listed}"


def unknown_key(full_key: str, parent_node: Any, overrides: Sequence[str]) -> str:
    """An override of a key the config does not have, with the nearest key of the same section."""
    from omegaconf import DictConfig

    given = next((_key_of(o) for o in overrides if _key_of(o) == full_key or _key_of(o).startswith(full_key + ".")), full_key)
    parent, _, leaf = full_key.rpartition(".")
    if parent == "optimizer.args":  # a free-form mapping: its keys are the optimizer's own arguments
        optimizer = parent_node._get_parent() if isinstance(parent_node, DictConfig) else None
        name = optimizer.get("name") if isinstance(optimizer, DictConfig) else None
        allowed = ", ".join(sorted(OPTIMIZERS[name].args)) if name in OPTIMIZERS else "see the optimizer's documentation"
        return f"{given}: not set yet; add it with +{given}=VALUE ({name} takes: {allowed})"
    keys = [str(k) for k in parent_node.keys()] if isinstance(parent_node, (DictConfig, dict)) else []
    if not parent:
        keys = [k for k in keys if k != "hydra"]
    near = suggest(leaf, keys)
    where = f"{parent}." if parent else ""
    hint = f"did you mean {where}{near}? " if near else ""
    if given != full_key:  # `nonexist.x=1`: the section itself is unknown
        return f"{given}: unknown key; the config has no section {where}{leaf}; {hint}(sections: {', '.join(keys)})"
    return f"{given}: unknown key; {hint}(valid keys: {', '.join(keys)})"


def _key_of(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def missing_deletions(overrides: Sequence[str], compose: Callable[[Sequence[str]], Any]) -> str | None:
    """`~key` of a key the composed config does not have → its message, else None."""
    from omegaconf import OmegaConf

    deletes = [o for o in overrides if o.startswith("~")]
    if not deletes:
        return None
    try:
        cfg = compose([o for o in overrides if not o.startswith("~")])
    except Exception:  # the rest fails too: that error is reported instead
        return None
    for d in deletes:
        key = _key_of(d)
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            return f"{d}: there is no {key} to delete" + (
                f"; did you mean ~{parent + '.' if parent else ''}{suggest(leaf, [str(k) for k in node.keys()])}?"
                if hasattr(node, "keys") and suggest(leaf, [str(k) for k in node.keys()]) else "")
    return None


def override_problem(override: str) -> str:
    """An override Hydra's grammar cannot read."""
    if "=" not in override and not override.startswith("~"):
        return (f"{override}: not a key=value override (e.g. network.dim=8); "
                "a command comes first: lorafw COMMAND ... (lorafw --help lists them)")
    key = override.split("=", 1)[0]
    return f"{override}: cannot be read as key=value; quote a value holding '=', ',', spaces or brackets, e.g. {key}='...'"


def unparsable(overrides: Sequence[str]) -> str | None:
    """The first override Hydra's grammar cannot read, explained; None if all parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except HydraException:
            return override_problem(o)
    return None


def yaml_problem(err: Exception, shown_as: Mapping[str, str] | None = None) -> str:
    """`recipe.yaml, line 6, column 8: expected ',' or ']', but got ':' (while parsing a flow sequence
    that starts at line 5)`: a YAML syntax error with its file and line, as a user can fix it."""
    import yaml

    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if not isinstance(err, yaml.YAMLError) or mark is None:
        return f"cannot read the YAML: {err}"
    name = _shown(mark.name, shown_as or {})
    problem = getattr(err, "problem", None) or str(err)
    context, cmark = getattr(err, "context", None), getattr(err, "context_mark", None)
    extra = f" ({context} that starts at line {cmark.line + 1})" if context and cmark is not None and cmark is not mark else ""
    return f"{name}, line {mark.line + 1}, column {mark.column + 1}: {problem}{extra}; fix the YAML there " \
           "(quote values that hold ': ', '#', '[' or '{')"


def _shown(name: str, shown_as: Mapping[str, str]) -> str:
    """A file as the user named it (a user's recipe is read through a private link; see compose.with_recipe_files)."""
    for inner, outer in shown_as.items():
        if name == inner or Path(name) == Path(inner):
            return outer
    return name
