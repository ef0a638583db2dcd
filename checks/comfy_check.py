"""Does ComfyUI's own LoRA loader take every network lorafw writes, on a full-size SD1.5 model?

    # once: a ComfyUI checkout outside any git work tree (a clone, or written from a bare git dir)
    git clone https://github.com/Comfy-Org/ComfyUI /tmp/comfyui
    python checks/comfy_check.py --from-git /path/to/ComfyUI.git --comfyui /tmp/comfyui   # or this
    # the check: 1-3 min per network to train and save on 2 CPU cores, ~9 min for the ComfyUI side; one model
    # per process, at most ~8 GB RAM (training) and ~9 GB (ComfyUI's fp32 UNet and its backups; --comfy-unet fp16
    # halves it). --reuse keeps the files of an earlier run; the figures: benchmarks/RESULTS.md
    python checks/comfy_check.py --comfyui /tmp/comfyui [--work /tmp/lorafw-comfy-check] [--networks lora,ia3]

1. A full-size SD1.5 checkpoint with seeded random weights (diffusers' init; UNet 860M, CLIP-L 123M,
   VAE 84M parameters) is built in code and written as one original-layout fp16 .safetensors, as
   community checkpoints ship (`--work`/sd15-random.safetensors; kept and reused).
2. Each network variant (NETWORKS below: every algo lorafw trains, with DoRA, Tucker, scalar, LoKr's low-rank
   factors and IA3 on inputs) trains one real step of the sd15_character recipe on that checkpoint (two 64 px
   images, AdamW at lr 1e-2 on UNet and text encoder, so every adapter is non-zero) and its file is written by
   the trainer's own save (fp16, kohya metadata), exactly as a user's run writes it.
3. In a child process (ComfyUI's `comfy` package and lorafw never share a process with two models), ComfyUI
   loads the checkpoint with `comfy.sd.load_checkpoint_guess_config` and each file as its LoraLoader node
   does: `comfy.utils.load_torch_file(path, safe_load=True)` then `comfy.sd.load_lora_for_models(model, clip,
   lora, 1.0, 1.0)`. Its warnings are counted: "lora key not loaded: K" (a tensor of the file no adapter
   took, comfy/lora.py load_lora) and "NOT LOADED K" (a patch whose target weight does not exist,
   comfy/sd.py). Every adapted layer of the file must map (comfy.lora.model_lora_keys_unet/_clip) to a
   patched UNet or CLIP weight.
4. The patches are then applied by ComfyUI (`comfy.model_management.load_models_gpu`, as sampling loads a model)
   and each patched weight is compared with its original (must differ wherever the update is non-zero: the patch
   is used, not only mapped; ComfyUI's "ERROR ..." lines from a failed patch are counted) and with the weight
   lorafw computes for ComfyUI (lorafw/network/apply.py `layer_delta` + dora.py `patched(..., ui="comfyui")`,
   what `lorafw grid grid.ui=comfyui` renders). Agreement: for fp32-stored weights (the UNet; ComfyUI's own choice
   on a CPU) max over layers of |W_comfy − W_lorafw| / |W_lorafw − W|; for fp16-stored ones (the CLIP), where
   ComfyUI's stochastic rounding dominates, max |W_comfy − W_lorafw| in fp16 steps (ulps, < 1 = equal up to it).

Figures only: nothing asserts; the exit status is 1 if a network other than IA3 loses keys, or a layer's patch
is unmapped, fails or leaves its weight unchanged.
ComfyUI is never copied into this repository. What its `comfy` modules need beyond lorafw's venv:
- torchvision, imported at module level by comfy/ldm/cascade/* and comfy/ldm/cosmos/* (not used for SD1.5).
  The PyPI wheel is a CUDA build that fails to load with a CPU-only torch ("operator torchvision::nms does not
  exist"); where torchvision cannot be imported the child process puts inert stand-in modules in its place
  (any use raises). pip install torchvision to use the real one.
- torchaudio is optional (ComfyUI only warns). Everything else (einops, scipy, psutil, safetensors,
  transformers, tqdm, pyyaml, Pillow) is already in lorafw's venv.
ComfyUI runs with `--cpu` unless CUDA is available; on a CPU it keeps the UNet in fp32 (its own choice).
One file over ~400 lines on purpose: it runs as three kinds of process (driver, one trainer per network, the
ComfyUI side) that share its helpers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))  # vram_calibrate: the real models' published configs

LR = "1e-2"
# name -> overrides on top of sd15_character (dim 16 / alpha 8 from the recipe unless set)
NETWORKS: dict[str, list[str]] = {
    "lora": ["network=lora"],
    "lora_dora": ["network=lora", "network.dora_wd=true"],
    "locon": ["network=locon"],
    "locon_tucker": ["network=locon", "network.use_tucker=true"],
    "locon_scalar": ["network=locon", "network.use_scalar=true"],
    "dora": ["network=dora"],
    "loha": ["network=loha"],
    "loha_tucker": ["network=loha", "network.use_tucker=true"],
    "loha_dora": ["network=loha", "network.dora_wd=true"],
    "lokr": ["network=lokr"],
    "lokr_lowrank": ["network=lokr", "network.dim=8", "network.alpha=4", "network.conv_dim=4", "network.conv_alpha=2",
                     "network.decompose_both=true", "network.use_tucker=true"],
    "lokr_dora": ["network=lokr", "network.dora_wd=true"],
    "glora": ["network=glora"],
    "glora_conv": ["network=glora", "network.conv_dim=4", "network.conv_alpha=2"],
    "ia3": ["network=ia3"],
    "ia3_on_input": ["network=ia3", "network.train_on_input=true"],
}
KEYS_NOT_LOADED_OK = ("ia3",)  # ComfyUI has no IA3 adapter (comfy/weight_adapter/__init__.py `adapters`)


# -- ComfyUI checkout ---------------------------------------------------------------------------------
def inside_work_tree(path: Path) -> Path | None:
    """The git work tree that holds `path` (or its nearest existing parent), if any."""
    p = path.resolve()
    while not p.exists():
        p = p.parent
    r = subprocess.run(["git", "-C", str(p), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return Path(r.stdout.strip()) if r.returncode == 0 else None


def materialise(git_dir: Path, dest: Path, rev: str = "HEAD") -> str:
    """Write the tree of `rev` of a bare git dir into `dest`, file by file (blobs missing from a partial
    mirror are skipped and listed); returns the commit. Refuses a `dest` inside a git work tree, so that
    ComfyUI's code cannot end up committed to lorafw (or anything else)."""
    tree = inside_work_tree(dest)
    if tree is not None:
        raise SystemExit(f"--comfyui {dest} is inside the git work tree {tree}; pick a path outside it (e.g. /tmp/comfyui)")
    git = ["git", "--git-dir", str(git_dir)]
    commit = subprocess.run(git + ["rev-parse", f"{rev}^{{commit}}"], capture_output=True, text=True, check=True).stdout.strip()
    rows = subprocess.run(git + ["ls-tree", "-r", "-z", commit], capture_output=True, check=True).stdout.split(b"\0")
    missing, n = [], 0
    for row in filter(None, rows):
        meta, name = row.split(b"\t", 1)
        mode, kind, sha = meta.decode().split()
        if kind != "blob" or mode == "120000":
            continue
        blob = subprocess.run(git + ["cat-file", "blob", sha], capture_output=True)
        if blob.returncode:
            missing.append(name.decode())
            continue
        p = dest / name.decode()
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(blob.stdout)
        if mode == "100755":
            p.chmod(0o755)
        n += 1
    (dest / "COMMIT").write_text(commit + "\n")
    print(f"ComfyUI {commit}: {n} files written to {dest}" + (f"; missing from the mirror: {missing}" if missing else ""))
    return commit


def comfy_commit(comfyui: Path) -> str:
    if (comfyui / "COMMIT").is_file():
        return (comfyui / "COMMIT").read_text().strip()
    r = subprocess.run(["git", "-C", str(comfyui), "rev-parse", "HEAD"], capture_output=True, text=True)
    return r.stdout.strip() if r.returncode == 0 else "unknown"


# -- lorafw side: the base model and one file per network ----------------------------------------------
def build_base(path: Path) -> Path:
    """Full-size SD1.5 (published configs, seeded random weights) as one original-layout fp16 .safetensors."""
    if path.is_file():
        return path
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorafw.models.tiny import save_single_file
    from vram_calibrate import CLIP_L, UNETS, VAE  # tools/vram_calibrate.py: the real models' published configs

    torch.manual_seed(0)
    parts = {"unet": UNet2DConditionModel(**UNETS["sd15"]), "vae": AutoencoderKL(**VAE),
             "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L))}
    n = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in parts.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_single_file(parts, path.with_suffix(".tmp"), dtype=torch.float16)
    path.with_suffix(".tmp").rename(path)
    print(f"base model: UNet {n['unet']:.0f}M, VAE {n['vae']:.0f}M, CLIP-L {n['text_encoder']:.0f}M parameters -> {path}")
    return path


def make_data(root: Path) -> Path:
    """Two 64 px images with tag captions in root/1_check/: one step at batch 2."""
    from PIL import Image, ImageDraw

    folder = root / "1_check"
    folder.mkdir(parents=True, exist_ok=True)
    for i, (bg, fg) in enumerate((((240, 240, 240), (200, 30, 30)), ((20, 20, 20), (30, 80, 220)))):
        im = Image.new("RGB", (64, 64), bg)
        ImageDraw.Draw(im).ellipse((16, 16, 48, 48), fill=fg)
        im.save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"check, {'red' if i == 0 else 'blue'} circle, simple background\n")
    return root


def produce(name: str, overrides: list[str], base: Path, data: Path, out: Path) -> tuple[Path, float]:
    """Train one step of `name` on the full-size model through the trainer; the file its save wrote."""
    import gc

    from lorafw.config.compose import compose
    from lorafw.run import resolve_outputs
    from lorafw.trainers.trainer import prepare

    spec = resolve_outputs(compose("sd15_character", [
        f"base_model.path={base}", f"dataset.root={data}", "dataset.resolution=64", "dataset.min_bucket_reso=64",
        "dataset.max_bucket_reso=64", "dataset.shuffle_caption=false", "train.epochs=1", "train.batch_size=2",
        "train.mixed_precision=no", "train.full_bf16=false",
        "train.gradient_checkpointing=true", "optimizer=adamw", f"optimizer.lr={LR}",
        f"optimizer.text_encoder_lr={LR}", "optimizer.weight_decay=0", "output.save_state_every_n_epochs=0", "output.overwrite=true",
        f"output.dir={out / name}", f"output.name={name}", *overrides]))
    t0 = time.perf_counter()
    tr = prepare(spec, spec.output.dir)
    path = Path(tr.run().lora_files[-1])
    seconds = time.perf_counter() - t0
    del tr
    gc.collect()
    return path, seconds


# -- ComfyUI side (child process) ---------------------------------------------------------------------
class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def import_comfy(comfyui: Path) -> Any:
    """ComfyUI's `comfy` package from a checkout (appended to sys.path; its defaults, --cpu without CUDA)."""
    import types

    import torch
    import transformers.utils.import_utils  # noqa: F401  (decides "torchvision available" before any stand-in)

    try:
        import torchvision  # noqa: F401
    except Exception:  # not installed, or a CUDA wheel on a CPU-only torch: inert stand-ins (see the docstring)
        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]

        def stand_in(name: str) -> types.ModuleType:
            m = types.ModuleType(name)

            def attr(a: str) -> Any:
                if a.startswith("__"):
                    raise AttributeError(a)

                def unavailable(*_: Any, **__: Any) -> Any:
                    raise RuntimeError(f"{name}.{a}: torchvision is not installed (comfy_check stand-in)")
                return unavailable
            m.__getattr__ = attr  # type: ignore[method-assign]
            return m
        for n in ("torchvision", "torchvision.transforms", "torchvision.models", "torchvision.transforms.functional"):
            sys.modules[n] = stand_in(n)
        sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]  # type: ignore[attr-defined]
    sys.path.append(str(comfyui))
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    import comfy.lora
    import comfy.sd
    import comfy.utils

    return comfy


def stub_layer(weight: Any) -> Any:
    """A Linear/Conv2d holding `weight` (what LyCORIS's rebuild needs to know the layer's shape and kind)."""
    import torch

    with torch.device("meta"):
        if weight.dim() == 2:
            m = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
        else:
            k = weight.shape[2]
            m = torch.nn.Conv2d(weight.shape[1], weight.shape[0], k, padding=k // 2, bias=False)
    m.weight = torch.nn.Parameter(weight, requires_grad=False)
    return m


def ulps(now: Any, want: Any, base: Any, dtype: Any) -> float:
    """max |now − want| in units of the storage dtype's spacing at max(|want|, |base|): the rounding step of
    the patched weight, and of W + ΔW where the two nearly cancel (ComfyUI stores each patched weight in its
    dtype, fp16 stochastically rounded: < 1 when the two agree up to that rounding; a few in fp32, where only
    the order of operations differs)."""
    import torch

    w = torch.maximum(want.abs(), base.abs()).to(dtype)
    step = (torch.nextafter(w, torch.tensor(float("inf"), dtype=dtype)) - w).float()
    return ((now - want).abs() / step).max().item()


def agreement(now: Any, want: Any, base: Any, dtype: Any) -> float:
    """How far ComfyUI's patched weight is from lorafw's: with fp32 storage, |W_comfy − W_lorafw| / |W_lorafw − W|
    (Frobenius; 0 when both are the base weight); with a narrower storage dtype, `ulps` (its rounding dominates)."""
    import torch

    if dtype != torch.float32:
        return ulps(now, want, base, dtype)
    update = (want - base).norm().item()
    if update == 0:
        return 0.0 if torch.equal(now, base) else float("inf")
    return (now - want).norm().item() / update


def check_file(comfy: Any, model: Any, clip: Any, path: Path) -> dict[str, Any]:
    import torch

    from lorafw.network.apply import layer_delta
    from lorafw.network.dora import patched

    lora = comfy.utils.load_torch_file(str(path), safe_load=True)
    n_keys = len(lora)
    log = Collect()
    root = logging.getLogger()
    root.addHandler(log)
    try:
        t0 = time.perf_counter()
        m2, c2 = comfy.sd.load_lora_for_models(model, clip, lora, 1.0, 1.0)
        load_s = time.perf_counter() - t0
        loading = list(log.lines)
        log.lines.clear()
        # ComfyUI applies the patches (as sampling does); each is compared with the original and with lorafw's
        key_map = comfy.lora.model_lora_keys_clip(clip.cond_stage_model, comfy.lora.model_lora_keys_unet(model.model, {}))
        unet_patched, clip_patched = set(m2.patches), set(c2.patcher.patches)
        layers = sorted({k.split(".", 1)[0] for k in lora})
        unmapped = [n for n in layers if key_map.get(n) not in unet_patched | clip_patched]
        changed, nonzero, unchanged, dtypes = 0, 0, [], set()
        worst = {"UNet": (0.0, ""), "CLIP": (0.0, "")}
        by_target = {key_map[n]: n for n in layers if n in key_map}
        t0 = time.perf_counter()
        comfy.model_management.load_models_gpu([m2, c2.patcher], force_full_load=True)
        patch_s = time.perf_counter() - t0
        try:
            for patcher, keys in ((m2, unet_patched), (c2.patcher, clip_patched)):
                state = patcher.model.state_dict()
                for key in sorted(keys):
                    stored, part = state[key].dtype, "UNet" if patcher is m2 else "CLIP"
                    dtypes.add(f"{part} {str(stored).removeprefix('torch.')}")
                    base, now = patcher.backup[key].weight.float(), state[key].float()
                    name = by_target[key]
                    lf = {k: v for k, v in lora.items() if k.startswith(name + ".")}
                    delta = layer_delta(lf, name, stub_layer(base))
                    dora = lf.get(f"{name}.dora_scale")
                    want = patched(base, delta, 1.0, None if dora is None else dora.float(), "comfyui")
                    moved, wanted = not torch.equal(base, now), not torch.equal(base, want)
                    changed += moved
                    nonzero += wanted
                    if wanted and not moved:
                        unchanged.append(name)
                        continue  # not patched at all: counted apart, not as a disagreement
                    err = agreement(now, want, base, stored)
                    if err > worst[part][0]:
                        worst[part] = (err, name)
        finally:
            comfy.model_management.unload_all_models()  # unpatches: the originals are back for the next file
    finally:
        root.removeHandler(log)
    not_loaded = sorted(line.split(": ", 1)[1] for line in loading if line.startswith("lora key not loaded: "))
    no_target = sorted(line.split(" ", 2)[2] for line in loading if line.startswith("NOT LOADED "))
    patch_errors = [line for line in log.lines if line.startswith(("ERROR", "Calculate Weight Failed", "WARNING SHAPE"))]
    del m2, c2, lora
    return {"file": str(path), "size_mb": path.stat().st_size / 2**20, "keys": n_keys, "loaded": n_keys - len(not_loaded),
            "not_loaded": not_loaded, "no_target": no_target, "layers": len(layers), "unmapped": unmapped,
            "unet_patched": len(unet_patched), "clip_patched": len(clip_patched), "changed": changed,
            "nonzero": nonzero, "unchanged": unchanged, "patch_errors": patch_errors,
            "agreement": {k: v[0] for k, v in worst.items()}, "agreement_layer": {k: v[1] for k, v in worst.items()},
            "dtypes": sorted(dtypes), "load_s": load_s, "patch_s": patch_s}


def comfy_child(comfyui: Path, base: Path, files: list[Path], out: Path, unet_dtype: str) -> None:
    import gc

    import torch

    comfy = import_comfy(comfyui)
    t0 = time.perf_counter()
    options = {"dtype": torch.float16} if unet_dtype == "fp16" else {}
    model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(str(base), output_vae=False, output_clip=True,
                                                              model_options=options)
    print(f"ComfyUI: {type(model.model).__name__} / {type(model.model.model_config).__name__}, UNet "
          f"{model.model.get_dtype()}, loaded in {time.perf_counter() - t0:.1f} s", flush=True)
    results = {}
    for f in files:
        results[f.stem] = check_file(comfy, model, clip, f)
        r = results[f.stem]
        print(f"  {f.stem:<14} {r['keys']:5d} keys, {len(r['not_loaded'])} not loaded, {r['unet_patched']}+"
              f"{r['clip_patched']} weights patched, {r['changed']} changed of {r['nonzero']} with a non-zero update, "
              f"{len(r['patch_errors'])} patch errors, agreement with lorafw UNet {fmt(r, 'UNet')}, CLIP {fmt(r, 'CLIP')}",
              flush=True)
        gc.collect()
    out.write_text(json.dumps(results, indent=1))


# -- main ---------------------------------------------------------------------------------------------
def fmt(r: dict[str, Any], part: str) -> str:
    """`agreement` as read: a relative error for fp32-stored weights, ulps for narrower ones."""
    v = r["agreement"][part]
    return f"{v:.2f} ulp" if any(d.startswith(part) and "32" not in d for d in r["dtypes"]) else f"{v:.0e}"


def table(results: dict[str, dict[str, Any]], times: dict[str, float], peaks: dict[str, float]) -> str:
    rows = ["| network | file MB | keys | loaded | not loaded | layers / unmapped | weights patched UNet + CLIP "
            "| patch errors | changed / non-zero update | agreement with lorafw UNet / CLIP | ComfyUI load + patch s "
            "| train+save s | train peak GB |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        rows.append(f"| {name} | {r['size_mb']:.1f} | {r['keys']} | {r['loaded']} | {len(r['not_loaded'])} | "
                    f"{r['layers']} / {len(r['unmapped'])} | {r['unet_patched']} + {r['clip_patched']} | "
                    f"{len(r['patch_errors'])} | {r['changed']} / {r['nonzero']} | {fmt(r, 'UNet')} / {fmt(r, 'CLIP')} | "
                    f"{r['load_s']:.2f} + {r['patch_s']:.1f} | {times[name]:.0f} | {peaks[name]:.1f} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout (outside this repository)")
    ap.add_argument("--from-git", type=Path, help="first write --comfyui from this (bare) ComfyUI git dir's HEAD")
    ap.add_argument("--work", type=Path, default=Path("/tmp/lorafw-comfy-check"), help="base model, runs, results")
    ap.add_argument("--networks", default=",".join(NETWORKS), help=f"comma-separated, of: {', '.join(NETWORKS)}")
    ap.add_argument("--reuse", action="store_true", help="keep LoRA files already in --work (skip their training)")
    ap.add_argument("--comfy-unet", choices=("auto", "fp16"), default="auto",
                    help="ComfyUI's UNet storage: its own choice (fp32 on a CPU: the comparison with lorafw is exact "
                    "to fp32; ~9 GB peak) or fp16 (half the memory; the comparison then shows fp16 rounding)")
    ap.add_argument("--child", nargs="*", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--produce", choices=list(NETWORKS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.child is not None:  # the ComfyUI side: --child BASE OUT FILE...
        comfy_child(args.comfyui, args.child[0], args.child[2:], args.child[1], args.comfy_unet)
        return 0
    if args.produce:  # one network's file (a child of main)
        os.environ.setdefault("LORAFW_CPU_FLAGS", "")  # fp32 on any CPU, as the tests run
        logging.getLogger("lorafw").setLevel(logging.WARNING)
        path, seconds = produce(args.produce, NETWORKS[args.produce], args.work / "sd15-random.safetensors",
                                args.work / "data", args.work / "runs")
        done = args.work / "loras" / f"{args.produce}.safetensors"
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_bytes(path.read_bytes())
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        done.with_suffix(".json").write_text(json.dumps({"seconds": seconds, "peak_rss_gb": peak}))
        return 0
    if args.from_git:
        materialise(args.from_git, args.comfyui)
    if not (args.comfyui / "comfy" / "lora.py").is_file():
        raise SystemExit(f"{args.comfyui} is not a ComfyUI checkout (no comfy/lora.py); clone it or pass --from-git")
    names = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        raise SystemExit(f"unknown network(s) {unknown}; choose from {list(NETWORKS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base = build_base(args.work / "sd15-random.safetensors")
    print(f"base model ready in {time.perf_counter() - t0:.0f} s", flush=True)
    data = make_data(args.work / "data")
    files, times, peaks = [], {}, {}
    for name in names:
        done = args.work / "loras" / f"{name}.safetensors"
        facts = done.with_suffix(".json")
        if not (args.reuse and done.is_file() and facts.is_file()):
            # one process per network: each holds the full model once, and gives all its memory back
            subprocess.run([sys.executable, __file__, "--comfyui", str(args.comfyui), "--work", str(args.work),
                            "--produce", name], check=True)
        f = json.loads(facts.read_text())
        times[name], peaks[name] = f["seconds"], f["peak_rss_gb"]
        print(f"{name}: one training step and save in {f['seconds']:.0f} s, peak RSS {f['peak_rss_gb']:.1f} GB -> {done}",
              flush=True)
        files.append(done)
    out = args.work / "comfy_results.json"
    subprocess.run([sys.executable, __file__, "--comfyui", str(args.comfyui), "--comfy-unet", args.comfy_unet,
                    "--child", str(base), str(out),
                    *map(str, files)], check=True)
    results = json.loads(out.read_text())
    dtypes = sorted({d for r in results.values() for d in r["dtypes"]})
    print(f"\nComfyUI {comfy_commit(args.comfyui)}; patched weights stored as {', '.join(dtypes)}\n")
    print(table(results, times, peaks))
    bad = []
    for name, r in results.items():
        if r["not_loaded"] and not name.startswith(KEYS_NOT_LOADED_OK):
            bad.append(name)
        if r["not_loaded"]:
            print(f"\n{name}: not loaded ({len(r['not_loaded'])}): {r['not_loaded'][:6]}{' ...' if len(r['not_loaded']) > 6 else ''}")
        for what in ("no_target", "unmapped", "patch_errors", "unchanged"):
            if r[what]:
                print(f"{name}: {what}: {r[what][:6]}")
                if not name.startswith(KEYS_NOT_LOADED_OK):
                    bad.append(name)
    if bad:
        print(f"\nkeys lost by ComfyUI in: {sorted(set(bad))}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
