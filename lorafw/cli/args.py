"""The argument parser every `lorafw` subcommand uses: `--help` that exits 0, unknown flags refused by name.

argparse as the standard library ships it accepts abbreviations (`--app` for `--apply`, a surprise in a
command that moves files) and says only "unrecognized arguments"; this one refuses abbreviations and
names the nearest real flag. No torch, no Hydra: `lorafw COMMAND --help` is instant.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Sequence


class Parser(argparse.ArgumentParser):
    """argparse for `lorafw NAME`: `lorafw NAME --help` prints usage to stdout and exits 0; a wrong flag
    exits 2 naming it and the nearest valid one."""

    def __init__(self, name: str, description: str | None = None, usage: str | None = None,
                 epilog: str | None = None) -> None:
        super().__init__(prog=f"lorafw {name}", description=description, usage=usage, epilog=epilog,
                         allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter)

    def parse_args(self, args: Sequence[str] | None = None, namespace=None):  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        self._refuse(extra)
        return ns

    def parse_intermixed_args(self, args: Sequence[str] | None = None, namespace=None):  # type: ignore[override]
        ns, extra = self.parse_known_intermixed_args(args, namespace)
        self._refuse(extra)
        return ns

    def flags(self) -> list[str]:
        return [s for s in self._option_string_actions if s.startswith("-")]

    def _refuse(self, extra: list[str]) -> None:
        if not extra:
            return
        flag = next((a for a in extra if a.startswith("-") and a != "-"), None)
        if flag is not None:
            self.error(unknown_flag(flag, self.flags(), self.prog))
        self.error(f"unexpected argument{'s' if len(extra) > 1 else ''}: {' '.join(extra)}")

    def error(self, message: str):  # type: ignore[override]
        """argparse's usage line, then `lorafw NAME: MESSAGE` (exit 2): no traceback."""
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: {message}\n")


def unknown_flag(flag: str, valid: Sequence[str], prog: str = "lorafw") -> str:
    """`unknown flag --jsn; did you mean --json?` (nearest by spelling; long flags preferred)."""
    name = flag.split("=", 1)[0]
    near = nearest(name, [v for v in valid if v.startswith("--")] or list(valid))
    hint = f"; did you mean {near}?" if near else ""
    return f"unknown flag {name}{hint} ({prog} --help lists the flags)"


def nearest(word: str, candidates: Sequence[str], n: int = 1, cutoff: float = 0.6) -> str | None:
    """The closest candidates to a misspelt word, joined with ' or ' (None if none is close)."""
    hits = difflib.get_close_matches(word, list(candidates), n=n, cutoff=cutoff)
    return " or ".join(hits) if hits else None


def add_overrides(p: argparse.ArgumentParser, what: str = "the run") -> None:
    """The `key=value` overrides a training command line takes (`+recipe=NAME`, `network.dim=8`, `optimizer=prodigy`)."""
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help=f"+recipe=NAME or a recipe file, group=option, key=value overrides of {what} "
                        "(lorafw keys lists the keys)")
