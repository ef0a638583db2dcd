"""`lorafw import` / `lorafw export`: the file side of lorafw/interop/kohya.py."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from lorafw.errors import ConfigError, LorafwError
from lorafw.interop.kohya import Imported, export_kohya, flatten_gui, flatten_kohya, groups_of, recipe_yaml, to_lorafw


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise LorafwError(f"{path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise LorafwError(f"{path} is not valid TOML ({e})") from None


def is_gui(doc: dict[str, Any]) -> bool:
    return "subsets" in doc or any(k.endswith("_args") and isinstance(v, dict) and ("args" in v or "dataset_args" in v)
                                   for k, v in doc.items())


def import_toml(path: Path, dataset_config: Path | None = None) -> tuple[Imported, str]:
    """Read a GUI-trainer TOML or an sd-scripts config (+ dataset config) → (Imported, which layout)."""
    doc = read_toml(path)
    if is_gui(doc):
        flat, subsets, dataset = flatten_gui(doc)
        kind = "GUI trainer TOML"
        extra = None
    else:
        dc = dataset_config
        named = None
        for section in doc.values():
            if isinstance(section, dict) and "dataset_config" in section:
                named = section["dataset_config"]
        named = named or doc.get("dataset_config")
        if dc is None and named:
            dc = Path(str(named))
            if not dc.is_absolute():
                dc = path.parent / dc
        flat, subsets, dataset = flatten_kohya(doc, read_toml(dc) if dc else None)
        flat.pop("dataset_config", None)
        kind = "sd-scripts config" + (" + dataset config" if dc else "")
        extra = doc.get("lorafw")
    imp = to_lorafw(flat, subsets, dataset, extra)
    if "base_model" not in imp.groups:
        imp.groups["base_model"] = detect_arch(imp.values.get("base_model.path"))
    imp.groups.setdefault("optimizer", "adamw")
    imp.groups.setdefault("scheduler", "constant")
    if imp.groups["scheduler"] == "cosine_with_restarts":
        imp.groups["scheduler"] = "cosine_restarts"  # the option file's name
    if imp.values.get("dataset.folders"):
        imp.groups.setdefault("dataset", "concepts")
    return imp, kind


def detect_arch(model: Any) -> str:
    """sd15 or sdxl from the checkpoint itself when it is on this machine (header only); sd15 otherwise."""
    if not model:
        return "sd15"
    p = Path(str(model)).expanduser()
    if not p.exists():
        return "sd15"
    try:
        from lorafw.models.load import inspect_base_model

        return inspect_base_model(p).arch
    except Exception:  # an unreadable or unusual file: the run's own checks will say so
        return "sd15"


def validated_recipe(imp: Imported, source: str, out: Path) -> tuple[Path, list[str]]:
    """Write the recipe; values that do not validate move to the not-understood list. → (path, problems left)."""
    from lorafw.outputs.atomic import atomic_write as atomic_write_text
    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict

    problems: list[str] = []
    for _ in range(10):
        atomic_write_text(out, recipe_yaml(imp, source))
        try:
            spec_from_dict(compose_dict(str(out), _placeholders(imp)), check_paths=False, need_model=False)
            return out, []
        except ConfigError as e:
            problems = e.problems
        moved = False
        for prob in problems:
            key = prob.split(":", 1)[0].split("[", 1)[0].strip()
            for k in [k for k in imp.values if k == key or k.startswith(key + ".")]:
                imp.unknown[f"(lorafw) {k}"] = imp.values.pop(k)
                imp.notes.append(f"{k} was dropped: {prob}")
                moved = True
        if not moved:
            break
    return out, problems


def _placeholders(imp: Imported) -> list[str]:
    """Overrides that stand in for paths the recipe leaves to the command line."""
    out = []
    if "base_model.path" not in imp.values:
        out.append("base_model.path=/path/to/model.safetensors")
    if "dataset.root" not in imp.values and not imp.values.get("dataset.folders"):
        out.append("dataset.root=/path/to/dataset")
    return out


def export_run(run_dir: Path, out_dir: Path | None = None) -> tuple[Path, Path, str]:
    """A run's resolved spec → kohya config + dataset config TOMLs, and the sd-scripts command that uses them."""
    import json

    import tomli_w

    from lorafw.outputs.atomic import atomic_write as atomic_write_text
    from lorafw.config.compose import load_spec
    from lorafw.paths import expand
    from lorafw.data.folders import parse_folder_name

    spec = load_spec(run_dir, check_paths=False)
    record = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    total = (record.get("plan") or {}).get("total_steps")
    dirs = []
    if spec.dataset.root and expand(spec.dataset.root).is_dir():
        for d in sorted(p for p in expand(spec.dataset.root).iterdir() if p.is_dir() and not p.name.startswith(".")):
            reps, _ = parse_folder_name(d.name)
            if reps is not None:
                dirs.append((str(d), reps, {}))
    for f in spec.dataset.folders:
        extra = {k: v for k, v in {"keep_tokens": f.keep_tokens, "is_reg": f.is_reg, "shuffle_caption": f.shuffle_caption,
                                    "flip_aug": f.flip_aug, "caption_extension": f.caption_extension}.items() if v is not None}
        reps, _ = parse_folder_name(expand(f.path).name)
        dirs.append((str(expand(f.path)), f.repeats or reps or spec.dataset.default_repeats or 1, extra))
    config, dataset = export_kohya(spec, total, dirs)
    out = out_dir or run_dir / "kohya"
    cfg_path, ds_path = out / "config.toml", out / "dataset.toml"
    header = "# Written by `lorafw export`; sd-scripts ignores the [lorafw] section, `lorafw import` reads it back exactly.\n"
    atomic_write_text(cfg_path, header + tomli_w.dumps(config))
    atomic_write_text(ds_path, "# Written by `lorafw export`.\n" + tomli_w.dumps(dataset))
    script = "sdxl_train_network.py" if spec.base_model.arch == "sdxl" else "train_network.py"
    procs = f"--multi_gpu --num_processes {spec.train.num_processes} " if spec.train.num_processes > 1 else ""
    command = f"accelerate launch {procs}{script} --config_file {cfg_path} --dataset_config {ds_path}"
    return cfg_path, ds_path, command


__all__ = ["import_toml", "validated_recipe", "export_run", "groups_of"]
