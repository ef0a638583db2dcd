"""The one schema (lorafw/config/spec.py): every key's default validates, every wrong type or out-of-range
value is refused naming the key, and what is derived from it (conf/ defaults, `lorafw keys`, the README
table, the importer's kohya names) agrees with it."""

from __future__ import annotations

import copy
import re
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


def test_readme_key_table_is_the_schema():
    readme = (ROOT / "README.md").read_text()
    assert format_keys(RunSpec, markdown=True) in readme, "regenerate with: lorafw keys --markdown"


def test_importer_maps_kohya_names_from_the_schema():
    from lorafw.interop.kohya import DIRECT, TRANSLATED

    names = kohya_names(RunSpec)
    assert names["network_dim"] == "network.dim" and names["learning_rate"] == "optimizer.lr"
    assert DIRECT == {k: v for k, v in names.items() if k not in TRANSLATED}
