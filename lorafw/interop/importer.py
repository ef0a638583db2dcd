"""`lorafw import FILE`: read a user's config in any dialect, classify every setting, write a recipe or refuse.

The thin I/O shell around dialects.py (what the file says, as sd-scripts would run it) and classify.py
(what lorafw makes of each setting). Nothing that changes training is dropped silently: if any setting is
not honoured the import writes nothing and exits 2 (or, with --lenient, writes the recipe with a header
listing what it ignores). The report is the same on success and on refusal (`report()`, `--json`).
The recipe also holds what was left behind as data, its `imported` section (config/spec.py ImportedSpec):
a run of the recipe keeps it in config.yaml and run.json, and report.html shows it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import tomllib

from lorafw.config.compose import compose_dict
from lorafw.config.validate import spec_from_dict
from lorafw.errors import ConfigError, LorafwError
from lorafw.interop.argstrings import Problem
from lorafw.interop.classify import Imported, classify
from lorafw.interop.dialects import Source, detect, from_gui_json, from_gui_trainer, from_sd_scripts
from lorafw.interop.kohya import NULLS
from lorafw.models.load import inspect_base_model
from lorafw.outputs.atomic import atomic_write

COLAB_DATASET = "dataset_config.toml"  # the Colab writes it next to training_config.toml


def read_doc(path: Path) -> dict[str, Any]:
    """A TOML or JSON file as a dict; an unreadable file is a LorafwError naming it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LorafwError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise LorafwError(f"{path} cannot be read ({e})") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise LorafwError(f"{path} is not valid JSON ({e})") from None
    else:
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise LorafwError(f"{path} is not valid TOML ({e})") from None
    if not isinstance(doc, dict):
        raise LorafwError(f"{path}: expected a mapping of settings, found {type(doc).__name__}")
    return doc


def load_source(path: Path, dataset_config: Path | None = None) -> Source:
    """The file (and its dataset config) in whichever dialect it is written."""
    doc = read_doc(path)
    dialect = detect(doc, path.suffix.lower() == ".json")
    if dialect == "unknown JSON":
        raise LorafwError(f"{path}: a JSON file lorafw does not recognise (it reads the bmaltais kohya_ss GUI's saved "
                          "configs, which hold LoRA_type and max_resolution)")
    if dialect == "bmaltais GUI JSON":
        src = from_gui_json(doc)
        if doc.get("dataset_config"):
            dataset_config = dataset_config or _relative(path, doc["dataset_config"])
            src.dataset = read_doc(dataset_config)
        return src
    if dialect == "GUI trainer TOML":
        return from_gui_trainer(doc)
    named = doc.get("dataset_config") or next((s["dataset_config"] for s in doc.values()
                                                if isinstance(s, dict) and s.get("dataset_config")), None)
    dc = dataset_config or (_relative(path, named) if named else None)
    if dc is None and dialect.startswith("Colab") and (path.parent / COLAB_DATASET).is_file():
        dc = path.parent / COLAB_DATASET
    src = from_sd_scripts(doc, read_doc(dc) if dc else None, dialect)
    if dc:
        src.dialect += " + dataset config"
    return src


def _relative(path: Path, named: Any) -> Path:
    p = Path(str(named)).expanduser()
    return p if p.is_absolute() else path.parent / p


def import_config(path: Path, dataset_config: Path | None = None) -> Imported:
    """Read, classify and (for values that validate) check: the full Imported result."""
    src = load_source(path, dataset_config)
    imp = classify(src)
    if src.lorafw:  # `lorafw export` wrote the exact values: they are the run
        _exact(imp, src.lorafw)
    if imp.groups.get("base_model") == "auto":
        arch = checkpoint_arch(imp.values.get("base_model.path"))
        if arch:
            imp.groups["base_model"] = arch
            imp.notes[-1] = f"base_model={arch}: read from the checkpoint's own tensors"
    _validate(imp)
    return imp


def _exact(imp: Imported, section: dict[str, Any]) -> None:
    imp.values = {k: v for k, v in section.items() if not k.startswith("groups.") and k != NULLS}
    imp.values |= {k: None for k in section.get(NULLS, [])}
    imp.groups = {k[len("groups."):]: v for k, v in section.items() if k.startswith("groups.")}
    imp.groups.pop("network", None), imp.groups.pop("scheduler", None)  # the values say them exactly
    imp.not_honoured = []
    imp.notes.append("the [lorafw] section written by `lorafw export` holds the exact values")


def checkpoint_arch(model: Any) -> str | None:
    """sd15 / sdxl from the checkpoint's header when it is on this machine; None otherwise."""
    if not model:
        return None
    p = Path(str(model)).expanduser()
    if not p.exists():
        return None
    try:
        return inspect_base_model(p).arch
    except LorafwError:
        return None  # an unreadable file: the run's own checks will say so


def _validate(imp: Imported) -> None:
    """Compose the recipe as it would be written; a value lorafw refuses is not honoured (named)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "imported.yaml"
        for _ in range(8):
            out.write_text(recipe_yaml(imp, "validation"))
            try:
                spec_from_dict(compose_dict(str(out), _placeholders(imp)), check_paths=False, need_model=False)
                return
            except ConfigError as e:
                moved = False
                for prob in e.problems:
                    keys = [k.split("[", 1)[0].strip() for k in prob.split(":", 1)[0].split(" / ")]
                    for k in [k for k in imp.values if any(k == key or k.startswith(key + ".") for key in keys)]:
                        value = imp.values.pop(k)
                        origin = imp.imported_from.pop(k, k)
                        imp.not_honoured.append(Problem(origin, value, f"lorafw refuses it as {prob}"))
                        moved = True
                if not moved:
                    imp.not_honoured += [Problem("(recipe)", None, p) for p in e.problems]
                    return


def _placeholders(imp: Imported) -> list[str]:
    """Overrides that stand in for paths the recipe leaves to the command line."""
    out = []
    if "base_model.path" not in imp.values:
        out.append("base_model.path=/path/to/model.safetensors")
    if "dataset.root" not in imp.values and not imp.values.get("dataset.folders"):
        out.append("dataset.root=/path/to/dataset")
    return out


def _show(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else repr(v)


def _text(text: str) -> str:
    """Text that OmegaConf will not read as an interpolation (`${...}`) when the recipe is composed."""
    return str(text).replace("${", "$ {")


def _setting(p: Problem) -> dict[str, str]:
    """One left-behind setting as the recipe records it (ImportedSetting), its value as JSON; a `${` in the value is
    written with JSON's escape for the brace, so it is not an interpolation and still decodes to the same value."""
    return {"setting": _text(p.key), "value": json.dumps(p.value, default=str).replace("${", "$\\u007b"),
            "why": _text(p.why)}


def import_record(imp: Imported, source: str, ignored: list[Problem] | None = None) -> dict[str, Any]:
    """The recipe's `imported` section: the file, what --lenient left out (`ignored`), what has no effect, the notes."""
    return {"source": _text(source), "not_honoured": [_setting(p) for p in ignored or []],
            "no_effect": [_setting(p) for p in imp.no_effect], "notes": [_text(n) for n in imp.notes if n]}


def recipe_yaml(imp: Imported, source: str, ignored: list[Problem] | None = None) -> str:
    """A lorafw recipe: `# @package _global_`, group overrides, the values (nested YAML), the import's record
    (`imported`) and, as comments for the reader, what it ignores and what had no effect."""
    from omegaconf import OmegaConf

    nested: dict[str, Any] = {}
    for key, value in sorted(imp.values.items()):
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    nested["imported"] = import_record(imp, source, ignored)
    lines = ["# @package _global_", f"# Imported by `lorafw import` from {source}.",
             "# Run it: lorafw +recipe=THIS_FILE.yaml   (print it resolved: lorafw +recipe=THIS_FILE.yaml --cfg job)"]
    if ignored:
        lines.append("# WRITTEN WITH --lenient: these settings change training in kohya and are NOT in this recipe:")
        lines += [f"#   {p.key} = {_show(p.value)}: {p.why}" for p in ignored]
    if imp.groups:
        lines.append("defaults:")
        lines += [f"  - override /{g}: {o}" for g, o in sorted(imp.groups.items())]
    body = OmegaConf.to_yaml(OmegaConf.create(nested))
    tail = []
    if imp.no_effect:
        tail.append("# Settings with no effect in lorafw:")
        tail += [f"#   {p.key} = {_show(p.value)}" + (f"  ({p.why})" if p.why else "") for p in imp.no_effect]
    tail += [f"# note: {n}" for n in imp.notes if n]
    return "\n".join(lines) + "\n\n" + body + ("\n" + "\n".join(tail) + "\n" if tail else "")


def write_recipe(imp: Imported, source: str, out: Path, lenient: bool = False) -> Path | None:
    """Write the recipe unless something is not honoured (then None), or anyway with `lenient`."""
    if imp.not_honoured and not lenient:
        return None
    atomic_write(out, recipe_yaml(imp, source, imp.not_honoured))
    return out


def report(imp: Imported, recipe: Path | None) -> dict[str, Any]:
    """The machine-readable report (`lorafw import --json`), the same shape on success and on refusal."""
    return {
        "recipe": str(recipe) if recipe else None,
        "dialect": imp.dialect,
        "groups": imp.groups,
        "imported": dict(sorted(imp.values.items())),
        "no_effect": [{"key": p.key, "value": p.value, "why": p.why} for p in imp.no_effect],
        "not_honoured": [{"key": p.key, "value": p.value, "why": p.why} for p in imp.not_honoured],
        "notes": imp.notes,
    }


def report_text(imp: Imported, src: Path, recipe: Path | None, lenient: bool) -> str:
    """What `lorafw import` prints."""
    lines = [f"lorafw import: {src} ({imp.dialect})" + (f" → {recipe}" if recipe else "")]
    lines.append(f"  {len(imp.values)} settings imported; " + ", ".join(f"{g}={o}" for g, o in sorted(imp.groups.items())))
    if imp.no_effect:
        lines.append(f"  no effect in lorafw ({len(imp.no_effect)}): " + ", ".join(p.key for p in imp.no_effect))
    if imp.not_honoured:
        head = "IGNORED (--lenient)" if lenient else "NOT honoured — nothing written"
        lines.append(f"  {head} ({len(imp.not_honoured)}):")
        lines += [f"    {p.key} = {_show(p.value)}: {p.why}" for p in imp.not_honoured]
        if not lenient:
            lines.append("  each changes training; lorafw will not train something else silently. "
                         "Remove them from the file, or pass --lenient to write the recipe without them.")
    lines += [f"  note: {n}" for n in imp.notes if n]
    if recipe:
        lines.append(f"run it: lorafw +recipe={recipe}" + ("" if "base_model.path" in imp.values else " base_model.path=...")
                     + ("" if "dataset.root" in imp.values or imp.values.get("dataset.folders") else " dataset.root=..."))
    return "\n".join(lines)
