"""Compose conf/ groups + a recipe + overrides into a RunSpec (the Python API's entry point).

The CLI composes through Hydra's own `@hydra.main`; this module composes the same files with
Hydra's compose API, so notebooks get exactly the spec the command line would run.
"""

from __future__ import annotations

import itertools
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

from lorafw.config.problems import explain_compose_error, override_problem, unparsable, yaml_problem
from lorafw.config.schema import REQUIRED, defaults_tree
from lorafw.config.shipped import conf_dir, recipe_names
from lorafw.config.spec import RunSpec
from lorafw.config.typed import suggest
from lorafw.config.validate import spec_from_dict
from lorafw.errors import ConfigError
from lorafw.paths import expand
from lorafw.run_folder import RECORD

CONFIG_NAME = "config"
_RECIPE_DIRS: dict[Path, Path] = {}


def with_recipe_files(overrides: Sequence[str]) -> list[str]:
    """Let `+recipe=` name a YAML file of the user's (`+recipe=./zeta.yaml`) as well as a shipped recipe.

    The file is linked into a private search-path folder as `recipe/<name>.yaml` (so it can extend a
    shipped recipe with `defaults: [sd15_character]`), and Hydra is told to look there.
    """
    import atexit
    import shutil
    import tempfile

    out, extra = [], []
    for o in overrides:
        key, _, value = o.partition("=")
        path = expand(value) if key.lstrip("+") == "recipe" else None
        if path is None or path.suffix not in (".yaml", ".yml") or not path.is_file():
            out.append(o)
            continue
        path = path.resolve()
        if path not in _RECIPE_DIRS:
            d = Path(tempfile.mkdtemp(prefix="lorafw-recipe-"))
            atexit.register(shutil.rmtree, d, True)
            name = path.stem if path.stem not in recipe_names() else f"user_{path.stem}"
            (d / "recipe").mkdir()
            (d / "recipe" / f"{name}.yaml").symlink_to(path)
            _RECIPE_DIRS[path] = d
        d = _RECIPE_DIRS[path]
        out.append(f"{key}={next((d / 'recipe').glob('*.yaml')).stem}")
        extra.append(f"file://{d}")
    if extra:
        out.append(f"hydra.searchpath=[{','.join(extra)}]")
    return out


def run_name(name: str | None, root: str | None) -> str:
    """output.name, or else the dataset folder's name (`~/data/kafka` → `kafka`), or `lora`."""
    if name:
        return name
    if root and root != REQUIRED:
        stem = expand(root).resolve().name
        if stem:
            return stem
    return "lora"


def default_run_dir(out_dir: str | None, name: str | None, root: str | None) -> str:
    """output.dir, or a new `outputs/<name>/<date-time>` (relative to where lorafw is run; `-2`, `-3` …
    when that folder exists already, so runs started in the same second never share a folder)."""
    if out_dir and out_dir != REQUIRED:
        return str(expand(out_dir))
    base = Path("outputs") / run_name(name, root) / time.strftime("%Y%m%d-%H%M%S")
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return str(candidate)


OmegaConf.register_new_resolver("lorafw_run_dir", default_run_dir, use_cache=True, replace=True)


def _store_schema_defaults() -> None:
    """Every key's default, from the one schema (config/spec.py), as the node conf/config.yaml starts from."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name=SCHEMA_NODE, node=defaults_tree(RunSpec))


SCHEMA_NODE = "lorafw_schema_defaults"
_store_schema_defaults()


def _compose_cfg(overrides: Sequence[str]) -> DictConfig:
    """Hydra's compose, every failure turned into a ConfigError naming the key, option or file."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return _hydra_compose(overrides)
    except yaml.YAMLError as e:
        raise ConfigError([yaml_problem(e, recipe_files_shown())], title="cannot read a config file") from None
    except (HydraException, OmegaConfBaseException) as e:
        error: Exception = e
    except UnicodeDecodeError as e:
        raise ConfigError([f"a recipe or config file is not UTF-8 text ({e.reason}); save it as UTF-8"],
                          title="cannot read a config file") from None
    raise ConfigError([explain_compose_error(error, overrides, _hydra_compose)], title="cannot compose the config") from None


def _hydra_compose(overrides: Sequence[str]) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="lorafw"):
        return hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))


def recipe_files_shown() -> dict[str, str]:
    """The private links to users' recipe files → the files as the user named them (for error messages)."""
    out = {}
    for path, d in _RECIPE_DIRS.items():
        for link in (d / "recipe").glob("*.yaml"):
            out[str(link)] = str(path)
    return out


def compose_dict(recipe: str | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved config as a plain dict (what `lorafw ... --cfg job` prints, resolved)."""
    ovs = list(overrides)
    if recipe:
        ovs = [f"+recipe={recipe}"] + ovs
    cfg = _compose_cfg(with_recipe_files(ovs))
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]


def compose(recipe: str | None = None, overrides: Sequence[str] = (), check_paths: bool = True) -> RunSpec:
    """Recipe + overrides → validated RunSpec, e.g. `compose("sd15_character", ["dataset.root=~/data/kafka"])`."""
    spec, _notes = spec_from_dict(compose_dict(recipe, overrides), check_paths=check_paths)
    return spec


def load_spec(path: str | Path, overrides: Sequence[str] = (), check_paths: bool = True) -> RunSpec:
    """A spec saved by a run (`RUN_DIR/config.yaml`, or the run folder itself), with optional overrides."""
    p = expand(str(path))
    if p.is_dir():
        p = p / "config.yaml"
    if not p.is_file():
        raise ConfigError([f"{path}: no saved config here (expected a run folder holding config.yaml)"])
    data = read_yaml(p)
    if not isinstance(data, dict):
        raise ConfigError([f"{p}: not a saved lorafw config (a mapping of sections: base_model, network, ...)"],
                          title="cannot read a config file")
    spec, _ = spec_from_dict(data, check_paths=False)
    return apply_overrides(spec, list(overrides), check_paths=check_paths)


def read_yaml(path: Path) -> Any:
    """A YAML file as plain data (interpolations resolved); its syntax errors as a ConfigError naming file and line."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    except yaml.YAMLError as e:
        problem = yaml_problem(e)
    except OmegaConfBaseException as e:
        problem = f"{path}: {str(e).splitlines()[0]}"
    except UnicodeDecodeError as e:
        problem = f"{path}: not UTF-8 text ({e.reason})"
    except OSError as e:
        problem = f"{path}: cannot read it ({e.strerror})"
    raise ConfigError([problem], title="cannot read a config file")


def override(spec: RunSpec, *overrides: str, check_paths: bool = True) -> RunSpec:
    """A new, re-validated spec with `key=value` overrides applied: `lorafw.override(spec, "train.epochs=8")`."""
    return apply_overrides(spec, list(overrides), check_paths=check_paths)


def apply_overrides(spec: RunSpec, overrides: list[str], check_paths: bool = True) -> RunSpec:
    """`key=value` overrides on an existing spec (no group changes: those need compose())."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    cfg = OmegaConf.create(spec.to_dict())
    OmegaConf.set_struct(cfg, True)
    problems: list[str] = []
    for text in overrides:
        try:
            ov = OverridesParser.create().parse_override(text)
        except HydraException:  # Hydra's grammar errors
            problems.append(override_problem(text))
            continue
        key = ov.key_or_group
        if ov.is_sweep_override() or ov.is_delete() or ov.is_add():
            problems.append(f"{text}: only plain key=value overrides apply to a spec")
            continue
        if OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            keys = [str(k) for k in node.keys()] if isinstance(node, DictConfig) else []
            near = suggest(leaf, keys)
            problems.append(f"{key}: unknown key" + (f"; did you mean {parent + '.' if parent else ''}{near}?" if near else ""))
            continue
        OmegaConf.update(cfg, key, ov.value(), merge=False, force_add=False)
    if problems:
        raise ConfigError(problems)
    new, _ = spec_from_dict(OmegaConf.to_container(cfg), check_paths=check_paths)  # type: ignore[arg-type]
    return new


def expand_sweep(overrides: Sequence[str], limit: int = 64) -> list[list[str]]:
    """Each job's overrides for a `-m` sweep (`a=1,2 b=x,y` → 4 lists), for checking before any job runs.

    Interval/range sweeps that cannot be enumerated (e.g. an Optuna search space) are left out.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    bad = unparsable(overrides)
    if bad:
        raise ConfigError([bad])
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    axes: list[list[str]] = []
    for ov in parsed:
        if not ov.is_sweep_override():
            axes.append([ov.input_line])
            continue
        try:
            values = list(ov.sweep_string_iterator())
        except Exception:
            continue
        axes.append([f"{ov.get_key_element()}={v}" for v in values])
    return [list(c) for c in itertools.islice(itertools.product(*axes), limit)]


def unwritable(folder: Path) -> Path | None:
    """The existing folder (folder or its nearest existing parent) that stops `folder` being written, or None.
    Nothing is created: Hydra creates the run folder itself, and must not crash doing it."""
    import os

    probe = folder.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return probe
    return None if os.access(probe, os.W_OK | os.X_OK) else probe


def check_all(overrides: Iterable[list[str]], check_paths: bool = True, multirun: bool = False) -> list[str]:
    """Validate every job of a (possibly swept) command line; raise one ConfigError for all of them.

    Also refuses, before Hydra writes anything, an output folder that already holds a run.
    """
    problems: list[str] = []
    notes: list[str] = []
    jobs = list(overrides)
    for job in jobs:
        try:
            spec, n = spec_from_dict(compose_dict(None, job), check_paths=check_paths)
            notes += [x for x in n if x not in notes]
            launched = int(os.environ.get("WORLD_SIZE", "1") or 1) > 1  # one of `accelerate launch`'s processes
            if launched and not spec.output.dir:
                problems.append("output.dir: under accelerate launch every process must write to the same folder; set "
                                "output.dir=PATH, or let lorafw start the processes itself: train.num_processes=N")
                continue
            out = Path(default_run_dir(spec.output.dir, spec.output.name, spec.dataset.root))
            if launched and os.environ.get("RANK", "0") != "0":
                continue  # the main process checks the folder (and may already have started writing in it)
            if check_paths:
                blocker = unwritable(out)
                if blocker is not None:
                    problems.append(f"output.dir: cannot write to {out} ({blocker} is not writable); choose another output.dir")
            if check_paths and not spec.output.overwrite:
                marker = out / ("multirun.yaml" if multirun else RECORD)
                if marker.exists() and f"output.dir: {out} already holds a run" not in problems:
                    problems.append(f"output.dir: {out} already holds a run; choose another output.dir, "
                                    "or add output.overwrite=true to write over it")
        except ConfigError as e:
            label = f"[{' '.join(job)}] " if len(jobs) > 1 else ""
            problems += [label + x for x in e.problems if label + x not in problems]
    if problems:
        raise ConfigError(problems)
    return notes
