"""What kohya sd-scripts needs to run here, offline and on a CPU: its own venv, a torchvision stand-in, and the
CLIP tokenizer in the cache folder it reads (benchmarks/vs_kohya.py uses these; tests/test_vs_kohya.py tests them).

- The venv (`ensure_venv`): torch first (the same pin as lorafw's Makefile, so pip does not pull another
  build), then sd-scripts' requirements.txt from the registry, without its `-e .` line (train_network.py
  imports `library` from its own folder, so one venv serves any checkout). A requirement that does not
  install is skipped and named; a marker file keyed on the requirements reuses the venv next time.
- torchvision (`write_torchvision_shim`): sd-scripts imports it (library/train_util.py, library/utils.py), and
  the registry's torchvision for torch 2.13 is a CUDA build: its `_C` extension needs libtorch_cuda, so
  `import torchvision` raises "operator torchvision::nms does not exist" on a CPU torch (an error, not a
  warning). The registry has no CPU build. Training uses only `transforms.Compose`, `ToTensor`, `Normalize`
  and `functional.pil_to_tensor` (IMAGE_TRANSFORMS and the image-loading dataset), and for Anima
  `functional.resize` of a tensor with `InterpolationMode.NEAREST` (anima_models.prepare_embedded_sequence
  resizes the padding mask it concatenates, every step); the shim implements those with torchvision's
  semantics and is put first on PYTHONPATH of the kohya subprocess only. It has no
  dist-info, so transformers/diffusers, which look torchvision up by its installed metadata, see no
  torchvision and take no torchvision code path. Anything else raises, naming the shim.
  Where a working torchvision is installed (a CUDA machine), `needs_torchvision_shim` says so and no shim is used.
- The tokenizer (`write_tokenizer_cache`): without --tokenizer_cache_dir sd-scripts downloads
  openai/clip-vit-large-patch14's tokenizer. library/strategy_base.py `_load_tokenizer` first tries
  `os.path.join(cache_dir, model_id.replace("/", "_"))` with `CLIPTokenizer.from_pretrained`; the folders are
  filled from lorafw's bundled vocab.json + merges.txt with the hub folders' tokenizer_config.json values
  (model_max_length 77, which SdTokenizeStrategy reads as its window, and the special tokens).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TORCH_PIN = "torch==2.13.0"  # lorafw's Makefile pin: the CPU wheel on this machine
# model id → pad token, for each tokenizer sd-scripts loads for SD1.5 (the first) and SDXL (both)
TOKENIZERS = {"openai/clip-vit-large-patch14": "<|endoftext|>", "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k": "!"}
MARKER = ".lorafw-kohya-venv.json"


# -- requirements --------------------------------------------------------------------------------------------
def requirement_lines(text: str) -> list[str]:
    """sd-scripts' requirements.txt → the requirements to install: no comments, blank lines, `-e .`
    (the checkout itself) or other pip options."""
    out = []
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#") or line.startswith("-"):
            continue
        out.append(line)
    return out


def requirements_key(lines: list[str], torch_pin: str) -> str:
    """What a venv was made for: reuse it only for the same torch pin and requirement lines."""
    return hashlib.sha256(json.dumps([torch_pin, sorted(lines)]).encode()).hexdigest()[:16]


@dataclass
class VenvReport:
    """How the kohya venv came to be: created (with the seconds it took) or reused, and what was skipped."""

    python: Path
    created: bool
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)  # requirement → pip's last error line

    def describe(self) -> str:
        how = f"created in {self.seconds:.0f} s" if self.created else "reused"
        skipped = "; skipped (would not install): " + ", ".join(f"{k} ({v})" for k, v in self.skipped.items()) if self.skipped else ""
        return f"kohya venv {self.python.parent.parent} {how}{skipped}"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(venv: Path, sd_scripts: Path, torch_pin: str = TORCH_PIN, log=print) -> VenvReport:
    """The venv at `venv` with torch and sd-scripts' requirements, made on first use (from the registry)."""
    lines = requirement_lines((sd_scripts / "requirements.txt").read_text())
    key = requirements_key(lines, torch_pin)
    py = venv_python(venv)
    marker = venv / MARKER
    if py.is_file() and marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("key") == key:
            return VenvReport(py, False, 0.0, saved.get("skipped", {}))
        log(f"kohya venv {venv}: made for other requirements; installing these")
    t0 = time.perf_counter()
    if not py.is_file():
        log(f"kohya venv: creating {venv} (once; torch, then sd-scripts' requirements from the registry)")
        _checked([sys_python(), "-m", "venv", str(venv)], "create the kohya venv")
    pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _checked(pip + [torch_pin], f"install {torch_pin} into {venv} (pick another with --kohya-torch)")
    skipped: dict[str, str] = {}
    done = subprocess.run(pip + lines, capture_output=True, text=True)
    if done.returncode:  # one at a time, to name what does not install
        for req in lines:
            one = subprocess.run(pip + [req], capture_output=True, text=True)
            if one.returncode:
                err = [ln for ln in (one.stderr or one.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
                skipped[req] = (err[-1] if err else f"exit {one.returncode}")[:160]
                log(f"kohya venv: skipped {req}: {skipped[req]}")
    seconds = time.perf_counter() - t0
    marker.write_text(json.dumps({"key": key, "skipped": skipped, "seconds": round(seconds, 1)}))
    return VenvReport(py, True, seconds, skipped)


def _checked(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        lines = [ln for ln in (done.stderr + done.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
        raise SystemExit(f"vs_kohya: could not {what}:\n" + "\n".join(lines[-15:]))


def sys_python() -> str:
    """The base interpreter (not lorafw's venv): a venv made from inside another stays independent of it."""
    return getattr(sys, "_base_executable", None) or sys.executable


# -- torchvision ---------------------------------------------------------------------------------------------
SHIM_INIT = '''"""A stand-in for torchvision, written by lorafw's benchmarks/kohya_env.py for sd-scripts on a CPU torch.

The registry's torchvision for this torch is a CUDA build that cannot be imported on a CPU torch. sd-scripts'
training path uses only transforms.Compose/ToTensor/Normalize/InterpolationMode and functional.pil_to_tensor and
(Anima's DiT) functional.resize of a tensor at nearest, implemented here with torchvision's semantics. Anything else
raises, naming this file.
"""

__version__ = "0.0+lorafw-shim"


def __getattr__(name):
    raise AttributeError(f"torchvision.{name}: not in lorafw's torchvision stand-in ({__file__})")
'''

SHIM_TRANSFORMS = '''"""torchvision.transforms as far as sd-scripts' training uses it (see the package docstring)."""

import numpy as np
import torch

from . import functional  # noqa: F401  (transforms.functional.pil_to_tensor, resize)
from .functional import InterpolationMode  # noqa: F401


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


class ToTensor:
    """PIL image or HWC numpy array → CHW float tensor; uint8 input is scaled to [0, 1] (torchvision's rule)."""

    def __call__(self, pic):
        if isinstance(pic, np.ndarray):
            arr = pic[:, :, None] if pic.ndim == 2 else pic
            t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
            return t.float().div(255) if t.dtype == torch.uint8 else t
        t = functional.pil_to_tensor(pic)
        return t.float().div(255) if t.dtype == torch.uint8 else t.float()


class Normalize:
    """(x - mean) / std per channel; a one-element mean/std applies to every channel."""

    def __init__(self, mean, std, inplace=False):
        self.mean, self.std = mean, std

    def __call__(self, t):
        mean = torch.as_tensor(self.mean, dtype=t.dtype, device=t.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=t.dtype, device=t.device).view(-1, 1, 1)
        return (t - mean) / std


def __getattr__(name):
    raise AttributeError(f"torchvision.transforms.{name}: not in lorafw's torchvision stand-in ({__file__})")
'''

SHIM_FUNCTIONAL = '''"""torchvision.transforms.functional as far as sd-scripts' training uses it."""

from enum import Enum

import numpy as np
import torch


class InterpolationMode(Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


def resize(img, size, interpolation=InterpolationMode.BILINEAR, max_size=None, antialias=True):
    """A tensor (..., H, W) resized to size [h, w] (or its shorter side to an int, the aspect kept, as torchvision
    does) at NEAREST or NEAREST_EXACT: torch's interpolate of those modes, as torchvision calls it; dtype kept."""
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"resize: lorafw's torchvision stand-in resizes tensors only, not {type(img).__name__} "
                        f"({__file__})")
    if interpolation not in (InterpolationMode.NEAREST, InterpolationMode.NEAREST_EXACT) or max_size is not None:
        raise NotImplementedError(f"resize with {interpolation} (max_size {max_size}): not in lorafw's torchvision "
                                  f"stand-in, which has nearest only ({__file__})")
    h, w = img.shape[-2:]
    if isinstance(size, int) or len(size) == 1:
        short = size if isinstance(size, int) else size[0]
        size = [short, int(short * w / h)] if h <= w else [int(short * h / w), short]
    x = img.reshape(-1, 1, h, w)
    out = torch.nn.functional.interpolate(x if x.is_floating_point() else x.float(), size=list(size),
                                          mode=interpolation.value)
    return out.to(img.dtype).reshape(*img.shape[:-2], *size)


def pil_to_tensor(pic):
    """PIL image → CHW tensor of its own dtype, unscaled (torchvision's pil_to_tensor)."""
    arr = np.array(pic, copy=True)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.transpose(2, 0, 1)).contiguous()


def __getattr__(name):
    raise AttributeError(f"torchvision.transforms.functional.{name}: not in lorafw's torchvision stand-in ({__file__})")
'''


def write_torchvision_shim(folder: Path) -> Path:
    """`folder`/torchvision: the stand-in package. Put `folder` first on the kohya process's PYTHONPATH."""
    pkg = folder / "torchvision"
    (pkg / "transforms").mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(SHIM_INIT)
    (pkg / "transforms" / "__init__.py").write_text(SHIM_TRANSFORMS)
    (pkg / "transforms" / "functional.py").write_text(SHIM_FUNCTIONAL)
    return folder


def needs_torchvision_shim(python: Path, env: dict[str, str] | None = None) -> tuple[bool, str]:
    """(whether the kohya interpreter needs the stand-in, why): it does when `from torchvision import transforms`
    fails there (not installed, or the CUDA build on a CPU torch)."""
    probe = subprocess.run([str(python), "-c", "from torchvision import transforms"], capture_output=True, text=True, env=env)
    if probe.returncode == 0:
        return False, "its torchvision imports"
    last = [ln for ln in probe.stderr.splitlines() if ln.strip()]
    return True, (last[-1] if last else f"exit {probe.returncode}")[:200]


# -- the tokenizer -------------------------------------------------------------------------------------------
def tokenizer_files(pad_token: str) -> dict[str, str]:
    """tokenizer_config.json and special_tokens_map.json as the hub folders have them (model_max_length 77)."""
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": pad_token}
    config = {**special, "add_prefix_space": False, "errors": "replace", "do_lower_case": True, "model_max_length": 77,
              "tokenizer_class": "CLIPTokenizer"}
    return {"tokenizer_config.json": json.dumps(config, indent=2), "special_tokens_map.json": json.dumps(special, indent=2)}


def cache_folder_name(model_id: str) -> str:
    """The folder sd-scripts looks for under --tokenizer_cache_dir (strategy_base._load_tokenizer)."""
    return model_id.replace("/", "_")


def write_tokenizer_cache(cache_dir: Path, bundled: Path) -> list[Path]:
    """Fill `cache_dir` for sd-scripts' --tokenizer_cache_dir from lorafw's bundled CLIP files (`bundled`:
    lorafw/models/tokenizer_data/clip); returns the folders written."""
    out = []
    for model_id, pad in TOKENIZERS.items():
        folder = cache_dir / cache_folder_name(model_id)
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.json", "merges.txt"):
            (folder / name).write_bytes((bundled / name).read_bytes())
        for name, text in tokenizer_files(pad).items():
            (folder / name).write_text(text)
        out.append(folder)
    return out


TOKENIZER_PROBE = """
import json, sys
from transformers import CLIPTokenizer
tok = CLIPTokenizer.from_pretrained(sys.argv[1])
texts = json.loads(sys.argv[2])
print(json.dumps({"model_max_length": tok.model_max_length, "pad": tok.pad_token_id,
                  "ids": [tok(t, padding="max_length", max_length=77, truncation=True).input_ids for t in texts]}))
"""


def check_tokenizer(python: Path, folder: Path, reference, texts: list[str], env: dict[str, str]) -> None:
    """Load the cache folder in the kohya interpreter as sd-scripts does and compare its ids with `reference`
    (lorafw's tokenizer) on `texts`: a tokenizer that differed would make the two runs train on different input."""
    p = subprocess.run([str(python), "-c", TOKENIZER_PROBE, str(folder), json.dumps(texts)], capture_output=True,
                       text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"sd-scripts' interpreter cannot load the tokenizer cache {folder}: {p.stderr.strip()[-500:]}")
    got = json.loads(p.stdout.strip().splitlines()[-1])
    want = [reference(t, padding="max_length", max_length=77, truncation=True).input_ids for t in texts]
    if got["model_max_length"] != 77 or got["ids"] != want or got["pad"] != reference.pad_token_id:
        raise RuntimeError(f"the tokenizer cache {folder} tokenizes differently from lorafw's: "
                           f"{got['model_max_length']=}, {got['pad']=}, first ids {got['ids'][0][:8]} vs {want[0][:8]}")


# -- Anima's tokenizers --------------------------------------------------------------------------------------------
ANIMA_TOKENIZER_PROBE = """
import json, sys
sys.path.insert(0, sys.argv[1])
from library.strategy_anima import AnimaTokenizeStrategy
s = AnimaTokenizeStrategy(qwen3_path=sys.argv[2], t5_tokenizer_path=None)
print(json.dumps([t.tolist() for t in s.tokenize(json.loads(sys.argv[3]))]))
"""
ANIMA_TOKENS = 512  # both trainers' Qwen3 and T5 windows (sd-scripts' --qwen3_max_token_length / --t5_max_token_length)


def anima_token_tensors(qwen, t5, texts: list[str], length: int = ANIMA_TOKENS) -> list[list[list[int]]]:
    """[Qwen3 ids, Qwen3 mask, T5 ids, T5 mask] for `texts`, padded to `length`: sd-scripts'
    AnimaTokenizeStrategy.tokenize (what both trainers feed Qwen3 and the LLM adapter), from the tokenizers `qwen`, `t5`."""
    kw = {"truncation": True, "padding": "max_length", "max_length": length}
    q, t = qwen(texts, **kw), t5(texts, **kw)
    return [q["input_ids"], q["attention_mask"], t["input_ids"], t["attention_mask"]]


def first_difference(got: list, want: list) -> str | None:
    """Where two [ids, mask, ids, mask] lists first differ ("Qwen3 ids, text 1, token 7: 42 vs 43"), or None."""
    names = ("Qwen3 ids", "Qwen3 mask", "T5 ids", "T5 mask")
    for name, g, w in zip(names, got, want):
        for i, (a, b) in enumerate(zip(g, w)):
            if a != b:
                j = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                x, y = (v[j] if j < len(v) else "end" for v in (a, b))
                return f"{name}, text {i}, token {j}: {x} vs {y}"
        if len(g) != len(w):
            return f"{name}: {len(g)} texts vs {len(w)}"
    return None if len(got) == len(want) else f"{len(got)} tensors vs {len(want)}"


def check_anima_tokenizers(python: Path, sd_scripts: Path, qwen3_file: Path, reference: tuple, texts: list[str],
                           env: dict[str, str]) -> None:
    """Tokenize `texts` as anima_train_network.py does (its configs/qwen3_06b and configs/t5_old, through
    AnimaTokenizeStrategy, in kohya's interpreter) and compare with lorafw's (`reference`: its Qwen3 and T5 tokenizers):
    different ids would make the two runs train on different input."""
    p = subprocess.run([str(python), "-c", ANIMA_TOKENIZER_PROBE, str(sd_scripts), str(qwen3_file), json.dumps(texts)],
                       capture_output=True, text=True, env=env, cwd=sd_scripts)
    if p.returncode:
        raise RuntimeError(f"sd-scripts' interpreter cannot load Anima's tokenizers from {sd_scripts}/configs: "
                           f"{p.stderr.strip()[-800:]}")
    got = json.loads(p.stdout.strip().splitlines()[-1])
    where = first_difference(got, anima_token_tensors(*reference, texts))
    if where:
        raise RuntimeError(f"sd-scripts tokenizes Anima's captions differently from lorafw ({where})")
