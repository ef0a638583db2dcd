"""`lorafw`: the command table, `--help`, `--version`, and one error boundary for every command.

    lorafw [train] +recipe=NAME key=value ...     train (Hydra overrides; -m for a sweep; --cfg job to show)
    lorafw COMMAND [ARGS] [--help]                 any command of COMMANDS below
    lorafw --help | help COMMAND | --version

A first word with '=' or starting with '+', '~' or '-' starts a training command line; any other first
word is a command. Commands are imported only when they run, so `--help` and `--version` load no torch.
To add a command: write `cmd_x(argv) -> int` (parse argv with lorafw.cli.args.Parser) and add one line below.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Callable

import lorafw.logs  # noqa: F401  (first: it quiets third-party import-time warnings before any command imports them)
from lorafw.cli.args import nearest
from lorafw.config.shipped import conf_dir
from lorafw.errors import LorafwError, UsageError


@dataclass(frozen=True)
class Command:
    run: str  # "module:function" taking the argv after the command word and returning an exit code
    about: str  # one line for `lorafw --help`
    section: str  # where `lorafw --help` lists it (a key of SECTIONS)


SECTIONS = {"train": "Train", "before": "Before training", "after": "After training", "config": "Configs"}

COMMANDS: dict[str, Command] = {
    "train": Command("lorafw.cli.train:cmd_train", "train (the same as a bare `lorafw +recipe=NAME ...`)", "train"),
    "check": Command("lorafw.cli.commands:cmd_check", "validate a command line, print steps per epoch (no torch)", "train"),
    "resume": Command("lorafw.cli.commands:cmd_resume", "continue a run from its saved state", "train"),
    "rerun": Command("lorafw.cli.commands:cmd_rerun", "train a saved run's config again", "train"),
    "demo": Command("lorafw.cli.demo:main", "a short run on a built-in tiny model and dataset", "train"),
    "plan": Command("lorafw.cli.commands:cmd_plan", "steps, buckets, the guide's advice; --vram GB: GPU memory", "before"),
    "lint": Command("lorafw.cli.commands:cmd_lint", "damaged, uncaptioned, duplicated images", "before"),
    "doctor": Command("lorafw.cli.doctor:cmd_doctor", "GPU, versions, what auto picks here, whether a recipe fits this card", "before"),
    "dedupe": Command("lorafw.cli.prep:cmd_dedupe", "move exact and near-duplicate images aside", "before"),
    "autotag": Command("lorafw.cli.prep:cmd_autotag", "caption images with a WD v3 tagger", "before"),
    "tags": Command("lorafw.cli.prep:cmd_tags", "tag frequencies, trigger tag, prune, replace, renumber", "before"),
    "undo": Command("lorafw.cli.prep:cmd_undo", "revert the last dataset change of dedupe/autotag/tags", "before"),
    "grid": Command("lorafw.cli.commands:cmd_grid", "epoch × LoRA-weight image grid of a run or sweep", "after"),
    "compare": Command("lorafw.cli.commands:cmd_compare", "which run of a sweep won", "after"),
    "report": Command("lorafw.cli.commands:cmd_report", "the run (or sweep) on one page: report.html", "after"),
    "export": Command("lorafw.cli.commands:cmd_export", "the sd-scripts TOML pair that repeats a run", "after"),
    "import": Command("lorafw.cli.commands:cmd_import", "a kohya / GUI / Colab config (TOML or JSON) → a lorafw recipe", "config"),
    "recipes": Command("lorafw.cli.commands:cmd_recipes", "list the shipped recipes", "config"),
    "keys": Command("lorafw.cli.commands:cmd_keys", "every config key: default, range, doc, kohya name", "config"),
}

LIBRARIES = ("torch", "diffusers", "transformers", "peft", "lycoris-lora", "accelerate", "hydra-core", "omegaconf",
             "safetensors", "bitsandbytes")


def command(name: str) -> Callable[[list[str]], int]:
    module, _, func = COMMANDS[name].run.partition(":")
    return getattr(importlib.import_module(module), func)


def is_command_word(arg: str) -> bool:
    """`plan`, `trian` → a command word; `+recipe=x`, `network.dim=8`, `~key`, `-m` → a training command line."""
    return "=" not in arg and not arg.startswith(("+", "~", "-"))


def help_text() -> str:
    lines = ["lorafw: declarative LoRA / LoCon / DoRA training for SD1.5, SDXL (Pony, Illustrious, NoobAI, RF) "
             "and Anima models.",
             "",
             "Train:   lorafw +recipe=sd15_character base_model.path=MODEL.safetensors dataset.root=DATA_DIR",
             "Sweep:   lorafw -m +recipe=sd15_character optimizer.lr=1e-4,5e-4 network.dim=8,16",
             "Show:    lorafw +recipe=pdxl --cfg job      (the resolved config, validated; --cfg hydra: Hydra's)",
             "Own recipe file: lorafw +recipe=./my_recipe.yaml ...",
             ""]
    width = max(len(n) for n in COMMANDS)
    for section, title in SECTIONS.items():
        lines.append(f"{title}:")
        lines += [f"  lorafw {n:<{width}}  {c.about}" for n, c in COMMANDS.items() if c.section == section]
    lines += ["", "Config groups (choose with group=option, e.g. optimizer=prodigy):"]
    root = conf_dir()
    for group in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        shown = f"+{group.name}" if group.name == "recipe" else group.name
        lines.append(f"  {shown:<15} {', '.join(options)}")
    lines += ["",
              "Common keys: base_model.path, dataset.root, dataset.resolution, network.dim, network.alpha,",
              "optimizer.lr, train.epochs, train.batch_size, output.dir, output.name, seed (all: lorafw keys [PREFIX]).",
              "",
              "lorafw COMMAND --help: a command's flags.  lorafw --version: lorafw's and its libraries' versions.",
              "Hydra's own flags (--multirun, --cfg, --info, ...): lorafw --hydra-help."]
    return "\n".join(lines)


def print_help() -> None:
    print(help_text())


def version_text() -> str:
    """lorafw's version and the libraries' (from package metadata: nothing is imported, torch included)."""
    import platform
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    def v(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    here = Path(__file__).resolve().parents[1]  # the lorafw package
    lines = [f"lorafw {v('lorafw')} ({here})", f"python {platform.python_version()}"]
    width = max(len(n) for n in LIBRARIES)
    lines += [f"{n:<{width}} {v(n)}" for n in LIBRARIES]
    return "\n".join(lines)


def unknown_command(word: str) -> UsageError:
    if word.endswith((".yaml", ".yml")):
        return UsageError(f"unknown command '{word}'; to train with a recipe file: lorafw +recipe={word} ...")
    near = nearest(word, [*COMMANDS, "help"], n=3, cutoff=0.5)
    hint = f"; did you mean {near}?" if near else ""
    return UsageError(f"unknown command '{word}'{hint} (lorafw --help lists the commands; "
                      "a training command line starts with +recipe=NAME or key=value)")


def dispatch(args: list[str]) -> int:
    if not args:
        print_help()
        return 0
    first = args[0]
    if first in ("--help", "-h", "help"):
        if first == "help" and args[1:]:
            if args[1] not in COMMANDS:
                raise unknown_command(args[1])
            return command(args[1])(["--help"])
        print_help()
        return 0
    if is_command_word(first):
        if first not in COMMANDS:
            raise unknown_command(first)
        return command(first)(args[1:])
    if "--version" in args:
        print(version_text())
        return 0
    return command("train")(args)


def _crash(e: BaseException) -> int:
    """A bug (not a user error): one line here, the traceback in a file to attach to a report."""
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(e))
    try:
        fd, path = tempfile.mkstemp(prefix="lorafw-crash-", suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"lorafw {' '.join(sys.argv[1:])}\n\n{version_text()}\n\n{text}")
        where = f"the traceback is in {path}"
    except OSError:
        where = "set LORAFW_TRACEBACK=1 to see the traceback"
    print(f"lorafw: internal error (a bug in lorafw, not in your input): {type(e).__name__}: {e}\n"
          f"  {where}; please report it (LORAFW_TRACEBACK=1 prints it here)", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return dispatch(args)
    except SystemExit as e:  # argparse's --help (0) and usage errors (2); a job's sys.exit
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:  # before training started (imports, checks, loading): nothing was written
        print("lorafw: interrupted before training started; no LoRA file was written", file=sys.stderr)
        return 130
    except LorafwError as e:
        print(f"lorafw: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the file system or the machine, not lorafw: full disk, permissions, a vanished file
        print(f"lorafw: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 1
    except Exception as e:
        if os.environ.get("LORAFW_TRACEBACK"):
            raise
        return _crash(e)
