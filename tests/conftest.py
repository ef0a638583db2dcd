"""Shared fixtures: tiny SD1.5-architecture models and datasets written to disk the way users have them,
and specs composed from the real conf/ (recipes in conf/recipe/) then shrunk to the tiny model."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `train.mixed_precision=auto` picks bf16 on CPUs with avx512_bf16/AMX (lorafw/precision.py): the suite takes
# every CPU as a plain one, so runs use the same precision (fp32) and give the same numbers on any CI machine.
os.environ.setdefault("LORAFW_CPU_FLAGS", "")
warnings.filterwarnings("ignore", category=FutureWarning)
logging.getLogger("transformers").setLevel(logging.ERROR)


@pytest.fixture(scope="session", autouse=True)
def model_hash_cache(tmp_path_factory) -> None:
    """The base models' hash cache (lorafw/outputs/model_hash.py) in the session's temporary folder, not ~/.cache
    (the CLI's subprocesses inherit it)."""
    os.environ.setdefault("LORAFW_HASH_CACHE", str(tmp_path_factory.mktemp("hash-cache") / "model_hashes.json"))


@pytest.fixture(scope="session")
def tiny_parts():
    from lorafw.models.tiny import build_sd15

    return build_sd15(seed=0)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_parts) -> Path:
    """A tiny SD1.5-architecture checkpoint as one original-layout .safetensors."""
    from lorafw.models.tiny import save_single_file

    return save_single_file(tiny_parts, tmp_path_factory.mktemp("models") / "tiny-sd15.safetensors")


@pytest.fixture(scope="session")
def tiny_diffusers(tmp_path_factory, tiny_parts) -> Path:
    """The same weights as a diffusers folder."""
    from lorafw.models.tiny import save_diffusers_folder

    return save_diffusers_folder(tiny_parts, tmp_path_factory.mktemp("models") / "tiny-sd15-diffusers")


def write_image(path: Path, size: tuple[int, int], colour: tuple[int, int, int], mode: str = "RGB") -> Path:
    from PIL import Image, ImageDraw

    im = Image.new(mode, size, colour if mode == "RGB" else colour + (255,))
    d = ImageDraw.Draw(im)
    w, h = size
    d.ellipse((w * 0.25, h * 0.25, w * 0.75, h * 0.75), fill=(255 - colour[0], 255 - colour[1], 255 - colour[2]))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    return path


def picture(seed: int, size=(256, 256)) -> Any:
    """A distinct busy picture: random shapes on a random background."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.new("RGB", size, tuple(int(c) for c in rng.integers(0, 255, 3)))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = rng.integers(0, size[0] - 40), rng.integers(0, size[1] - 40)
        box = (int(x0), int(y0), int(x0 + rng.integers(20, 120)), int(y0 + rng.integers(20, 120)))
        fill = tuple(int(c) for c in rng.integers(0, 255, 3))
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=fill)
    return im


def lorafw_main_without_torch(*args: str) -> str:
    """stdout of `lorafw ARGS` run in a fresh interpreter, after checking it exited 0 without importing torch
    (the commands that only read configs and folders must start in a fraction of a second)."""
    import subprocess
    import sys

    code = f"import sys; from lorafw.cli import main; rc = main({list(args)!r}); print('TORCH', 'torch' in sys.modules, rc)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("TORCH False 0"), out[-500:]
    return out[: out.rindex("TORCH")]


def scanned_dataset(root: Path, *extra: str) -> Any:
    """TrainData of the folders under `root` at 64 px buckets (64-128), without any model."""
    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict
    from lorafw.data.dataset import build
    from lorafw.data.folders import scan

    spec, _ = spec_from_dict(compose_dict(None, [f"dataset.root={root}", "base_model.path=-", "dataset.resolution=64",
                                                 "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=128", *extra]),
                             need_model=False)
    return build(scan(spec.dataset)[0], spec.dataset)


def make_folder(root: Path, name: str, sizes: list[tuple[int, int]], captions: list[str] | None = None) -> Path:
    folder = root / name
    for i, size in enumerate(sizes):
        colour = ((60 * i) % 255, (110 + 40 * i) % 255, (200 - 30 * i) % 255)
        write_image(folder / f"{i:03d}.png", size, colour)
        if captions is not None:
            (folder / f"{i:03d}.txt").write_text(captions[i % len(captions)] + "\n")
    return folder


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """root/2_toy/ with 4 square images and tag captions (one 64×64 bucket)."""
    root = tmp_path_factory.mktemp("data") / "toy"
    make_folder(root, "2_toy", [(64, 64), (80, 80), (96, 96), (64, 64)],
                ["toy, red circle, white background", "toy, blue circle", "toy, green circle, simple", "toy, circle"])
    return root


def tiny_overrides(model: Path, data: Path, out: Path) -> list[str]:
    """Shrink any recipe to the tiny model: small images, one epoch, a private output folder."""
    return [
        f"base_model.path={model}",
        f"dataset.root={data}",
        "dataset.resolution=64",
        "dataset.min_bucket_reso=64",
        "dataset.max_bucket_reso=128",
        "train.epochs=1",
        f"output.dir={out}",
        "output.name=toy",
    ]


@pytest.fixture
def compose_tiny(tiny_model, tiny_dataset, tmp_path):
    """compose_tiny("sd15_character", "train.epochs=2", ...) → a validated RunSpec on the tiny model."""
    from lorafw.config.compose import compose

    def make(recipe: str | None = "sd15_character", *overrides: str, data: Path | None = None, model: Path | None = None):
        base = tiny_overrides(model or tiny_model, data or tiny_dataset, tmp_path / "run")
        return compose(recipe, base + list(overrides))

    return make


@pytest.fixture(scope="session")
def tiny_xl_parts():
    from lorafw.models.tiny import build_sdxl

    return build_sdxl(seed=0)


@pytest.fixture(scope="session")
def tiny_xl_model(tmp_path_factory, tiny_xl_parts) -> Path:
    """A tiny SDXL-architecture checkpoint in the original single-file layout (as Pony V6 XL ships)."""
    from lorafw.models.tiny import save_single_file

    return save_single_file(tiny_xl_parts, tmp_path_factory.mktemp("models") / "tiny-sdxl.safetensors")


@pytest.fixture(scope="session")
def tiny_xl_diffusers(tmp_path_factory, tiny_xl_parts) -> Path:
    from lorafw.models.tiny import save_diffusers_folder

    return save_diffusers_folder(tiny_xl_parts, tmp_path_factory.mktemp("models") / "tiny-sdxl-diffusers")


def with_marker_tensors(src: Path, dst: Path, *markers: str, metadata: dict[str, str] | None = None) -> Path:
    """A copy of a single-file checkpoint with NoobAI's empty marker tensors (`v_pred`, `ztsnr`) and/or metadata."""
    import torch
    from safetensors.torch import load_file, save_file

    sd = load_file(str(src))
    sd.update({m: torch.zeros(0) for m in markers})
    save_file(sd, str(dst), metadata=metadata)
    return dst


@pytest.fixture(scope="session")
def tiny_xl_vpred_model(tmp_path_factory, tiny_xl_model) -> Path:
    """The tiny SDXL checkpoint marked as NoobAI-XL V-Pred marks itself: `v_pred` and `ztsnr` tensors."""
    return with_marker_tensors(tiny_xl_model, tmp_path_factory.mktemp("models") / "tiny-sdxl-vpred.safetensors",
                               "v_pred", "ztsnr")


def load_script(path: Path):
    """A script of checks/ or benchmarks/ (not a package) imported as a module, registered under its file name
    (dataclasses look their module up)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[path.stem] = mod
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod
