"""`lorafw` command line: Hydra's own main for training, plus a few subcommands.

    lorafw +recipe=sd15_character base_model.path=M dataset.root=D     train (Hydra overrides)
    lorafw -m +recipe=sd15_character optimizer.lr=1e-4,5e-4             a sweep, one folder per job
    lorafw +recipe=pdxl --cfg job                                      print the resolved config
    lorafw plan +recipe=... dataset.root=D [--vram GB]                 steps, buckets, the guide's advice, GPU memory
    lorafw lint DIR                                                    damaged / uncaptioned / duplicate images
    lorafw check +recipe=... ...                                       validate only (no torch)
    lorafw rerun RUN_DIR [key=value ...]                               train a saved run's config again
    lorafw resume RUN_DIR [--force] [key=value ...]                    continue a run from its saved state
    lorafw grid RUN_DIR [key=value ...]                                epochs × LoRA weights image grid
    lorafw compare SWEEP_DIR                                           which run of a sweep won
    lorafw report RUN_DIR|SWEEP_DIR [--embed]                          the run (or sweep) on one page: report.html
    lorafw import FILE.toml [--dataset-config D.toml]                  a kohya / GUI TOML → a lorafw recipe
    lorafw export RUN_DIR --format kohya                               the sd-scripts TOML pair for a run
    lorafw recipes                                                     list the shipped recipes
    lorafw demo                                                        a demo run on a built-in tiny model
    lorafw dedupe | autotag | tags ... | undo DIR…                     dataset preparation (lorafw/prep/)

Before Hydra starts, every job of the command line is composed and validated (no torch, no
weights): a typo or a missing folder is one message listing every problem, not a traceback
after the models have loaded.
"""

from __future__ import annotations

import logging
import sys
from typing import Callable

from lorafw.config.compose import check_all, conf_dir, expand_sweep, recipe_names, with_recipe_files
from lorafw.errors import ConfigError, LorafwError
from lorafw.outputs.report import cmd_report

log = logging.getLogger("lorafw")

# Hydra flags that take a value, and flags that only print (no training, no pre-check).
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p",
                "--experimental-rerun", "--shell-completion", "-sc", "--info", "-i", "--cfg", "-c"}
_PRINT_FLAGS = {"--cfg", "-c", "--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--version", "--resolve"}


def _fail(e: LorafwError) -> int:
    print(f"lorafw: {e}", file=sys.stderr)
    return e.exit_code


def split_argv(argv: list[str]) -> tuple[list[str], list[str], bool]:
    """(overrides, hydra flags, only_prints) from a Hydra command line."""
    overrides, flags = [], []
    prints = False
    i = 0
    while i < len(argv):
        a = argv[i]
        if a.startswith("-"):  # overrides never start with "-" (they are key=v, +key=v, ~key)
            flag = a.split("=", 1)[0]
            flags.append(a)
            prints = prints or flag in _PRINT_FLAGS
            if flag in _VALUE_FLAGS and "=" not in a and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                flags.append(argv[i + 1])
                i += 1
        else:
            overrides.append(a)
        i += 1
    return overrides, flags, prints


def precheck(argv: list[str]) -> None:
    overrides, flags, prints = split_argv(argv)
    if any(o.startswith("hparams_search=") and not o.endswith("=null") for o in overrides) and not any(
            f in ("-m", "--multirun") for f in flags):
        raise ConfigError(["hparams_search: a search runs many jobs; add -m (lorafw -m hparams_search=optuna ...)"])
    if prints or any(f.split("=")[0] in ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd") for f in flags):
        return  # printing only, or another primary config: Hydra reports on its own
    ours = [o for o in overrides if not o.lstrip("+~").startswith(("hydra/",))]
    multirun = any(f in ("-m", "--multirun") for f in flags)
    for note in check_all(expand_sweep(ours), multirun=multirun):
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
        return _fail(e)
    if any(a.split("=")[0] in ("--cfg", "-c") for a in argv) and "--resolve" not in argv:
        argv = argv + ["--resolve"]  # print values (unet_lr: 0.0005), not interpolations (${.lr})
    overrides, flags, _ = split_argv(argv)
    argv = flags + overrides  # argparse takes the overrides only as one run of positionals
    saved = sys.argv
    sys.argv = ["lorafw"] + argv
    try:
        _hydra_app()
    finally:
        sys.argv = saved
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
        sys.exit(_fail(e))
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


# -- subcommands --------------------------------------------------------------------------------
def _dataset_spec(argv: list[str]):
    """Spec for the dataset commands: like a training command line, but no base model is needed,
    and a bare folder argument means dataset.root=FOLDER."""
    from pathlib import Path

    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict

    overrides, _flags, _ = split_argv(argv)
    overrides = [f"dataset.root={o}" if "=" not in o and Path(o).expanduser().is_dir() else o for o in overrides]
    if not any(o.split("=")[0].lstrip("+") == "base_model.path" for o in overrides):
        overrides.append("base_model.path=-")
    spec, notes = spec_from_dict(compose_dict(None, overrides), need_model=False)
    recipe = next((o.split("=", 1)[1] for o in overrides if o.startswith("+recipe=")), "")
    return spec, recipe


def cmd_plan(argv: list[str]) -> int:
    """`lorafw plan [--json] [--vram GB] +recipe=... dataset.root=...`: steps, buckets and the guide's advice; with
    --vram, the estimated peak GPU memory and the fastest settings that fit GB (no torch, no weights)."""
    import json

    from lorafw.data.dataset import build
    from lorafw.data.folders import scan
    from lorafw.data.plan import make_plan, render

    vram, rest = None, []
    i = 0
    while i < len(argv):  # `--vram 12` / `--vram=12`: taken out before the rest is read as overrides
        a = argv[i]
        if a == "--vram" or a.startswith("--vram="):
            value = a.partition("=")[2] if "=" in a else (argv[i + 1] if i + 1 < len(argv) else "")
            i += 1 if "=" in a else 2
            try:
                vram = float(value)
                if not vram > 0:
                    raise ValueError
            except ValueError:
                print(f"lorafw plan: --vram needs the card's memory in GB, e.g. --vram 12 (got {value!r})", file=sys.stderr)
                return 2
            continue
        rest.append(a)
        i += 1
    argv = rest
    try:
        spec, recipe = _dataset_spec(argv)
        folders, warnings = scan(spec.dataset)
        data = build(folders, spec.dataset)
        plan = make_plan(data, spec, warnings)
    except LorafwError as e:
        return _fail(e)
    memory = None
    if vram is not None:
        from lorafw.data.vram import buckets_of, render as render_vram, suggest

        try:
            memory = suggest(spec, vram, buckets_of(data))
        except ValueError as e:  # an architecture without a memory calibration
            print(f"lorafw plan: --vram: {e}", file=sys.stderr)
            return 2
    if "--json" in argv:
        print(json.dumps(plan.to_json() | ({"vram": memory.to_json()} if memory else {}), indent=2))
    else:
        print(render(plan, recipe) + (f"\n\n{render_vram(memory)}" if memory else ""))
    return 0


def cmd_lint(argv: list[str]) -> int:
    """`lorafw lint [--json] [DIR | dataset.root=DIR ...]`: report damaged, uncaptioned, duplicated images."""
    import json

    from lorafw.data.folders import scan
    from lorafw.data.lint import lint

    try:
        spec, _ = _dataset_spec(argv)
        folders, warnings = scan(spec.dataset)
    except LorafwError as e:
        return _fail(e)
    report = lint(folders, spec.dataset, deep="--fast" not in argv)
    if "--json" in argv:
        print(json.dumps(report.to_json() | {"scan_warnings": warnings}, indent=2))
    else:
        for w in warnings:
            print(f"warning: {w}")
        print("\n".join(report.lines(limit=50)))
        print(f"lorafw lint: {report.summary()}")
    return 1 if report.errors else 0


def cmd_check(argv: list[str]) -> int:
    """Validate a command line (every job of a sweep) and print what it would train."""
    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict
    from lorafw.data.dataset import build
    from lorafw.data.folders import scan

    overrides, _flags, _ = split_argv(argv)
    try:
        jobs = expand_sweep(overrides)
        for note in check_all(jobs):
            print(f"note: {note}")
        for job in jobs:
            spec, _ = spec_from_dict(compose_dict(None, job))
            folders, warnings = scan(spec.dataset)
            data = build(folders, spec.dataset)
            spe = data.steps_per_epoch(spec.train.batch_size, spec.train.gradient_accumulation_steps)
            label = " ".join(job)
            for w in warnings:
                print(f"warning: {w}")
            print(f"ok: {label}\n    {len(data.images)} images, {data.n_items} items/epoch, {len(data.buckets)} bucket(s), "
                  f"{spe} steps/epoch × {spec.train.epochs} epochs = {spe * spec.train.epochs} steps")
    except LorafwError as e:
        return _fail(e)
    return 0


def cmd_rerun(argv: list[str]) -> int:
    """Train a finished run's saved config again (into a new folder unless output.dir is given)."""
    if not argv or argv[0].startswith("-"):
        print("usage: lorafw rerun RUN_DIR [key=value ...]", file=sys.stderr)
        return 2
    from lorafw.config.compose import load_spec
    from lorafw.run import train

    try:
        overrides = argv[1:]
        if not any(o.startswith("output.dir=") for o in overrides):
            overrides = ["output.dir=null", "output.overwrite=false"] + overrides
        spec = load_spec(argv[0], overrides)
        print_result(train(spec))
    except LorafwError as e:
        return _fail(e)
    return 0


def cmd_resume(argv: list[str]) -> int:
    """`lorafw resume RUN_DIR [--force] [key=value ...]`: continue a run from its saved state."""
    import dataclasses

    args = [a for a in argv if a != "--force"]
    if not args or args[0].startswith("-"):
        print("usage: lorafw resume RUN_DIR [--force] [key=value ...]", file=sys.stderr)
        return 2
    from lorafw.config.compose import load_spec
    from lorafw.run import train

    try:
        saved = load_spec(args[0], check_paths=False)
        spec = saved.override(*args[1:]) if args[1:] else saved
        print_result(train(dataclasses.replace(spec, resume=args[0]), force="--force" in argv))
    except LorafwError as e:
        return _fail(e)
    return 0


def _resume_from_command_line(overrides: list[str]) -> int:
    """`lorafw +recipe=... resume=RUN_DIR`: the composed config must be the run's own."""
    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict
    from lorafw.run import train

    try:
        spec, _ = spec_from_dict(compose_dict(None, with_recipe_files(overrides)))
        print_result(train(spec))
    except LorafwError as e:
        return _fail(e)
    return 0


def cmd_grid(argv: list[str]) -> int:
    """`lorafw grid RUN_DIR|SWEEP_DIR [key=value ...]`: the epoch × weight image grid."""
    if not argv or argv[0].startswith("-"):
        print("usage: lorafw grid RUN_DIR [grid.weights=[1,0.8,0.6]] [grid.epochs=[10,9,8]] [sample.steps=20] ...",
              file=sys.stderr)
        return 2
    from pathlib import Path

    from lorafw.sampling.grid import grid

    try:
        written = grid(Path(argv[0]).expanduser(), argv[1:])
    except LorafwError as e:
        return _fail(e)
    print("lorafw grid:\n" + "\n".join(f"  {p}" for p in written))
    return 0


def cmd_compare(argv: list[str]) -> int:
    """`lorafw compare SWEEP_DIR`: which run of a sweep won (compare.md, compare.csv, compare.png)."""
    if not argv:
        print("usage: lorafw compare SWEEP_DIR", file=sys.stderr)
        return 2
    from pathlib import Path

    from lorafw.outputs.compare import compare

    folder = Path(argv[0]).expanduser()
    try:
        compare(folder)
    except (LorafwError, ValueError) as e:
        print(f"lorafw: {e}", file=sys.stderr)
        return 2
    print((folder / "compare.md").read_text())
    print(f"lorafw compare: {folder / 'compare.md'}, {folder / 'compare.csv'}, {folder / 'compare.png'}")
    return 0


def cmd_import(argv: list[str]) -> int:
    """`lorafw import FILE.toml [--dataset-config FILE.toml] [--out PATH]`: a kohya/GUI TOML → a lorafw recipe."""
    import argparse
    from pathlib import Path

    from lorafw.interop.files import import_toml, validated_recipe

    ap = argparse.ArgumentParser(prog="lorafw import", description=cmd_import.__doc__)
    ap.add_argument("toml")
    ap.add_argument("--dataset-config", default=None, help="sd-scripts' --dataset_config file")
    ap.add_argument("--out", default=None, help="where to write the recipe (default: ./NAME.yaml)")
    args = ap.parse_args(argv)
    src = Path(args.toml).expanduser()
    try:
        imp, kind = import_toml(src, Path(args.dataset_config).expanduser() if args.dataset_config else None)
        out = Path(args.out).expanduser() if args.out else Path.cwd() / f"{src.stem}.yaml"
        path, problems = validated_recipe(imp, f"{src} ({kind})", out)
    except LorafwError as e:
        return _fail(e)
    print(f"lorafw import: {src} ({kind}) → {path}")
    print(f"  {len(imp.values)} settings imported; groups: " + ", ".join(f"{g}={o}" for g, o in sorted(imp.groups.items())))
    if imp.no_effect:
        print(f"  no effect in lorafw ({len(imp.no_effect)}): " + ", ".join(imp.no_effect))
    if imp.unknown:
        print(f"  NOT understood, not imported ({len(imp.unknown)}): " + ", ".join(imp.unknown))
    for n in imp.notes:
        print(f"  note: {n}")
    for p in problems:
        print(f"  problem: {p}")
    print(f"run it: lorafw +recipe={path}" + ("" if "base_model.path" in imp.values else " base_model.path=..."))
    return 1 if problems else 0


def cmd_export(argv: list[str]) -> int:
    """`lorafw export RUN_DIR --format kohya [--out DIR]`: the sd-scripts TOML pair that repeats a run."""
    import argparse
    from pathlib import Path

    from lorafw.interop.files import export_run

    ap = argparse.ArgumentParser(prog="lorafw export", description=cmd_export.__doc__)
    ap.add_argument("run_dir")
    ap.add_argument("--format", default="kohya", choices=["kohya"])
    ap.add_argument("--out", default=None, help="folder for config.toml and dataset.toml (default: RUN_DIR/kohya)")
    args = ap.parse_args(argv)
    try:
        cfg, ds, command = export_run(Path(args.run_dir).expanduser(), Path(args.out).expanduser() if args.out else None)
    except LorafwError as e:
        return _fail(e)
    print(f"lorafw export: {cfg}\n               {ds}\nin sd-scripts: {command}")
    return 0


def cmd_recipes(argv: list[str]) -> int:
    for name in recipe_names():
        text = (conf_dir() / "recipe" / f"{name}.yaml").read_text().splitlines()
        about = next((ln.lstrip("# ").strip() for ln in text if ln.startswith("#") and "@package" not in ln), "")
        print(f"{name:16s} {about}")
    return 0


def cmd_demo(argv: list[str]) -> int:
    from lorafw.demo import main as demo_main

    return demo_main(argv)


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "plan": cmd_plan,
    "lint": cmd_lint,
    "check": cmd_check,
    "rerun": cmd_rerun,
    "resume": cmd_resume,
    "grid": cmd_grid,
    "import": cmd_import,
    "export": cmd_export,
    "compare": cmd_compare,
    "report": cmd_report,
    "recipes": cmd_recipes,
    "demo": cmd_demo,
}


def _prep_commands() -> dict[str, Callable[[list[str]], int]]:
    """dedupe / autotag / tags (lorafw/prep/): the guide's dataset preparation."""
    try:
        from lorafw.prep.cli import SUBCOMMANDS as prep
    except ImportError:
        return {}
    return prep


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    SUBCOMMANDS.update(_prep_commands())
    try:
        if args and args[0] in SUBCOMMANDS:
            return SUBCOMMANDS[args[0]](args[1:])
        return hydra_main(args)
    except KeyboardInterrupt:  # before training started (imports, checks, loading): nothing was written
        print("lorafw: interrupted before training started; no LoRA file was written", file=sys.stderr)
        return 130

