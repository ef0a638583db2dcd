"""Errors a user can cause. Each names the cause and the fix; the CLI prints them without a traceback."""

from __future__ import annotations


class LorafwError(Exception):
    """Base for every error caused by input (config, files, data) rather than by a bug."""

    exit_code = 2


class ConfigError(LorafwError):
    """One or more configuration problems, reported together (one line per key)."""

    def __init__(self, problems: list[str], title: str = "invalid configuration") -> None:
        self.problems = list(problems)
        self.title = title
        super().__init__(self._render())

    def _render(self) -> str:
        lines = [f"{self.title} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}):"]
        lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


class ModelError(LorafwError):
    """A base checkpoint that cannot be used: missing, corrupt, pickled, or the wrong architecture."""


class DatasetError(LorafwError):
    """A dataset that cannot be trained on: no images, unreadable files, bad folder names."""


class OutputError(LorafwError):
    """An output folder that cannot be written, or that already holds a run."""


class Interrupted(LorafwError):
    """Ctrl-C / SIGTERM: the run stopped; what was saved is complete."""

    exit_code = 130


class NonFiniteError(LorafwError):
    """The loss or a gradient became NaN/inf; the last good weights were saved."""


class UsageError(LorafwError):
    """A command line lorafw cannot read: an unknown command or flag, a missing argument."""
