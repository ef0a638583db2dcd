"""The `lorafw` subcommands around training: plan, lint, check, rerun, resume, grid, compare, import, export,
recipes, keys. (Training itself: lorafw/cli/train.py; dataset preparation: lorafw/cli/prep.py; the table
that names them all: lorafw/cli/__init__.py.)

Each takes its argv after the command word, parses it with lorafw.cli.args.Parser (so `--help` exits 0 and an
unknown flag is refused by name) and returns an exit code; user errors are one message, never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from lorafw.cli.args import Parser, add_overrides, nearest
from lorafw.cli.train import fail, print_result
from lorafw.config.shipped import conf_dir, recipe_names
from lorafw.errors import LorafwError, UsageError

# Each command imports what only it needs inside its function (imports there are on purpose): `lorafw --help`,
# `lorafw keys` and `lorafw COMMAND --help` load none of the other commands' code, nor Hydra, numpy or torch.


def _dataset_spec(overrides: list[str], dirs: list[str] = ()):  # type: ignore[assignment]
    """(spec, recipe) for the dataset commands: like a training command line, but no base model is needed.
    `dirs` (lint's DIR… arguments: dataset roots or image folders, as dedupe/autotag/tags take them) become
    the dataset's folder list."""
    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict

    overrides = list(overrides)
    if not any(o.split("=")[0].lstrip("+") == "base_model.path" for o in overrides):
        overrides.append("base_model.path=-")
    recipe = next((o.split("=", 1)[1] for o in overrides if o.startswith("+recipe=")), "")
    if not dirs:
        spec, _ = spec_from_dict(compose_dict(None, overrides), need_model=False)
        return spec, recipe
    from lorafw.prep.files import image_folders

    data = compose_dict(None, overrides)
    data["dataset"] = dict(data["dataset"], root=None, reg_root=None,
                           folders=[{"path": str(f.path)} for f in image_folders(dirs)])
    spec, _ = spec_from_dict(data, need_model=False)
    return spec, recipe


def _dirs_and_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """Bare folder arguments (no `=`) and key=value overrides, in their order."""
    dirs = [a for a in items if "=" not in a and not a.startswith(("+", "~"))]
    return dirs, [a for a in items if a not in dirs]


def positive_gb(text: str) -> float:
    """--vram GB: a card's memory, a positive number (plan and doctor)."""
    import argparse

    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"needs the card's memory in GB, e.g. --vram 12 (got {text!r})")
    return value


def cmd_plan(argv: list[str]) -> int:
    """Steps, buckets and the guide's advice for a dataset and recipe; with --vram, the estimated peak GPU memory
    and the fastest settings that fit (no torch, no weights)."""
    from lorafw.data.dataset import build
    from lorafw.data.folders import scan
    from lorafw.planning.plan import make_plan, render

    ap = Parser("plan", cmd_plan.__doc__, usage="lorafw plan [--json] [--vram GB] [DATASET_DIR] +recipe=NAME [key=value ...]")
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    ap.add_argument("--vram", type=positive_gb, metavar="GB", help="the GPU's memory: estimate the peak and suggest settings")
    add_overrides(ap, "the plan (a bare folder means dataset.root=FOLDER)")
    args = ap.parse_intermixed_args(argv)
    dirs, overrides = _dirs_and_overrides(args.overrides)
    try:
        if len(dirs) > 1:
            raise UsageError(f"give one dataset folder (got {len(dirs)}: {' '.join(dirs)}); or dataset.folders=[...]")
        spec, recipe = _dataset_spec([f"dataset.root={d}" for d in dirs] + overrides)
        folders, warnings = scan(spec.dataset)
        data = build(folders, spec.dataset)
        plan = make_plan(data, spec, warnings)
    except LorafwError as e:
        return fail(e)
    memory = None
    if args.vram is not None:
        from lorafw.planning.vram import buckets_of, suggest
        from lorafw.planning.vram import render as render_vram

        try:
            memory = suggest(spec, args.vram, buckets_of(data))
        except ValueError as e:  # an architecture without a memory calibration
            print(f"lorafw plan: --vram: {e}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(plan.to_json() | ({"vram": memory.to_json()} if memory else {}), indent=2))
    else:
        print(render(plan, recipe) + (f"\n\n{render_vram(memory)}" if memory else ""))
    return 0


def cmd_lint(argv: list[str]) -> int:
    """Report damaged, uncaptioned, duplicated, transparent and upscaled images (exit 1 when any is an error).
    DIR… are dataset roots (REPEATS_NAME subfolders) or folders of images, as dedupe, autotag and tags take them;
    or give the training command line's dataset (+recipe=NAME dataset.root=DIR ...)."""
    from lorafw.data.folders import scan
    from lorafw.data.lint import lint

    ap = Parser("lint", cmd_lint.__doc__, usage="lorafw lint [--json] [--fast] DIR… | [+recipe=NAME] dataset.root=DIR [key=value ...]")
    ap.add_argument("--json", action="store_true", help="print the findings as JSON")
    ap.add_argument("--fast", action="store_true", help="read image headers only (no decoding: finds fewer problems)")
    ap.add_argument("overrides", nargs="*", metavar="DIR | key=value", help="dataset folders, or key=value overrides")
    args = ap.parse_intermixed_args(argv)
    dirs, overrides = _dirs_and_overrides(args.overrides)
    try:
        if not dirs and not any(o.split("=")[0].lstrip("+") in ("dataset.root", "dataset.folders") for o in overrides):
            raise UsageError("give the dataset: lorafw lint DIR (a dataset root or a folder of images), "
                             "or dataset.root=DIR")
        spec, _ = _dataset_spec(overrides, dirs)
        folders, warnings = scan(spec.dataset)
    except LorafwError as e:
        return fail(e)
    report = lint(folders, spec.dataset, deep=not args.fast)
    if args.json:
        print(json.dumps(report.to_json() | {"scan_warnings": warnings}, indent=2))
    else:
        for w in warnings:
            print(f"warning: {w}")
        print("\n".join(report.lines(limit=50)))
        print(f"lorafw lint: {report.summary()}")
    return 1 if report.errors else 0


def cmd_check(argv: list[str]) -> int:
    """Validate a training command line (every job of a sweep) and print what it would train; no torch."""
    from lorafw.config.compose import check_all, compose_dict, expand_sweep
    from lorafw.config.validate import spec_from_dict
    from lorafw.data.dataset import build
    from lorafw.data.folders import scan
    from lorafw.planning.budget import budget

    ap = Parser("check", cmd_check.__doc__, usage="lorafw check +recipe=NAME [key=value ...]")
    add_overrides(ap)
    args = ap.parse_intermixed_args(argv)
    try:
        jobs = expand_sweep(args.overrides)
        for note in check_all(jobs):
            print(f"note: {note}")
        for job in jobs:
            spec, _ = spec_from_dict(compose_dict(None, job))
            folders, warnings = scan(spec.dataset)
            data = build(folders, spec.dataset)
            t = spec.train
            length = budget(data.batches_per_epoch(t.batch_size), t.gradient_accumulation_steps * t.num_processes,
                            t.epochs, t.max_steps)
            for w in warnings:
                print(f"warning: {w}")
            print(f"ok: {' '.join(job)}\n    {len(data.images)} images, {data.n_items} items/epoch, {len(data.buckets)} bucket(s), "
                  f"{length.steps_per_epoch} steps/epoch × {length.epochs} epochs = {length.total_steps} steps"
                  + (f" (train.max_steps: the last epoch {length.last_epoch_steps} steps)" if length.partial else ""))
    except LorafwError as e:
        return fail(e)
    return 0


def cmd_rerun(argv: list[str]) -> int:
    """Train a finished run's saved config again (into a new folder unless output.dir is given)."""
    from lorafw.config.compose import load_spec

    ap = Parser("rerun", cmd_rerun.__doc__)
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (holding config.yaml)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="changes to the saved config")
    args = ap.parse_intermixed_args(argv)
    try:
        overrides = args.overrides
        if not any(o.startswith("output.dir=") for o in overrides):
            overrides = ["output.dir=null", "output.overwrite=false"] + overrides
        spec = load_spec(args.run_dir, overrides)
        from lorafw.run import train

        print_result(train(spec))
    except LorafwError as e:
        return fail(e)
    return 0


def cmd_resume(argv: list[str]) -> int:
    """Continue a run from its saved state (state.pt), with the saved config and optional changes."""
    from lorafw.config.compose import load_spec, override
    from lorafw.errors import ConfigError
    from lorafw.run_folder import CONFIG

    ap = Parser("resume", cmd_resume.__doc__)
    ap.add_argument("run_dir", metavar="RUN_DIR", help="the run folder to continue")
    ap.add_argument("--force", action="store_true", help="resume even if the saved state does not match the config")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="changes, e.g. train.epochs=20")
    args = ap.parse_intermixed_args(argv)
    try:
        folder = Path(args.run_dir).expanduser()
        if (folder / ".hydra").is_dir() and not (folder / CONFIG).is_file():  # the CLI made it, lorafw wrote nothing
            raise ConfigError([f"{args.run_dir}: the run stopped before it wrote its config ({CONFIG}), so nothing was "
                               "trained; start it again with its own command"], title="nothing to resume")
        saved = load_spec(args.run_dir, check_paths=False)
        spec = override(saved, *args.overrides) if args.overrides else saved
        from lorafw.run import train

        print_result(train(dataclasses.replace(spec, resume=args.run_dir), force=args.force))
    except LorafwError as e:
        return fail(e)
    return 0


def cmd_grid(argv: list[str]) -> int:
    """The guide's epoch × LoRA-weight image grid for a run, or for every run of a sweep."""
    from lorafw.sampling.grid import grid

    ap = Parser("grid", cmd_grid.__doc__,
                usage="lorafw grid RUN_DIR|SWEEP_DIR [grid.weights=[1,0.8,0.6]] [grid.epochs=[10,9,8]] [sample.steps=20] ...")
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, or a sweep folder (one grid per run)")
    ap.add_argument("overrides", nargs="*", metavar="key=value", help="grid.* and sample.* settings")
    args = ap.parse_intermixed_args(argv)
    try:
        written = grid(Path(args.run_dir).expanduser(), args.overrides)
    except LorafwError as e:
        return fail(e)
    print("lorafw grid:\n" + "\n".join(f"  {p}" for p in written))
    return 0


def cmd_compare(argv: list[str]) -> int:
    """Which run of a sweep won: compare.md, compare.csv and compare.png in the sweep folder."""
    from lorafw.outputs.compare import compare

    ap = Parser("compare", cmd_compare.__doc__)
    ap.add_argument("sweep_dir", metavar="SWEEP_DIR", help="the folder of a `lorafw -m` sweep")
    args = ap.parse_args(argv)
    folder = Path(args.sweep_dir).expanduser()
    try:
        compare(folder)
    except (LorafwError, ValueError) as e:
        print(f"lorafw: {e}", file=sys.stderr)
        return 2
    print((folder / "compare.md").read_text())
    print(f"lorafw compare: {folder / 'compare.md'}, {folder / 'compare.csv'}, {folder / 'compare.png'}")
    return 0


def cmd_import(argv: list[str]) -> int:
    """A kohya sd-scripts / GUI / Colab config → a lorafw recipe. Exit 2, writing nothing, when a setting that
    changes training cannot be honoured (--lenient writes it anyway, listing what it ignores)."""
    from lorafw.interop.importer import import_config, report, report_text, write_recipe

    ap = Parser("import", cmd_import.__doc__)
    ap.add_argument("file", metavar="FILE", help="sd-scripts / GUI trainer TOML, the Colab's training_config.toml, or a kohya_ss GUI .json")
    ap.add_argument("--dataset-config", default=None, metavar="FILE.toml", help="sd-scripts' --dataset_config file")
    ap.add_argument("--out", default=None, metavar="PATH", help="where to write the recipe (default: ./NAME.yaml)")
    ap.add_argument("--lenient", action="store_true", help="write the recipe even if settings are not honoured (listed in it)")
    ap.add_argument("--json", action="store_true", help="print one machine-readable report")
    args = ap.parse_args(argv)
    src = Path(args.file).expanduser()
    try:
        imp = import_config(src, Path(args.dataset_config).expanduser() if args.dataset_config else None)
        out = Path(args.out).expanduser() if args.out else Path.cwd() / f"{src.stem}.yaml"
        path = write_recipe(imp, f"{src} ({imp.dialect})", out, args.lenient)
    except LorafwError as e:
        return fail(e)
    print(json.dumps(report(imp, path), indent=1, default=str) if args.json else report_text(imp, src, path, args.lenient))
    return 0 if path else 2


def cmd_export(argv: list[str]) -> int:
    """The sd-scripts TOML pair (config.toml + dataset.toml) that repeats a run, and the command that uses them."""
    from lorafw.interop.export import export_run

    ap = Parser("export", cmd_export.__doc__)
    ap.add_argument("run_dir", metavar="RUN_DIR")
    ap.add_argument("--format", default="kohya", choices=["kohya"])
    ap.add_argument("--out", default=None, metavar="DIR", help="folder for config.toml and dataset.toml (default: RUN_DIR/kohya)")
    args = ap.parse_args(argv)
    try:
        cfg, ds, command = export_run(Path(args.run_dir).expanduser(), Path(args.out).expanduser() if args.out else None)
    except LorafwError as e:
        return fail(e)
    print(f"lorafw export: {cfg}\n               {ds}\nin sd-scripts: {command}")
    return 0


def cmd_recipes(argv: list[str]) -> int:
    """List the shipped recipes (conf/recipe/*.yaml) with their first comment line."""
    Parser("recipes", cmd_recipes.__doc__, epilog="use one: lorafw +recipe=NAME ...; show it: lorafw +recipe=NAME --cfg job"
           ).parse_args(argv)
    for name in recipe_names():
        text = (conf_dir() / "recipe" / f"{name}.yaml").read_text().splitlines()
        about = next((ln.lstrip("# ").strip() for ln in text if ln.startswith("#") and "@package" not in ln), "")
        print(f"{name:16s} {about}")
    return 0


def cmd_keys(argv: list[str]) -> int:
    """Every config key: default, type and range, what it does, and the kohya/GUI name it answers to."""
    from lorafw.config.schema import format_keys, iter_keys
    from lorafw.config.spec import RunSpec

    ap = Parser("keys", cmd_keys.__doc__, epilog="e.g. lorafw keys network   (the network.* keys)")
    ap.add_argument("prefix", nargs="?", default="", metavar="PREFIX", help="only keys starting with this (network, dataset.caption)")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table (docs/reference/keys.md's)")
    args = ap.parse_args(argv)
    prefix = args.prefix
    paths = [k.path for k in iter_keys(RunSpec)]
    if prefix and not prefix.endswith(".") and any(p.startswith(prefix + ".") for p in paths) and prefix not in paths:
        prefix += "."  # `network` → the network.* keys (not, say, a network_x key elsewhere)
    if not any(p.startswith(prefix) for p in paths):
        sections = sorted({p.split(".")[0] for p in paths})
        near = nearest(args.prefix, sections + paths)
        print(f"lorafw keys: no key starts with {args.prefix!r}" + (f"; did you mean {near}?" if near else "")
              + f" (sections: {', '.join(sections)})", file=sys.stderr)
        return 2
    print(format_keys(RunSpec, prefix, args.markdown))
    return 0


def cmd_report(argv: list[str]) -> int:
    """The run (or the sweep) on one page: RUN_DIR/report.html with curves, scored grids, samples, the dataset."""
    from lorafw.outputs.report import write_report

    ap = Parser("report", cmd_report.__doc__)
    ap.add_argument("run_dir", metavar="RUN_DIR|SWEEP_DIR", help="a run folder, or a sweep folder of runs")
    ap.add_argument("--embed", action="store_true", help="put the images inside the page instead of linking them")
    args = ap.parse_args(argv)
    try:
        path = write_report(Path(args.run_dir).expanduser(), True if args.embed else None)
    except LorafwError as e:
        return fail(e)
    print(f"lorafw report: {path}")
    return 0
