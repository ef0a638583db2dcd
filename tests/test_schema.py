"""The one schema (lorafw/config/spec.py): every key's default validates, every wrong type or out-of-range
value is refused naming the key, and what is derived from it (conf/ defaults, `lorafw keys`, the README
table, the importer's kohya names) agrees with it."""

from __future__ import annotations

import ast
import copy
import re
import types
import typing
from pathlib import Path

import pytest
import yaml

from lorafw.config.schema import KeyInfo, _unwrap, defaults_tree, format_keys, iter_keys, kohya_names
from lorafw.config.spec import RunSpec
from lorafw.config.validate import spec_from_dict
from lorafw.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
KEYS = list(iter_keys(RunSpec))


def _base() -> dict:
    data = defaults_tree(RunSpec)
    data["base_model"]["path"] = "model.safetensors"
    data["dataset"]["root"] = "data"
    data["dataset"]["folders"] = [{"path": "data/3_x"}]
    for k in ("unet_lr", "text_encoder_lr"):  # interpolations Hydra resolves
        data["optimizer"][k] = data["optimizer"]["lr"]
    return data


def _set(data: dict, path: str, value) -> dict:
    data = copy.deepcopy(data)
    node = data
    parts = path.replace("[].", ".0.").split(".")
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    node[parts[-1]] = value
    return data


def _refused(data: dict, key: str) -> str:
    with pytest.raises(ConfigError) as e:
        spec_from_dict(data, check_paths=False, need_model=False)
    assert key.replace("[]", "[0]") in str(e.value), str(e.value)
    return str(e.value)


def _wrong_type(k: KeyInfo):
    tp, _ = _unwrap(k.type)
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return "__not_an_option__"
    if tp is bool:
        return "sometimes"
    if tp in (int, float):
        return "abc"
    if origin is tuple:
        return 5
    if origin is dict:
        return [1, 2]
    if origin in (typing.Union, types.UnionType):  # dataset.resolution: N or [W, H] (or "W,H")
        return "abc"
    if tp is str:
        return [1, 2]
    return None


def test_schema_defaults_validate():
    spec, _ = spec_from_dict(_base(), check_paths=False, need_model=False)
    assert spec.network.dim == 16


@pytest.mark.parametrize("k", KEYS, ids=lambda k: k.path)
def test_every_key_is_documented_and_refuses_a_wrong_type(k: KeyInfo):
    assert k.doc, f"{k.path} has no one-line doc"
    bad = _wrong_type(k)
    assert bad is not None, f"{k.path}: no wrong value known for {k.type}"
    _refused(_set(_base(), k.path, bad), k.path)


RANGED = [k for k in KEYS if any(b is not None for b in (k.ge, k.gt, k.le, k.lt))]


@pytest.mark.parametrize("k", RANGED, ids=lambda k: k.path)
def test_every_ranged_key_refuses_out_of_range_values(k: KeyInfo):
    tp, _ = _unwrap(k.type)
    step = 1 if tp is int else 0.5
    outside = []
    if k.ge is not None:
        outside.append(k.ge - step)
    if k.gt is not None:
        outside.append(k.gt)
    if k.le is not None:
        outside.append(k.le + step)
    if k.lt is not None:
        outside.append(k.lt)
    for value in outside:
        msg = _refused(_set(_base(), k.path, value), k.path)
        assert "must be" in msg
    inside = k.ge if k.ge is not None else (k.le if k.le is not None else None)
    if inside is not None:  # the bound itself is allowed
        spec_from_dict(_set(_base(), k.path, tp(inside)), check_paths=False, need_model=False)


def _yaml_keys(node, prefix=""):
    for key, value in node.items():
        if key in ("defaults", "hydra"):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict) and not path.endswith(".args"):
            yield from _yaml_keys(value, path + ".")
        else:
            yield path


def test_conf_option_files_only_set_keys_the_schema_declares():
    known = {k.path for k in KEYS}
    for f in sorted((ROOT / "conf").rglob("*.yaml")):
        rel = f.relative_to(ROOT / "conf")
        if rel.parts[0] in ("launcher", "hparams_search"):
            continue
        data = yaml.safe_load(f.read_text()) or {}
        is_global = rel.parts[0] in ("recipe",) or rel.name == "config.yaml" or "@package _global_" in f.read_text()
        package = "" if is_global else rel.parts[0] + "."
        for path in _yaml_keys(data, package):
            assert path in known or path.startswith("optimizer.args."), f"{rel}: {path} is not a schema key"


def test_root_config_holds_no_key_defaults():
    data = yaml.safe_load((ROOT / "conf" / "config.yaml").read_text())
    assert set(data) == {"defaults", "hydra"}, "every default is declared in lorafw/config/spec.py"


def test_keys_lists_every_key_once_with_its_doc_and_kohya_name():
    text = format_keys(RunSpec)
    lines = text.splitlines()
    assert len(lines) == len(KEYS)
    line = next(ln for ln in lines if ln.startswith("network.dim "))
    assert re.search(r"network\.dim\s+16\s+int ≥ 1\s+rank of each adapter \(kohya: network_dim\)", line), line
    assert format_keys(RunSpec, "network.").count("\n") + 1 == sum(k.path.startswith("network.") for k in KEYS)


def test_importer_maps_kohya_names_from_the_schema():
    from lorafw.interop.kohya import DIRECT, TRANSLATED

    names = kohya_names(RunSpec)
    assert names["network_dim"] == "network.dim" and names["learning_rate"] == "optimizer.lr"
    assert DIRECT == {k: v for k, v in names.items() if k not in TRANSLATED}


# -- declared once: kohya's names live in the schema only ----------------------------------------------------------
KOHYA_FACING = ("lorafw/interop/", "lorafw/outputs/metadata.py")  # code that reads or writes kohya's names
# (file, name): (how many times, why) for a literal that is spelled like a kohya name of the schema and is not one
NOT_KOHYA = {
    ("lorafw/interop/classify.py", "warmup_ratio"): (1, "SchedulerSpec's own field in the scheduler catalog's list of "
                                                        "the fields a scheduler uses (optim/catalog.py)"),
}


def kohya_spellings(tree: ast.AST, facing: bool, names: set[str], lorafw_names: set[str], paths: set[str]) -> list[str]:
    """String literals of a module that are a kohya argument or ss_* name of the schema. lorafw kept many of kohya's
    names for its own keys (seed, resolution, ip_noise_gamma): such a name can only be told apart where code faces
    kohya (KOHYA_FACING); elsewhere it is lorafw's own name. A full lorafw key (`seed`) is lorafw's."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            v = node.value
            if v in names and v not in paths and (facing or v not in lorafw_names or v.startswith("ss_")):
                out.append(v)
    return out


def test_kohya_names_and_ss_names_are_spelled_only_in_the_schema():
    """Adding a kohya option is one key() and its use: no other module of lorafw/ spells a kohya argument or ss_*
    metadata name that a key declares; it asks the schema (`K[lorafw key]`, `ss_names`)."""
    from lorafw.config.schema import kohya_keys, ss_names

    kohya = {n for k in kohya_keys(RunSpec).values() for n in k.kohya}
    ss = set(ss_names(RunSpec).values())
    assert {"ip_noise_gamma", "network_dim", "ss_ip_noise_gamma", "ss_network_dim"} <= kohya | ss
    lorafw_names = {k.path.rsplit(".", 1)[-1] for k in KEYS}
    paths = {k.path for k in KEYS}
    found: dict[tuple[str, str], int] = {}
    for f in sorted((ROOT / "lorafw").rglob("*.py")):
        rel = f.relative_to(ROOT).as_posix()
        if rel == "lorafw/config/spec.py":  # the schema
            continue
        for v in kohya_spellings(ast.parse(f.read_text(encoding="utf-8")), rel.startswith(KOHYA_FACING), kohya | ss,
                                 lorafw_names, paths):
            found[rel, v] = found.get((rel, v), 0) + 1
    spelled = {k: n for k, n in found.items() if NOT_KOHYA.get(k, (0, ""))[0] != n}
    assert not spelled, f"spelled outside lorafw/config/spec.py (ask the schema instead): {spelled}"


def test_the_check_finds_a_spelled_name():
    from lorafw.config.schema import kohya_keys, ss_names

    names = {n for k in kohya_keys(RunSpec).values() for n in k.kohya} | set(ss_names(RunSpec).values())
    lorafw_names, paths = {k.path.rsplit(".", 1)[-1] for k in KEYS}, {k.path for k in KEYS}
    code = ('NEUTRAL = {"ip_noise_gamma": (0,)}\nmeta = {"ss_network_dim": x}\nargs["network_dim"] = 4\n'
            'getattr(spec.train, "ip_noise_gamma")\nvalue_at(spec, "seed")\n')
    assert kohya_spellings(ast.parse(code), True, names, lorafw_names, paths) == [
        "ip_noise_gamma", "ss_network_dim", "network_dim", "ip_noise_gamma"]
    # outside kohya's side a name lorafw shares is lorafw's own; the others are still kohya's
    assert kohya_spellings(ast.parse(code), False, names, lorafw_names, paths) == ["ss_network_dim", "network_dim"]


def test_the_required_marker_is_written_once():
    """OmegaConf's "???" (a value the user must pass) is schema.REQUIRED everywhere."""
    where = [f"{f.relative_to(ROOT)}:{n.lineno}" for f in sorted((ROOT / "lorafw").rglob("*.py"))
             for n in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
             if isinstance(n, ast.Constant) and n.value == "???" and f.name != "schema.py"]
    assert not where, f'use lorafw.config.schema.REQUIRED instead of "???" at {where}'


def test_the_import_record_is_a_section_but_not_a_setting():
    import dataclasses

    from lorafw.config.spec import ImportedSetting, ImportedSpec, import_notes

    assert "imported" not in defaults_tree(RunSpec) and not any(k.path.startswith("imported") for k in KEYS)
    assert "imported" not in format_keys(RunSpec)
    plain, _ = spec_from_dict(_base(), check_paths=False)
    assert "imported" not in plain.to_dict() and import_notes(plain) is None  # an unimported run's config is as before
    rec = ImportedSpec("x.toml (sd-scripts TOML)", (ImportedSetting("color_aug", "true", "lorafw has no colour augmentation"),),
                       (), ("base_model=auto",))
    spec = dataclasses.replace(plain, imported=rec)
    assert spec == plain  # not compared: it changes nothing a run computes
    back, _ = spec_from_dict(spec.to_dict(), check_paths=False)
    assert back.imported == rec
    assert import_notes(spec) == {"source": "x.toml (sd-scripts TOML)", "notes": ["base_model=auto"], "no_effect": [],
                                  "not_honoured": [{"setting": "color_aug", "value": "true",
                                                    "why": "lorafw has no colour augmentation"}]}
    with pytest.raises(ConfigError, match="imported.not_honoured\\[0\\].settin: unknown key"):
        spec_from_dict({**spec.to_dict(), "imported": {"not_honoured": [{"settin": "x"}]}}, check_paths=False)
