"""`lorafw doctor [--json] [--vram GB] [+recipe=NAME] [base_model.path=...] [dataset.root=...] [key=value ...]`.

What this machine will do with a run, in about two seconds, before anything loads: the devices and their
memory; torch, CUDA and the libraries' versions; what `train.mixed_precision=auto` and the attention setting
pick here, and why (the same `lorafw.precision.choose` a run calls); which native library bitsandbytes
(the 8-bit optimizer) will load; free disk where runs and latent caches go; and, given a recipe (and a model
and dataset), whether it fits this card (`plan --vram`'s estimate against the card's memory).

Fast because it reads versions from package metadata and bitsandbytes' backend from the library files it
ships (importing diffusers or bitsandbytes takes seconds); only torch is imported.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
from pathlib import Path
from typing import Any

from lorafw.cli.args import Parser, add_overrides
from lorafw.errors import ConfigError, ModelError
from lorafw.paths import expand
from lorafw.precision import describe_cpu

# The config, the checkpoint reader and the planner are imported where they are used (on purpose): `lorafw
# doctor --help` loads none of them.

LIBRARIES = ("diffusers", "transformers", "peft", "accelerate", "safetensors", "bitsandbytes", "lycoris-lora",
             "prodigyopt", "came-pytorch", "hydra-core", "xformers", "triton", "lorafw")


# -- pure parts ---------------------------------------------------------------------------------------------
def bnb_library(files: list[str], gpu: str | None, runtime: tuple[int, int] | None,
                override: str | None = None) -> tuple[str, str | None, str | None]:
    """(backend, library file, problem) that bitsandbytes will load, mirroring its own choice (bitsandbytes
    0.45+ cextension): an exact CUDA/ROCm version match, else the highest packaged one below it of the same
    major version, else the lowest above it; BNB_CUDA_VERSION / BNB_ROCM_VERSION override; the CPU library
    without a GPU."""
    if gpu is None or runtime is None:
        lib = next((f for f in files if re.fullmatch(r"libbitsandbytes_cpu\.(so|dll|dylib)", f)), None)
        return "cpu", lib, None if lib else "bitsandbytes ships no CPU library here: optimizer.name=adamw8bit will fail"
    prefix = "rocm" if gpu == "rocm" else "cuda"
    var = "BNB_ROCM_VERSION" if prefix == "rocm" else "BNB_CUDA_VERSION"
    have: dict[tuple[int, int], str] = {}
    for f in files:
        m = re.fullmatch(rf"libbitsandbytes_{prefix}(\d+)(\d)\.(so|dll|dylib)", f)
        if m:
            have[(int(m.group(1)), int(m.group(2)))] = f
    want = f"{runtime[0]}.{runtime[1]}"
    if override:
        hit = next((f for f in files if f.startswith(f"libbitsandbytes_{prefix}{override}.")), None)
        return prefix, hit, None if hit else f"{var}={override} names a library bitsandbytes does not ship; unset it"
    if runtime in have:
        return prefix, have[runtime], None
    same = [v for v in have if v[0] == runtime[0]]
    lower = [v for v in same if v < runtime]
    pick = max(lower) if lower else (min(same) if same else None)
    if pick is None:
        return prefix, None, (f"bitsandbytes has no {prefix.upper()} {runtime[0]}.x library for torch's {prefix.upper()} "
                              f"{want}: optimizer.name=adamw8bit will fail; upgrade bitsandbytes or use optimizer.name=adamw")
    return prefix, have[pick], None


def gib(n: float | None) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def render(f: dict[str, Any]) -> str:
    """The report, one fact a line, problems last."""
    v = f["versions"]
    lines = [f"lorafw doctor ({f['seconds']:.1f}s)", "versions:",
             f"  python {v['python']}, torch {v['torch']} (CUDA {v['cuda'] or 'none'}"
             + (f", cuDNN {v['cudnn']}" if v.get("cudnn") else "") + (f", ROCm {v['hip']}" if v.get("hip") else "") + ")",
             "  " + ", ".join(f"{k} {v['libraries'].get(k) or '-'}" for k in LIBRARIES)]
    lines.append("devices:")
    for g in f["gpus"]:
        lines.append(f"  cuda:{g['index']}  {g['name']}, compute capability {g['capability']}, {gib(g['total'])} "
                     f"({gib(g['free'])} free)")
    c = f["cpu"]
    lines.append(f"  cpu     {describe_cpu(c)}; RAM {gib(c['ram_total'])} ({gib(c['ram_available'])} available)")
    if not f["gpus"]:
        lines.append("  no CUDA GPU: runs train on the CPU (the tiny demo and checks; real models need a GPU)")
    p = f["precision"]
    lines.append(f"training device: {f['device']}")
    lines.append(f"precision (train.mixed_precision={p['asked']}): {p['precision']}"
                 + (", loss scaling" if p["grad_scaler"] else "") + f": {p['reason']}")
    for n in p["notes"]:
        lines.append(f"  note: {n}")
    a = f["attention"]
    lines.append(f"attention (train.attention={a['asked']}): {a['kernel']}: {a['why']}")
    b = f["bitsandbytes"]
    lines.append(f"bitsandbytes: {b['backend']}" + (f" ({b['library']})" if b["library"] else ""))
    lines.append("disk: " + "; ".join(f"{d['free'] / 1e9:,.1f} GB free for {d['what']} ({d['path']})" for d in f["disk"]))
    fit = f.get("fit")
    if fit:
        e = fit["estimate"]
        lines.append(f"fit ({fit['what']}): about {e['peak_gib']:.1f} GiB at peak ({e['peak_phase']}) on a {fit['budget_gib']:g} GiB "
                     f"card: {'fits' if fit['fits'] else 'does NOT fit'}")
        for s in fit["suggestions"][:3]:
            lines.append(f"  fits with: {' '.join(s['overrides']) or '(as it is)'}  (~{s['peak_gib']:.1f} GiB, speed ×{s['speed']:.2f})")
    elif f.get("fit_note"):
        lines.append(f"fit: {f['fit_note']}")
    for prob in f["problems"]:
        lines.append(f"problem: {prob}")
    return "\n".join(lines)


# -- the shell ------------------------------------------------------------------------------------------------
def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _meminfo() -> tuple[int | None, int | None]:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None, None
    kb = {m.group(1): int(m.group(2)) * 1024 for m in re.finditer(r"^(\w+):\s+(\d+) kB", text, re.M)}
    return kb.get("MemTotal"), kb.get("MemAvailable")


def _bnb_files() -> list[str]:
    import importlib.util

    spec = importlib.util.find_spec("bitsandbytes")
    if spec is None or not spec.submodule_search_locations:
        return []
    return sorted(p.name for loc in spec.submodule_search_locations for p in Path(loc).glob("libbitsandbytes_*"))


def _free(path: Path) -> int:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _spec(overrides: list[str]):
    """(run spec of the command line, whether it names a dataset): no base model or dataset needed, but a base
    model given is checked (its header: the architecture must match the recipe's)."""
    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict

    overrides = [f"dataset.root={o}" if "=" not in o and Path(o).expanduser().is_dir() else o for o in overrides]
    keys = {o.split("=")[0].lstrip("+") for o in overrides}
    model = "base_model.path" in keys
    has_data = bool(keys & {"dataset.root", "dataset.folders"})
    extra = ([] if model else ["base_model.path=-"]) + ([] if has_data else ["dataset.root=-"])
    spec = spec_from_dict(compose_dict(None, overrides + extra), check_paths=False, need_model=False)[0]
    if model:
        from lorafw import families as archs
        from lorafw.paths import expand

        try:
            name = archs.detect(expand(spec.base_model.path)) if spec.base_model.arch == "auto" else spec.base_model.arch
            archs.get(name).inspect(str(spec.base_model.path))
        except ModelError as e:
            raise ConfigError([f"base_model.path: {e}"]) from None
    return spec, has_data


def gather(overrides: list[str], vram: float | None = None) -> dict[str, Any]:
    """Every fact the report prints (a dict, also what --json writes)."""
    import time

    t0 = time.perf_counter()
    import torch

    from lorafw.config.spec import TrainSpec
    from lorafw.precision import attention_choice, choose, cpu_facts, probe

    problems: list[str] = []
    spec, has_data = _spec(overrides) if overrides else (None, False)
    t = spec.train if spec else TrainSpec()
    libs = {k: _version(k) for k in LIBRARIES}
    versions = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                "hip": getattr(torch.version, "hip", None),
                "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None, "libraries": libs}
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            cc = torch.cuda.get_device_capability(i)
            gpus.append({"index": i, "name": torch.cuda.get_device_name(i), "capability": f"{cc[0]}.{cc[1]}",
                         "total": total, "free": free})
    ram_total, ram_avail = _meminfo()
    cpu = {**cpu_facts(), "ram_total": ram_total, "ram_available": ram_avail}
    if t.device == "auto":
        device = "cuda:0" if gpus else "cpu"
    elif t.device.startswith("cuda") and not gpus:
        problems.append(f"train.device={t.device} but no CUDA GPU is available; use train.device=auto or cpu")
        device = "cpu"
    else:
        device = t.device if t.device != "cuda" else "cuda:0"
    hw = probe(device)
    choice = choose(t.mixed_precision, t.full_bf16, t.full_fp16, hw)
    precision = {"asked": t.mixed_precision, "precision": choice.precision, "grad_scaler": choice.grad_scaler,
                 "reason": choice.reason, "notes": list(choice.notes), "hardware": hw.describe()}
    kernel, why = attention_choice(t.attention, hw, choice.precision, libs["xformers"] is not None)
    if kernel == "unavailable":
        problems.append(why)
    gpu_kind = ("rocm" if versions["hip"] else "cuda") if gpus else None
    runtime = versions["hip"] or versions["cuda"]
    rt = tuple(int(x) for x in runtime.split(".")[:2]) if runtime and gpus else None
    backend, lib, bnb_problem = bnb_library(_bnb_files(), gpu_kind, rt,  # type: ignore[arg-type]
                                            os.environ.get("BNB_ROCM_VERSION" if versions["hip"] else "BNB_CUDA_VERSION"))
    if libs["bitsandbytes"] is None:
        backend, lib, bnb_problem = "not installed", None, None
    if bnb_problem and spec is not None and spec.optimizer.name == "adamw8bit":
        problems.append(bnb_problem)

    out_dir = expand(spec.output.dir) if spec and spec.output.dir else Path.cwd() / "outputs"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    cache_dir = expand(spec.dataset.cache_dir) if spec and spec.dataset.cache_dir else Path(xdg) / "lorafw" / "latents"
    disk = [{"what": "runs", "path": str(out_dir), "free": _free(out_dir)},
            {"what": "latent caches", "path": str(cache_dir), "free": _free(cache_dir)}]
    facts: dict[str, Any] = {"versions": versions, "gpus": gpus, "cpu": cpu, "device": f"{device} ({hw.describe()})",
                             "precision": precision, "attention": {"asked": t.attention, "kernel": kernel, "why": why},
                             "bitsandbytes": {"backend": backend, "library": lib, "problem": bnb_problem}, "disk": disk,
                             "problems": problems}
    budget = vram if vram is not None else (gpus[int(device.split(":")[1]) if ":" in device else 0]["total"] / 2**30
                                            if device.startswith("cuda") and gpus else None)
    if spec is None:
        facts["fit_note"] = "give a recipe (and dataset.root=...) to check whether it fits: lorafw doctor +recipe=pdxl_character"
    elif budget is None:
        facts["fit_note"] = "no GPU here: add --vram GB to check the card you will train on (as lorafw plan --vram does)"
    else:
        facts["fit"] = _fit(spec, budget, choice, overrides, has_data)
        if not facts["fit"]["fits"]:
            problems.append(f"{facts['fit']['what']} does not fit {budget:g} GiB as it is; see the settings that fit above")
    facts["seconds"] = time.perf_counter() - t0
    return facts


def _fit(spec, budget: float, choice, overrides: list[str], has_data: bool) -> dict[str, Any]:
    """plan --vram's estimate for the precision this card will run (on a T4, `auto` is fp16, not bf16)."""
    import dataclasses

    from lorafw.planning.vram import buckets_of, suggest

    train = dataclasses.replace(spec.train, mixed_precision=choice.precision, full_bf16=choice.full_bf16,
                                full_fp16=choice.full_fp16)
    spec = dataclasses.replace(spec, train=train)
    buckets = None
    if has_data:  # its buckets; without a dataset, one W×H bucket of dataset.resolution
        from lorafw.data.dataset import build
        from lorafw.data.folders import scan

        buckets = buckets_of(build(scan(spec.dataset)[0], spec.dataset))
    sug = suggest(spec, budget, buckets).to_json()
    recipe = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("recipe=")), "this config")
    (w, h) = spec.dataset.size
    what = f"{recipe}, {spec.base_model.arch}, {w if w == h else f'{w}x{h}'}px, batch {spec.train.batch_size}"
    return {"what": what, "budget_gib": budget, "fits": sug["fits"], "estimate": sug["estimate"],
            "suggestions": sug["suggestions"] if not sug["fits"] else []}


def cmd_doctor(argv: list[str]) -> int:
    """What this machine will do with a run: devices and memory, versions, what `auto` picks for precision and
    attention here and why, bitsandbytes' library, free disk, and whether a recipe fits this card (exit 1 when it
    found a problem)."""
    from lorafw.cli.commands import positive_gb

    ap = Parser("doctor", cmd_doctor.__doc__,
                usage="lorafw doctor [--json] [--vram GB] [+recipe=NAME] [base_model.path=...] [dataset.root=...] [key=value ...]")
    ap.add_argument("--json", action="store_true", help="print the facts as JSON")
    ap.add_argument("--vram", type=positive_gb, metavar="GB", help="check the fit against this much memory instead of this card's")
    add_overrides(ap, "the run to check (a bare folder means dataset.root=FOLDER)")
    args = ap.parse_intermixed_args(argv)
    facts = gather(args.overrides, args.vram)  # a LorafwError is printed by lorafw's error boundary (exit 2)
    print(json.dumps(facts, indent=2, default=str) if args.json else render(facts))
    return 1 if facts["problems"] else 0
