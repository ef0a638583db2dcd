"""One prepared GPU check for a session that is lent a GPU: smoke tests, real-size throughput, overhead, memory.

    python checks/gpu_check.py --dry-run          # any machine: the plan, what is missing; exits 0 in seconds
    python checks/gpu_check.py --out DIR          # on a GPU: ≤ 8 minutes (--budget), figures to DIR

Stages, in this order, each skipped (and said so) when the time left (`--budget`, default 450 s) is too short:
  (a) smoke: `pytest -m gpu tests/test_gpu.py`: every precision mode (fp32, fp16, bf16, fp16+full_fp16,
      bf16+full_bf16, auto), each network option in conf/network/, samples and the grid, validation with
      cached text-encoder outputs, EMA kept on the CPU, resuming on the GPU from state saved on the CPU, and
      the SDXL trainer, all on the tests' tiny models on CUDA;
  (b) throughput at real size, random weights, LoRA, latents and text states cached, SDPA, `auto` precision:
      the SD1.5 UNet at 768² and the SDXL UNet at 1024², batch 2, each eager, with gradient checkpointing,
      and compiled (train.compile=true): steps/s, MFU (FLOPs of one step counted by
      torch.utils.flop_counter ÷ step time ÷ the card's dense peak from PEAK_TFLOPS), peak memory
      (torch.cuda.max_memory_allocated over the training steps) against `plan --vram`'s estimate of the
      same phase;
  (c) the same step as a bare diffusers + peft loop (benchmarks/step_overhead.py's floor), eager, with and
      without checkpointing: lorafw's step time ÷ the bare loop's;
  (d) the pdxl recipe as shipped (text encoders trained, full_bf16, checkpointing, CAME) at 1024², batch 2:
      its peak memory over the whole run (caching included) against the 10 GB target and plan --vram.
  (e) lorafw against kohya sd-scripts (benchmarks/vs_kohya.py, fp32 and bf16, one pair each) when an sd-scripts
      checkout is on the machine (--sd-scripts PATH, $SD_SCRIPTS, or sd-scripts/ in or beside the repository)
      and an interpreter with its requirements (--kohya-python, $KOHYA_PYTHON; without one vs_kohya.py makes its
      venv from the registry, which the lent machine cannot reach); skipped, saying why, otherwise. It runs last
      and needs ~240 s of the budget: e.g. `--budget 560 --no-compile`, or `--no-smoke --archs sd15 --no-pdxl`.
Then it writes DIR/gpu_check.json and DIR/gpu_check.md, and appends the same rows to benchmarks/RESULTS.md
(`--results`). Figures only: nothing asserts a speed. The issue's targets (benchmarks/RESULTS.md, "GPU
targets"): SDXL 1024² b2 LoRA ≥ 45% MFU on an H100 (≈ 13 steps/s without checkpointing); ≤ 1.05× the bare
loop's step time; the pdxl recipe's peak ≤ 10 GB; plan --vram within ±15% of the measured peak.

Packages the lent GPU machine lacks travel as wheels. Its Python is 3.12 with torch, transformers, peft,
accelerate, safetensors, einops, pytest already there; diffusers, hydra-core, omegaconf, antlr4, lycoris-lora,
bitsandbytes, prodigyopt, came-pytorch, toml, tomli-w and importlib_metadata are not. On the session's
machine, in the repository root (about 50 MB; the run tool carries at most 64 MiB with the working tree):

    echo /.whl/ >> .git/info/exclude
    P="--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $P -d .whl \
        diffusers hydra-core==1.3.8 omegaconf==2.3.0 lycoris-lora bitsandbytes prodigyopt came-pytorch toml tomli-w \
        importlib_metadata
    python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3     # published as a source archive only

and call the run tool with carry=[".whl"] and the command `PYTHONUNBUFFERED=1 python3 checks/gpu_check.py
--wheels .whl --out $OUT`. The script installs whatever is missing from that folder into a private target
(`pip install --no-index --no-deps --target`), puts it on sys.path and on the smoke tests' PYTHONPATH, and
runs lorafw from the checkout (PYTHONPATH=repository root; nothing is installed into the system).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# import name → the wheel's distribution name (what the docstring downloads)
NEEDED = {"diffusers": "diffusers", "hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime",
          "lycoris": "lycoris-lora", "bitsandbytes": "bitsandbytes", "prodigyopt": "prodigyopt", "came_pytorch": "came-pytorch",
          "toml": "toml", "tomli_w": "tomli-w", "importlib_metadata": "importlib_metadata", "transformers": "transformers",
          "peft": "peft", "accelerate": "accelerate", "safetensors": "safetensors", "einops": "einops"}
# Dense peak TFLOPS (no sparsity) in the precision `auto` trains in there: bf16 from Ampere on, fp16 before.
PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "A800": 312.0,
               "L40S": 362.0, "L40": 181.0, "L4": 121.0, "A10G": 125.0, "A10": 125.0, "RTX 4090": 165.0,
               "RTX 4080": 97.0, "RTX 3090": 71.0, "RTX 3080": 59.5, "V100": 125.0, "T4": 65.0, "P100": 18.7}


@dataclass
class Config:
    """One throughput measurement."""

    arch: str  # sd15 | sdxl
    resolution: int
    batch: int
    checkpointing: bool
    compile: bool
    estimate_s: int  # rough seconds on an H100, for the time budget

    @property
    def label(self) -> str:
        return (f"{self.arch} {self.resolution}² b{self.batch}" + (", checkpointing" if self.checkpointing else "")
                + (", compiled" if self.compile else ""))


@dataclass
class Plan:
    smoke: bool = True
    configs: list[Config] = field(default_factory=list)
    pdxl: bool = True
    budget_s: float = 450.0
    rehearse: bool = False
    kohya: Path | None = None  # an sd-scripts checkout for stage (e)
    kohya_skip: str = ""  # why stage (e) does not run


def make_plan(args: argparse.Namespace) -> Plan:
    archs = {"sd15": 64, "sdxl": 64} if args.rehearse else {"sd15": 768, "sdxl": 1024}
    if args.rehearse:  # the tiny SD1.5 model on the CPU, eager ± checkpointing; pdxl on the tiny SDXL model
        args.no_smoke = args.no_compile = True
    configs = []
    for arch in (["sd15"] if args.rehearse else args.archs):
        res = archs[arch]
        configs.append(Config(arch, res, 2, False, False, 25 if arch == "sd15" else 40))
        configs.append(Config(arch, res, 2, True, False, 25 if arch == "sd15" else 40))
        if not args.no_compile:
            configs.append(Config(arch, res, 2, False, True, 60 if arch == "sd15" else 110))
    given = getattr(args, "sd_scripts", None)
    kohya = find_sd_scripts(given)
    skip = ("not rehearsed: sd-scripts builds the full-size SD1.5 from its fixed config" if args.rehearse and kohya
            else "" if kohya else f"--sd-scripts {given} holds no train_network.py" if given
            else "no sd-scripts checkout (--sd-scripts PATH, $SD_SCRIPTS, or sd-scripts/ in or beside the repository)")
    return Plan(not args.no_smoke, configs, "sdxl" in args.archs and not args.no_pdxl, args.budget, args.rehearse,
                kohya, skip)


def find_sd_scripts(given: Path | None) -> Path | None:
    """The sd-scripts checkout for stage (e): the one given, else $SD_SCRIPTS, else sd-scripts/ in or beside the
    repository (or in shared/); one holding train_network.py."""
    if given:
        return Path(given).expanduser() if (Path(given).expanduser() / "train_network.py").is_file() else None
    cands = [Path(os.environ["SD_SCRIPTS"])] if os.environ.get("SD_SCRIPTS") else []
    cands += [ROOT / "sd-scripts", ROOT / "shared" / "sd-scripts", ROOT.parent / "sd-scripts"]
    return next((c for c in cands if (c / "train_network.py").is_file()), None)


def missing_packages() -> list[str]:
    return [dist for mod, dist in NEEDED.items() if importlib.util.find_spec(mod) is None]


def describe(plan: Plan, wheels: Path | None) -> str:
    lines = [f"gpu_check plan (time budget {plan.budget_s:.0f} s; a stage that would overrun is skipped and listed)"
             + (" — REHEARSAL on the CPU with the tiny models: the code paths, not figures" if plan.rehearse else "") + ":"]
    miss = missing_packages()
    if miss:
        have = sorted(p.name for p in wheels.glob("*.whl")) if wheels and wheels.is_dir() else []
        norm = [w.split("-")[0].lower().replace("_", "-") for w in have]
        lines.append(f"  0. install from {wheels or '(no --wheels folder)'}: " + ", ".join(
            f"{m}{'' if m.lower().replace('_', '-') in norm else ' (NO WHEEL)'}" for m in miss))
    else:
        lines.append("  0. packages: everything needed is installed")
    n = 1
    if plan.smoke:
        lines.append(f"  {n}. smoke tests on CUDA: pytest -m gpu tests/test_gpu.py (~90 s)")
        n += 1
    for arch in dict.fromkeys(c.arch for c in plan.configs):
        lines.append(f"  {n}. {arch}: build the real-size model (random weights), bare diffusers+peft step eager and with "
                     "checkpointing (the floor), FLOPs of one step")
        for c in (c for c in plan.configs if c.arch == arch):
            lines.append(f"       lorafw {c.label}: steps/s, MFU, peak memory vs plan --vram (~{c.estimate_s} s)")
        n += 1
    if plan.pdxl:
        lines.append(f"  {n}. the pdxl recipe as shipped at 1024² b2: peak memory (target ≤ 10 GB) vs plan --vram (~60 s)")
        n += 1
    if plan.kohya_skip:
        lines.append(f"  -. lorafw vs kohya sd-scripts: skipped, {plan.kohya_skip}")
    else:
        lines.append(f"  {n}. lorafw vs kohya sd-scripts at {plan.kohya} (benchmarks/vs_kohya.py, fp32 + bf16, SD1.5 256² b2): "
                     f"s/step of each, ratio, peak RSS (~{KOHYA_ESTIMATE_S} s)")
    lines.append("  then: gpu_check.json + gpu_check.md in --out, rows appended to --results")
    return "\n".join(lines)


def install(wheels: Path | None, target: Path) -> list[str]:
    """Install the missing packages from `wheels` into `target` (no index, no dependencies); returns what was."""
    miss = missing_packages()
    if not miss:
        return []
    if wheels is None or not wheels.is_dir():
        raise SystemExit(f"gpu_check: missing {', '.join(miss)} and no --wheels folder; see this script's docstring")
    files = [str(p) for p in wheels.glob("*.whl")
             if p.name.split("-")[0].lower().replace("_", "-") in {m.lower().replace("_", "-") for m in miss}]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(target), *files], check=True)
    sys.path.insert(0, str(target))
    os.environ["PYTHONPATH"] = os.pathsep.join([str(target), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    importlib.invalidate_caches()
    still = missing_packages()
    if still:
        print(f"gpu_check: still missing after installing from {wheels}: {', '.join(still)} (their stages may fail)")
    return [Path(f).name for f in files]


# -- stages ----------------------------------------------------------------------------------------------------
def run_smoke(out: Path, limit: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py",
           f"--junitxml={out / 'gpu_smoke.xml'}"]
    try:
        p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        tail, rc = (p.stdout + p.stderr)[-4000:], p.returncode
    except subprocess.TimeoutExpired as e:
        tail, rc = f"timed out after {limit:.0f} s\n" + str(e.stdout or "")[-3000:], 124
    print(tail, flush=True)
    summary = next((ln for ln in reversed(tail.splitlines()) if " passed" in ln or " failed" in ln or "error" in ln), "")
    return {"rc": rc, "summary": summary.strip("= "), "seconds": round(time.perf_counter() - t0, 1)}


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def measure_arch(arch: str, configs: list[Config], args: argparse.Namespace, deadline: float, work: Path) -> list[dict[str, Any]]:
    """Build one real-size model; the bare floor (eager ± checkpointing); lorafw for each config.
    `--rehearse`: the tests' tiny model on the CPU (the same code, figures meaningless)."""
    import torch

    import step_overhead as so
    from lorafw.planning.vram import Bucket, estimate
    from lorafw.models.tiny import save_single_file

    device = torch.device("cpu" if args.rehearse else "cuda")
    res, batch = configs[0].resolution, configs[0].batch
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    parts = so.build_parts("tiny" if args.rehearse else arch)
    model = save_single_file(parts, work / f"{arch}.safetensors", torch.float32 if args.rehearse else torch.float16)
    data = so.make_images(work / f"data-{arch}", batch * (args.warmup + args.steps + 2), res)
    print(f"[{arch}] model built and saved in {time.perf_counter() - t0:.0f} s", flush=True)
    sdxl = arch == "sdxl"
    from lorafw.precision import choose, probe

    choice = choose("no" if args.rehearse else "auto", False, False, probe(device))  # rehearsal: fp32, cheapest on a CPU
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "no": torch.float32}[choice.precision]
    text_shape = (227, parts["unet"].config.cross_attention_dim)
    bare = so.bare_trainer(parts.pop("unet"), batch, (res // 8, res // 8), text_shape, device, dtype,
                           8 if sdxl else 16, 4 if sdxl else 8, 5e-4, 5.0, sdxl)
    del parts
    gc.collect()
    floors: dict[bool, float] = {}
    flops = so.step_flops(bare)
    for ckpt in (False, True):
        if time.perf_counter() > deadline:
            break
        if ckpt:
            bare.unet.enable_gradient_checkpointing()  # type: ignore[attr-defined]
        floors[ckpt] = statistics.median(so.time_bare(bare, args.warmup, args.steps, device))
        print(f"[{arch}] bare{' + checkpointing' if ckpt else ''}: {floors[ckpt]:.4f} s/step", flush=True)
    del bare
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    peak = peak_tflops(name, args.peak_tflops)
    for c in configs:
        left = deadline - time.perf_counter()
        if left < c.estimate_s:
            rows.append({"config": c.label, "skipped": f"time budget ({left:.0f} s left, ~{c.estimate_s} s needed)"})
            print(f"[{arch}] skipped {c.label}: time budget", flush=True)
            continue
        extra = [f"train.mixed_precision={choice.precision}", f"train.gradient_checkpointing={str(c.checkpointing).lower()}",
                 f"train.compile={str(c.compile).lower()}", f"dataset.cache_dir={work / 'cache'}"]
        t1 = time.perf_counter()
        try:
            tr = so.lorafw_trainer(model, data, work / f"run-{arch}-{len(rows)}", arch, res, batch, 0, device.type, extra)
            tr.setup()
            with so.PeakMemory(device) as mem:  # max_memory_allocated on a GPU (RSS on the rehearsal's CPU)
                times = so.time_lorafw(tr, args.warmup)
            measured = mem.peak
            est = estimate(tr.spec, [Bucket(res, res)]).phases["training step"]
            step = statistics.median(times)
            floor = floors.get(c.checkpointing)
            row = {"config": c.label, "precision": choice.precision, "steps_per_s": round(1 / step, 3),
                   "s_per_step": round(step, 4), "tflop_per_step": round(flops / 1e12, 2),
                   "mfu_pct": round(100 * flops / step / (peak * 1e12), 1) if peak else None,
                   "peak_gib": round(measured / 2**30, 2), "plan_gib": round(est / 2**30, 2),
                   "plan_error_pct": round(100 * (est / measured - 1), 1),
                   "bare_s_per_step": round(floor, 4) if floor else None,
                   "overhead_ratio": round(step / floor, 3) if floor else None, "seconds": round(time.perf_counter() - t1, 1)}
            if c.compile and floor:
                row["note"] = "ratio against the eager bare loop"
            del tr
        except Exception as e:  # a failure is a figure too: record it and go on
            row = {"config": c.label, "error": f"{type(e).__name__}: {e}"[:500]}
        rows.append(row)
        print(f"[{arch}] {json.dumps(row)}", flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def measure_pdxl(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The pdxl recipe as shipped at 1024² b2 on the random SDXL model built by measure_arch: whole-run peak."""
    import torch

    from lorafw.config.compose import compose
    from lorafw.planning.vram import Bucket, estimate, on_card
    from lorafw.run import train

    import step_overhead as so

    model, data, res = work / "sdxl.safetensors", work / "data-sdxl", 1024
    extra = []
    if args.rehearse:
        from lorafw.models.tiny import build_sdxl, save_single_file

        model, res = save_single_file(build_sdxl(0), work / "tiny-sdxl.safetensors"), 64
        data = so.make_images(work / "data-tiny-sdxl", 4, res)
        extra = [f"dataset.resolution={res}", "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=128"]
    if not model.is_file():
        return {"config": "pdxl recipe", "skipped": "the SDXL model was not built (its stage was skipped)"}
    device = torch.device("cpu" if args.rehearse else "cuda")
    spec = compose("pdxl", [f"base_model.path={model}", f"dataset.root={data}", "train.epochs=1", f"train.device={device.type}",
                            f"dataset.cache_dir={work / 'cache-pdxl'}", f"output.dir={work / 'run-pdxl'}", "output.name=pdxl",
                            "log.tensorboard=false", *extra])
    t0 = time.perf_counter()
    with so.PeakMemory(device) as mem:
        result = train(spec)
    measured = mem.peak
    reserved = torch.cuda.max_memory_reserved() if device.type == "cuda" else measured
    e = estimate(spec, [Bucket(res, res)])
    return {"config": f"pdxl recipe, {res}² b2", "peak_gib": round(measured / 2**30, 2),
            "peak_reserved_gib": round(reserved / 2**30, 2), "plan_gib": round(e.peak / 2**30, 2),
            "plan_on_card_gib": round(on_card(e.peak) / 2**30, 2), "plan_error_pct": round(100 * (e.peak / measured - 1), 1),
            "target": "≤ 10 GB", "steps": result.steps, "seconds": round(time.perf_counter() - t0, 1)}


KOHYA_ESTIMATE_S = 240  # on a GPU: the model built once (~40 s) and 4 short trainings; with a kohya crash, one more


def run_vs_kohya(args: argparse.Namespace, sd_scripts: Path, out: Path, limit: float) -> dict[str, Any]:
    """Stage (e): benchmarks/vs_kohya.py in its own process; its summary rows (or why there are none)."""
    kpy = args.kohya_python or os.environ.get("KOHYA_PYTHON")
    cmd = [sys.executable, str(ROOT / "benchmarks" / "vs_kohya.py"), "--sd-scripts", str(sd_scripts), "--precision", "both",
           "--repeats", "1", "--device", "cuda", "--json", str(out / "vs_kohya.json"), "--timeout", str(int(limit / 3))]
    cmd += ["--kohya-python", kpy] if kpy else []
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        text, rc = p.stdout + p.stderr, p.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = f"timed out after {limit:.0f} s\n{e.stdout or ''}", 124
    print(text[-6000:], flush=True)
    row: dict[str, Any] = {"rc": rc, "seconds": round(time.perf_counter() - t0, 1), "sd_scripts": str(sd_scripts)}
    if (out / "vs_kohya.json").is_file():
        data = json.loads((out / "vs_kohya.json").read_text())
        row["rows"] = [{"precision": s["precision"], "clip_skip": s["clip_skip"], "kohya_s_per_step": s["kohya"]["steady_mean"],
                        "lorafw_s_per_step": s["lorafw"]["steady_mean"], "ratio_steady": s["ratio_steady"],
                        "ratio_with_save": s["ratio_with_save"], "peak_rss_kohya": s["kohya"]["peak_rss_max"],
                        "peak_rss_lorafw": s["lorafw"]["peak_rss_max"]} for s in data["summary"]]
        row["notes"] = data["notes"]
    else:
        row["error"] = next((ln for ln in reversed(text.splitlines()) if ln.strip()), f"exit {rc}")[:500]
    return row


# -- results -----------------------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"## GPU check — {env['device']}, torch {env['torch']} ({report['date']})", "",
             f"`python checks/gpu_check.py` ({report['seconds']:.0f} s; peak {env.get('peak_tflops') or '?'} TFLOPS dense "
             f"from its table; random weights, LoRA, latents and text cached, SDPA, precision {env.get('precision')}).", ""]
    s = report.get("smoke")
    if s:
        lines += [f"Smoke tests (tests/test_gpu.py, tiny models on CUDA): {s['summary'] or 'rc ' + str(s['rc'])} "
                  f"in {s['seconds']:.0f} s.", ""]
    rows = report.get("throughput", [])
    if rows:
        lines += ["| config | steps/s | MFU | peak GiB | plan --vram GiB (error) | bare s/step | ratio |", "|---|---|---|---|---|---|---|"]
        for r in rows:
            if "steps_per_s" in r:
                lines.append(f"| {r['config']} | {r['steps_per_s']} | {r['mfu_pct'] if r['mfu_pct'] is not None else '?'}% | "
                             f"{r['peak_gib']} | {r['plan_gib']} ({r['plan_error_pct']:+.0f}%) | {r['bare_s_per_step'] or '-'} | "
                             f"{r['overhead_ratio'] or '-'} |")
            else:
                lines.append(f"| {r['config']} | {r.get('skipped') or r.get('error')} | | | | | |")
        lines.append("")
    p = report.get("pdxl")
    if p:
        if "peak_gib" in p:
            lines.append(f"{p['config']} (as shipped): peak {p['peak_gib']} GiB allocated ({p['peak_reserved_gib']} reserved; "
                         f"target ≤ 10 GB), plan --vram {p['plan_gib']} GiB allocated ({p['plan_error_pct']:+.0f}%), "
                         f"{p['plan_on_card_gib']} GiB on the card.")
        else:
            lines.append(f"pdxl recipe: {p.get('skipped') or p.get('error')}")
        lines.append("")
    k = report.get("vs_kohya")
    if k:
        if k.get("rows"):
            lines += [f"lorafw vs kohya sd-scripts ({k['sd_scripts']}; benchmarks/vs_kohya.py, SD1.5 256² b2, LoRA 16/8 on UNet "
                      "and text encoder, 2 epochs of 4 steps):", "",
                      "| precision | kohya s/step | lorafw s/step | lorafw ÷ kohya steady | with save | peak host RSS GiB kohya / lorafw |",
                      "|---|---|---|---|---|---|"]
            for r in k["rows"]:
                def f(v: Any, d: int = 3) -> str:
                    return f"{v:.{d}f}" if isinstance(v, (int, float)) else "–"
                rss = f"{f((r['peak_rss_kohya'] or 0) / 2**30, 2)} / {f((r['peak_rss_lorafw'] or 0) / 2**30, 2)}"
                lines.append(f"| {r['precision']} (clip_skip {r['clip_skip']}) | {f(r['kohya_s_per_step'])} | "
                             f"{f(r['lorafw_s_per_step'])} | {f(r['ratio_steady'], 2)} | {f(r['ratio_with_save'], 2)} | {rss} |")
            lines += [f"- {n}" for n in k.get("notes", [])]
        else:
            lines.append(f"lorafw vs kohya sd-scripts: {k.get('skipped') or k.get('error')}")
        lines.append("")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import torch

    from lorafw.precision import choose, probe

    if not torch.cuda.is_available():  # the rehearsal
        return {"device": "CPU (rehearsal)", "torch": torch.__version__, "precision": choose("auto", False, False, probe("cpu")).precision}
    name = torch.cuda.get_device_name(0)
    choice = choose("auto", False, False, probe("cuda:0"))
    cc = torch.cuda.get_device_capability(0)
    return {"device": name, "capability": f"{cc[0]}.{cc[1]}", "memory_gib": round(torch.cuda.mem_get_info(0)[1] / 2**30, 1),
            "torch": torch.__version__, "cuda": torch.version.cuda, "precision": choice.precision,
            "peak_tflops": peak_tflops(name, None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="print the plan and what is missing; exit 0")
    ap.add_argument("--out", type=Path, default=None, help="folder for gpu_check.json / gpu_check.md (default: a temp folder)")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md", help="markdown file the rows are appended to")
    ap.add_argument("--wheels", type=Path, default=None, help="folder of wheels for the missing packages (see the docstring)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds for all stages (default 450: ≤ 8 min with start-up)")
    ap.add_argument("--archs", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    ap.add_argument("--no-smoke", action="store_true")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-pdxl", action="store_true")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rehearse", action="store_true", help="run the stages' code on the CPU with the tiny models (for CI)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the card's dense peak, when its name is not in the table")
    ap.add_argument("--sd-scripts", type=Path, default=None, help="an sd-scripts checkout for stage (e) (default: $SD_SCRIPTS, "
                    "sd-scripts/ in or beside the repository)")
    ap.add_argument("--kohya-python", default=None, help="an interpreter with sd-scripts' requirements (default: $KOHYA_PYTHON, "
                    "else vs_kohya.py's venv)")
    args = ap.parse_args(argv)
    plan = make_plan(args)
    print(describe(plan, args.wheels), flush=True)
    if args.dry_run:
        return 0
    start = time.perf_counter()
    deadline = start + plan.budget_s
    installed = install(args.wheels, Path(tempfile.gettempdir()) / "lorafw-site")
    import torch

    if not torch.cuda.is_available() and not args.rehearse:
        print("gpu_check: no CUDA GPU here; use --dry-run (or --rehearse) on a CPU", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"date": datetime.date.today().isoformat(), "environment": environment(), "installed": installed,
                              "plan": [asdict(c) for c in plan.configs]}
    print(f"environment: {report['environment']}", flush=True)
    if plan.smoke:
        report["smoke"] = run_smoke(out, max(60.0, min(200.0, deadline - time.perf_counter() - 200)))
    work = Path(tempfile.mkdtemp(prefix="gpu-check-work-"))
    report["throughput"] = []
    for arch in dict.fromkeys(c.arch for c in plan.configs):
        if deadline - time.perf_counter() < 60:
            report["throughput"].append({"config": arch, "skipped": "time budget"})
            continue
        try:
            report["throughput"] += measure_arch(arch, [c for c in plan.configs if c.arch == arch], args, deadline, work)
        except Exception as e:
            report["throughput"].append({"config": arch, "error": f"{type(e).__name__}: {e}"[:500]})
    if plan.pdxl:
        if deadline - time.perf_counter() < 45:
            report["pdxl"] = {"config": "pdxl recipe", "skipped": "time budget"}
        else:
            try:
                report["pdxl"] = measure_pdxl(args, work)
            except Exception as e:
                report["pdxl"] = {"config": "pdxl recipe", "error": f"{type(e).__name__}: {e}"[:500]}
    if plan.kohya_skip:
        report["vs_kohya"] = {"skipped": plan.kohya_skip}
        print(f"gpu_check: lorafw vs kohya sd-scripts skipped: {plan.kohya_skip}", flush=True)
    elif deadline - time.perf_counter() < KOHYA_ESTIMATE_S:
        report["vs_kohya"] = {"skipped": f"time budget ({deadline - time.perf_counter():.0f} s left, ~{KOHYA_ESTIMATE_S} s needed)"}
    else:
        try:
            report["vs_kohya"] = run_vs_kohya(args, plan.kohya, out, deadline - time.perf_counter())
        except Exception as e:
            report["vs_kohya"] = {"error": f"{type(e).__name__}: {e}"[:500]}
    report["seconds"] = round(time.perf_counter() - start, 1)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (out / "gpu_check.md").write_text(md)
    with open(args.results, "a") as f:
        f.write("\n" + md)
    print(md)
    print(f"gpu_check: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}; rows appended to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
