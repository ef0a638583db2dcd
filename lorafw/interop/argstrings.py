"""kohya's `key=value` argument lists, parsed exactly as sd-scripts parses them. Pure functions.

- `optimizer_args` and `lr_scheduler_args` (train_util.get_optimizer / get_scheduler_fix): each item is
  split with `arg.split("=")` (so exactly one `=`) and the value goes through `ast.literal_eval`:
  `betas=[0.9,0.99]` and `betas=0.9,0.99` are both a pair, `decouple=True` a bool, `eps=1e-8` a float,
  a string must be quoted (`name='x'`). Anything else is a malformed value, which sd-scripts would crash on.
- `network_args` (train_network.py): `split("=", 1)`, the value stays a string; the network module
  converts it (`float(...)`, `int(...)`, `str(v).lower() == "true"`), see `network_value`.

The same lists arrive in three shapes: a TOML list of strings (sd-scripts, the Colab), one string of
space-separated items (the bmaltais GUI, which drops every `"` and splits on whitespace), or a mapping
(the derrian GUI trainer's TOML, whose backend writes `k=v` with "true"/"false" capitalised and block
lists joined with commas).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Problem:
    """A setting that cannot be carried over: its kohya key, the value as written, and why."""

    key: str
    value: Any
    why: str


def items_of(raw: Any, *, optimizer: bool = False) -> list[str]:
    """The `k=v` strings of a TOML list, a GUI string or a GUI-trainer mapping."""
    if raw is None or raw == "":
        return []
    if isinstance(raw, str):
        return raw.replace('"', "").split()  # the bmaltais GUI: str(args).replace('"', "").split()
    if isinstance(raw, dict):
        out = []
        for k, v in raw.items():
            if isinstance(v, (list, tuple)):
                v = ",".join(str(x) for x in v)
            elif isinstance(v, bool):
                v = str(v)
            elif optimizer and v in ("true", "false"):
                v = v.capitalize()
            if k == "preset" and v == "":
                continue
            out.append(f"{k}={v}")
        return out
    if isinstance(raw, (list, tuple)):
        return [str(x) for x in raw]
    return [str(raw)]


def literal_args(raw: Any, where: str, problems: list[Problem]) -> dict[str, Any]:
    """sd-scripts' optimizer_args / lr_scheduler_args → {key: Python value}. Malformed items go to `problems`."""
    out: dict[str, Any] = {}
    for item in items_of(raw, optimizer=where == "optimizer_args"):
        parts = item.split("=")
        if len(parts) != 2 or not parts[0].strip():
            problems.append(Problem(where, item, "not one `key=value` item (sd-scripts splits each item at its one '=')"))
            continue
        key, text = parts[0].strip(), parts[1].strip()
        try:
            out[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            problems.append(Problem(f"{where}.{key}", text,
                                    "not a Python literal, as sd-scripts reads it (numbers, True/False/None, "
                                    "[0.9,0.99] or 0.9,0.99, quoted strings)"))
    return out


def network_args(raw: Any, problems: list[Problem]) -> dict[str, str]:
    """train_network.py's network_args → {key: string}, as the network module receives them."""
    out: dict[str, str] = {}
    for item in items_of(raw):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            problems.append(Problem("network_args", item, "not a `key=value` item"))
            continue
        out[key.strip()] = value.strip()
    return out


def network_value(text: Any, tp: type) -> Any:
    """A network_args string as kohya's networks and LyCORIS convert it: bools by `.lower() == "true"`,
    numbers by int()/float(), comma lists (block_dims) element by element. Raises ValueError."""
    if not isinstance(text, str):
        return text
    s = text.strip().strip("'")
    if tp is bool:
        return s.lower() == "true"
    if tp is int:
        f = float(s)
        if not f.is_integer():
            raise ValueError(f"{s} is not a whole number")
        return int(f)
    if tp is float:
        return float(s)
    if tp in (list, tuple):
        return [float(x) if "." in x or "e" in x.lower() else int(x) for x in s.split(",") if x.strip()]
    if s.lower() == "none":
        return None
    return s
