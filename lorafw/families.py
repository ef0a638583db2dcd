"""Model families by name: `get(spec.base_model.arch)` is the family a run trains.

Every family, the built-in ones included, is registered under the `lorafw.architectures` entry-point group;
lorafw's own pyproject.toml lists sd15 and sdxl there, and another package adds a family the same way:

    [project.entry-points."lorafw.architectures"]
    myarch = "mypkg.arch:ARCH"

The entry point names an object implementing lorafw.archs.protocol.Architecture. Listing the names imports no
family (so `lorafw --help` and config validation stay light); `get` imports the one asked for, by its entry point:
a lookup by name, so this module sits at the bottom of the layers and any layer may ask for a family.
"""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

from lorafw.errors import ConfigError, ModelError

ENTRY_POINT_GROUP = "lorafw.architectures"
# what the trainer reads of a family (lorafw/archs/protocol.py): checked when the family is first asked for, so a
# plugin that lacks one is named before any weights load, not an epoch in
METHODS = ("inspect", "load", "encode_text", "conditioning", "denoise", "denoiser_namer", "renderer")
ATTRIBUTES = ("name", "label", "te_prefixes", "predictions", "targets", "base_model_version", "modelspec_architecture",
              "modelspec_implementation")


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available() -> list[str]:
    """Registered family names, without importing any of them."""
    return sorted(_entry_points())


@lru_cache(maxsize=None)
def _load(name: str) -> Any:
    return _entry_points()[name].load()


def get(name: str) -> Any:
    """The family registered as `name`, or a ConfigError listing those that are."""
    eps = _entry_points()
    if name not in eps:
        have = ", ".join(sorted(eps)) or "none (reinstall lorafw: `pip install -e .` registers its families)"
        raise ConfigError([f"base_model.arch: no architecture is registered as {name!r}; available: {have}"])
    try:
        arch = _load(name)
    except Exception as e:  # a broken plugin: name it, whatever it raised
        raise ConfigError([f"base_model.arch={name}: the package registering it ({eps[name].value}) failed to load: "
                           f"{type(e).__name__}: {e}; reinstall or fix that package"]) from None
    missing = ([m for m in METHODS if not callable(getattr(arch, m, None))]
               + [a for a in ATTRIBUTES if not hasattr(arch, a)])
    if missing:
        raise ConfigError([f"base_model.arch={name}: the registered object {eps[name].value} is not an architecture "
                           f"(it lacks {', '.join(missing)}; see lorafw/archs/protocol.py)"])
    return arch


def detect(path: str | Path) -> str:
    """The registered family whose `inspect` accepts the checkpoint at `path` (header only, no weights).
    With none, a ModelError giving each family's reason (each says what it looked for, or what the file is)."""
    errors: list[ModelError] = []
    for name in available():
        try:
            get(name).inspect(str(path))
            return name
        except ModelError as e:
            errors.append(e)
        except Exception as e:  # a plugin's own bug must not hide the other families' answers
            errors.append(ModelError(f"{path}: the {name} family failed to read it ({type(e).__name__}: {e})"))
    if not errors:
        raise ModelError(f"{path}: no architecture is registered")
    if len(errors) == 1:
        raise errors[0]
    said: dict[str, list[str]] = {}  # each family's reason, families with the same reason together
    for name, err in zip(available(), errors):
        said.setdefault(str(err), []).append(name)
    raise ModelError(f"{path}: no registered model family recognises this file:\n"
                     + "\n".join(f"  - {', '.join(names)}: {why}" for why, names in said.items()))
