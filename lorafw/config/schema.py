"""One declaration per key: type, default, range, a one-line doc and everything kohya knows it by.

A key is a field of a RunSpec dataclass (config/spec.py) declared with `key(...)`:

    dim: int = key(16, "rank of the LoRA matrices", kohya="network_dim", kohya_default=4, ss="ss_network_dim", ge=1)

Everything else is read from those declarations, never written again:
- the defaults Hydra composes on (`defaults_tree`, stored in Hydra's ConfigStore by config/compose.py,
  so conf/ option files only set what they change);
- type and range checks with one message per bad key (config/typed.py);
- `lorafw keys [PREFIX] [--markdown]` and the docs' key reference, docs/reference/keys.md (`format_keys`);
- kohya's side of each key: its sd-scripts argument names (`kohya=`, `kohya_names`), its default there
  where that differs from lorafw's (`kohya_default=`), the values that turn it off (`kohya_off=`) and its
  name in a LoRA file's metadata (`ss=`). The importer (lorafw/interop/classify.py, dialects.py), the exporter
  (interop/kohya.py) and the metadata writer (outputs/metadata.py) read them from here; a test fails when a
  kohya or ss_* name of the schema is spelled anywhere else in lorafw/ (tests/test_schema.py).

A section declared with `record_section()` is not a setting but what produced the spec (the importer's notes,
`RunSpec.imported`): it is typed and validated like the rest, and left out of `lorafw keys` and Hydra's defaults.

Why dataclass field metadata rather than pydantic or OmegaConf structured configs: the spec stays a
plain frozen dataclass (no new dependency, cheap to import, no torch), and our own checker collects every
problem at once with the nearest-key suggestion, which OmegaConf's first-error-wins validation cannot.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Iterator, Literal, Union

REQUIRED = "???"  # OmegaConf's marker for a mandatory value: the user must pass it (e.g. base_model.path)
_NO_DEFAULT = object()
SAME = None  # kohya_default left out: kohya's default means what lorafw's does


def key(default: Any = _NO_DEFAULT, doc: str = "", *, kohya: str | tuple[str, ...] = (), kohya_default: Any = SAME,
        kohya_off: Any = (), ss: str = "", ge: float | None = None, gt: float | None = None, le: float | None = None,
        lt: float | None = None, why: str = "") -> Any:
    """Declare one config key (a dataclass field). `why` is added to a range error, e.g. "(0 = off)".

    A default written as "${.other}" is a Hydra interpolation (it follows another key of the same section).
    kohya's side: `kohya` its sd-scripts argument name(s), the first one the name lorafw writes;
    `kohya_default` what sd-scripts uses when a config leaves the argument out, where that trains something
    other than lorafw's default (an import then states it); `kohya_off` the value, or tuple of values, at which
    the argument changes nothing in sd-scripts (an import calls it without effect); `ss` the metadata key
    train_network.py writes the value under.
    """
    off = kohya_off if isinstance(kohya_off, tuple) else (kohya_off,)
    meta = {"doc": doc, "kohya": (kohya,) if isinstance(kohya, str) else tuple(kohya), "kohya_default": kohya_default,
            "kohya_off": off, "ss": ss, "ge": ge, "gt": gt, "le": le, "lt": lt, "why": why}
    if default is _NO_DEFAULT:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (dict, list)):
        frozen = default
        return dataclasses.field(default_factory=lambda: type(frozen)(frozen), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def record_section(cls: type) -> Any:
    """A RunSpec section that records where the spec came from rather than what to train (see the module doc).
    Left out of comparisons of specs, of `lorafw keys` and of the defaults Hydra composes on."""
    return dataclasses.field(default_factory=cls, compare=False, metadata={"record": True})


def is_record(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("record"))


@dataclass(frozen=True)
class KeyInfo:
    """One key as `lorafw keys` shows it."""

    path: str  # dotted, e.g. network.dim; list items as dataset.folders[].path
    type: Any
    default: Any
    doc: str
    kohya: tuple[str, ...]
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""
    kohya_default: Any = SAME  # kohya's default where it trains something else than lorafw's
    kohya_off: tuple[Any, ...] = ()  # values at which kohya's argument has no effect
    ss: str = ""  # the LoRA metadata key kohya writes the value under

    @property
    def constraint(self) -> str:
        """`int ≥ 1`, `lora | locon`, `float in [0, 1)`, `str or null`."""
        tp, optional = _unwrap(self.type)
        text = type_text(tp)
        lo = f"[{_num(self.ge)}" if self.ge is not None else (f"({_num(self.gt)}" if self.gt is not None else None)
        hi = f"{_num(self.le)}]" if self.le is not None else (f"{_num(self.lt)})" if self.lt is not None else None)
        if lo and hi:
            text += f" in {lo}, {hi}"
        elif self.ge is not None:
            text += f" ≥ {_num(self.ge)}"
        elif self.gt is not None:
            text += f" > {_num(self.gt)}"
        elif self.le is not None:
            text += f" ≤ {_num(self.le)}"
        elif self.lt is not None:
            text += f" < {_num(self.lt)}"
        return text + (" or null" if optional else "")


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _unwrap(tp: Any) -> tuple[Any, bool]:
    """(type without None, whether None is allowed)."""
    if typing.get_origin(tp) in (Union, types.UnionType) and type(None) in typing.get_args(tp):
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Union[tuple(rest)]), True  # type: ignore[return-value]
    return tp, False


def type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list[{type_text(typing.get_args(tp)[0])}]"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    if tp is Any:
        return "any"
    if origin in (Union, types.UnionType):
        return " or ".join(type_text(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def range_problem(info: dict[str, Any], value: Any, key_name: str) -> str | None:
    """The message for a number outside its declared range, or None (also None for non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    ge, gt, le, lt = info.get("ge"), info.get("gt"), info.get("le"), info.get("lt")
    ok = (ge is None or value >= ge) and (gt is None or value > gt) and (le is None or value <= le) and (lt is None or value < lt)
    if ok:
        return None
    if (ge is not None or gt is not None) and (le is not None or lt is not None):
        lo = f"[{_num(ge)}" if ge is not None else f"({_num(gt)}"
        hi = f"{_num(le)}]" if le is not None else f"{_num(lt)})"
        need = f"must be in {lo}, {hi}"
    elif ge is not None:
        need = f"must be at least {_num(ge)}" if ge >= 1 and float(ge).is_integer() else f"must be >= {_num(ge)}"
    elif gt is not None:
        need = f"must be > {_num(gt)}"
    elif le is not None:
        need = f"must be <= {_num(le)}"
    else:
        need = f"must be < {_num(lt)}"
    why = f" ({info['why']})" if info.get("why") else ""
    shown = f"{value:g}" if isinstance(value, float) else value
    return f"{key_name}: {need}{why}, got {shown}"


def _item_type(tp: Any) -> Any:
    """tuple[Folder, ...] → Folder; anything else → None."""
    tp, _ = _unwrap(tp)
    if typing.get_origin(tp) is tuple:
        inner = typing.get_args(tp)[0]
        return inner if dataclasses.is_dataclass(inner) else None
    return None


def iter_keys(cls: type, prefix: str = "") -> Iterator[KeyInfo]:
    """Every key under dataclass `cls`, depth first, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if is_record(f):
            continue
        tp = hints[f.name]
        path = f"{prefix}{f.name}"
        inner, _ = _unwrap(tp)
        if dataclasses.is_dataclass(inner):
            yield from iter_keys(inner, path + ".")
            continue
        m = dict(f.metadata)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else REQUIRED)  # type: ignore[misc]
        yield KeyInfo(path, tp, default, m.get("doc", ""), m.get("kohya", ()), m.get("ge"), m.get("gt"), m.get("le"),
                      m.get("lt"), m.get("why", ""), m.get("kohya_default", SAME), m.get("kohya_off", ()), m.get("ss", ""))
        item = _item_type(tp)
        if item is not None:
            yield from iter_keys(item, path + "[].")


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def defaults_tree(cls: type) -> dict[str, Any]:
    """The nested dict of every default under `cls` (what Hydra composes on before conf/ and recipes)."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if is_record(f):
            continue
        inner, _ = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(inner):
            out[f.name] = defaults_tree(inner)
        elif f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = _plain(f.default_factory())  # type: ignore[misc]
        else:
            out[f.name] = REQUIRED
    return out


def field_meta(cls: type, name: str) -> dict[str, Any]:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return dict(f.metadata)
    return {}


def kohya_names(cls: type) -> dict[str, str]:
    """kohya / GUI key → lorafw dotted key, from every declaration's `kohya=` names (list items excluded)."""
    out: dict[str, str] = {}
    for k in iter_keys(cls):
        if "[]" in k.path:
            continue
        for name in k.kohya:
            if name in out and out[name] != k.path:
                raise ValueError(f"kohya name {name!r} declared for both {out[name]} and {k.path}")  # a schema bug
            out[name] = k.path
    return out


def value_at(spec: Any, path: str) -> Any:
    """The value of a dotted key in a spec: value_at(spec, "train.ip_noise_gamma")."""
    for part in path.split("."):
        spec = getattr(spec, part)
    return spec


def kohya_keys(cls: type) -> dict[str, KeyInfo]:
    """lorafw dotted key → its KeyInfo, for every key with a kohya name (list items excluded), in declaration
    order. `kohya_keys(RunSpec)["train.ip_noise_gamma"].kohya[0]` is the name sd-scripts reads."""
    return {k.path: k for k in iter_keys(cls) if k.kohya and "[]" not in k.path}


def kohya_of(cls: type) -> dict[str, str]:
    """lorafw dotted key → the sd-scripts argument name lorafw reads and writes for it (its first `kohya=` name):
    code that handles one kohya argument names it as `kohya_of(RunSpec)["train.ip_noise_gamma"]`."""
    return {path: k.kohya[0] for path, k in kohya_keys(cls).items()}


def ss_names(cls: type) -> dict[str, str]:
    """lorafw dotted key → the LoRA metadata key kohya writes its value under, for every key with an `ss=` name."""
    out: dict[str, str] = {}
    for k in iter_keys(cls):
        if k.ss:
            if k.ss in out.values():
                raise ValueError(f"ss name {k.ss!r} declared twice (the second on {k.path})")  # a schema bug
            out[k.path] = k.ss
    return out


def _default_text(k: KeyInfo) -> str:
    d = k.default
    if isinstance(d, str) and d.startswith("${.") and d.endswith("}"):
        return "= " + k.path.rsplit(".", 1)[0] + "." + d[3:-1]
    if d is None:
        return "null"
    if isinstance(d, bool):
        return "true" if d else "false"
    if isinstance(d, (list, tuple)):
        return "[" + ", ".join(_default_text(dataclasses.replace(k, default=x)) for x in d) + "]"
    if isinstance(d, dict):
        return "{" + ", ".join(f"{a}: {b}" for a, b in d.items()) + "}"
    if isinstance(d, float):
        return f"{d:g}"
    return str(d) if d != "" else "''"


def format_keys(cls: type, prefix: str = "", markdown: bool = False) -> str:
    """`lorafw keys [PREFIX]`: one key per line (or a Markdown table: docs/reference/keys.md)."""
    rows = [k for k in iter_keys(cls) if k.path.startswith(prefix)]
    if markdown:
        lines = ["| key | default | type | what it does | kohya |", "|---|---|---|---|---|"]
        for k in rows:
            kohya = ", ".join(f"`{n}`" for n in k.kohya)
            doc = k.doc.replace("|", "\\|")
            lines.append(f"| `{k.path}` | `{_default_text(k)}` | {k.constraint.replace('|', '/')} | {doc} | {kohya} |")
        return "\n".join(lines)
    w1 = max((len(k.path) for k in rows), default=0)
    w2 = min(max((len(_default_text(k)) for k in rows), default=0), 24)
    w3 = min(max((len(k.constraint) for k in rows), default=0), 34)
    out = []
    for k in rows:
        kohya = f" (kohya: {', '.join(k.kohya)})" if k.kohya else ""
        out.append(f"{k.path:<{w1}}  {_default_text(k):<{w2}}  {k.constraint:<{w3}}  {k.doc}{kohya}".rstrip())
    return "\n".join(out)
