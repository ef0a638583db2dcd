"""Plain dict → typed dataclass, collecting every problem instead of stopping at the first.

Why not OmegaConf structured configs: their errors stop at the first bad key and do not
suggest the key the user meant. Here each problem is one line naming the key, the value
and what is allowed, and unknown keys come with the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

from lorafw.config.schema import REQUIRED, range_problem


def suggest(name: str, candidates: list[str]) -> str | None:
    """The nearest candidate to a misspelt key, or None if nothing is close."""
    hits = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return hits[0] if hits else None


def describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _is_optional(tp: Any) -> bool:
    return _origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp)


def _origin(tp: Any) -> Any:
    return typing.get_origin(tp)


def _strip_optional(tp: Any) -> Any:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if len(args) == 1 else Union[tuple(args)]  # type: ignore[return-value]


def _type_name(tp: Any) -> str:
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if tp is str:
        return "a string"
    if _origin(tp) is tuple:
        return "a list"
    if _origin(tp) is dict:
        return "a mapping ({key: value})"
    if dataclasses.is_dataclass(tp):
        return "a mapping ({key: value})"
    if _origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return str(tp)


def convert(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    """Check `value` against the type hint `tp`; coerce where lossless (int → float, list → tuple)."""
    if isinstance(value, str) and value == REQUIRED:
        problems.append(f"{key}: required but not set (pass {key}=...)")
        return None
    if value is None:
        if tp is type(None) or _is_optional(tp) or tp is Any:
            return None
        problems.append(f"{key}: required, got null; expected {_type_name(tp)}")
        return None
    if _is_optional(tp):
        tp = _strip_optional(tp)
    if tp is Any:
        return value
    origin = _origin(tp)
    if origin in (Union, types.UnionType):
        # the first member that takes `value` (dataset.resolution's `int | tuple[int, ...]`); a string of
        # comma-separated whole numbers ("512,650", kohya's W,H; "512") is read as the list (or number) it spells
        arms = typing.get_args(tp)
        if isinstance(value, str) and any(_origin(a) is tuple for a in arms):
            parts = [v.strip() for v in value.split(",")]
            if all(v.isdigit() for v in parts):
                value = int(parts[0]) if len(parts) == 1 and int in arms else [int(v) for v in parts]
        for arm in arms:
            tried: list[str] = []
            out = convert(arm, value, key, tried)
            if not tried:
                return out
        problems.append(f"{key}: expected {_type_name(tp)}, got {describe(value)}")
        return None
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) is type(allowed[0]):
            return value
        problems.append(f"{key}: {value!r} is not allowed; choose one of: {', '.join(str(a) for a in allowed)}")
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        problems.append(f"{key}: expected true or false, got {describe(value)}")
        return None
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            problems.append(f"{key}: expected an integer, got {describe(value)}")
            return None
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key}: expected a number, got {describe(value)}")
            return None
        return float(value)
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{key}: expected a string, got {describe(value)}")
        return None
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: expected a list, got {describe(value)}")
            return None
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(convert(item_tp, v, f"{key}[{i}]", problems) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping ({{key: value}}), got {describe(value)}")
            return None
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key, problems)
    raise TypeError(f"unsupported type hint {tp!r} at {key}")  # a bug in the spec, not user input


def _has_usable_default(f: dataclasses.Field) -> bool:
    """A default that stands alone: not the REQUIRED marker, not an interpolation of another key."""
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return True
    d = f.default
    if d is dataclasses.MISSING or d == REQUIRED:
        return False
    return not (isinstance(d, str) and d.startswith("${"))


def field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def from_dict(cls: type, data: Any, key: str, problems: list[str]) -> Any:
    """Build dataclass `cls` from `data`, appending one line per problem to `problems`.

    Returns None when any problem was found in this subtree (so callers never see a
    half-built object).
    """
    if not isinstance(data, dict):
        problems.append(f"{key or 'config'}: expected {_type_name(cls)}, got {describe(data)}")
        return None
    before = len(problems)
    hints = typing.get_type_hints(cls)
    names = field_names(cls)
    prefix = f"{key}." if key else ""
    for unknown in sorted(set(data) - set(names)):
        near = suggest(str(unknown), names)
        hint = f"did you mean {prefix}{near}? " if near else ""
        problems.append(f"{prefix}{unknown}: unknown key; {hint}(valid keys: {', '.join(names)})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            if not _has_usable_default(f):
                problems.append(f"{prefix}{f.name}: missing (every config must set it)")
            continue
        before_key = len(problems)
        kwargs[f.name] = convert(hints[f.name], data[f.name], prefix + f.name, problems)
        if len(problems) == before_key:  # the declared range (config/schema.py), once the type is right
            bad = range_problem(dict(f.metadata), kwargs[f.name], prefix + f.name)
            if bad:
                problems.append(bad)
    if len(problems) != before:
        return None
    return cls(**kwargs)
