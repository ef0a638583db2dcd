"""Which settings make two runs compute the same thing: resuming and `lorafw compare` ask it of two specs."""

from __future__ import annotations

from typing import Any

from lorafw.config.spec import RunSpec


def identity(spec: RunSpec) -> dict[str, Any]:
    """What a run computes: the spec without where it writes, whether it resumes, and the files' comment."""
    d = spec.to_dict()
    d.pop("resume", None)
    d.pop("imported", None)  # what `lorafw import` left behind: a record, not a setting
    for key in ("dir", "overwrite", "comment"):
        d["output"].pop(key, None)
    return d


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> dict[str, tuple[Any, Any]]:
    """{dotted key: (old, new)} for every value that differs between two spec dicts."""
    out: dict[str, tuple[Any, Any]] = {}
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        key = f"{prefix}{k}"
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(changed_keys(a, b, key + "."))
        elif a != b:
            out[key] = (a, b)
    return out
