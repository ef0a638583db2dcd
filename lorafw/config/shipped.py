"""The config lorafw ships: conf/ (Hydra's groups and the guide's recipes) and where it is. No Hydra here, so
`lorafw --help` and `lorafw recipes` list the groups and recipes without loading it."""

from __future__ import annotations

from pathlib import Path


def conf_dir() -> Path:
    """The Hydra config root: lorafw/conf when installed, the repository's conf/ in a checkout."""
    pkg = Path(__file__).resolve().parents[1]
    for candidate in (pkg / "conf", pkg.parent / "conf"):
        if (candidate / "config.yaml").is_file() and (candidate / "recipe").is_dir():
            return candidate
    raise RuntimeError(f"lorafw's conf/ folder is missing next to {pkg}; reinstall lorafw")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in (conf_dir() / "recipe").glob("*.yaml"))
