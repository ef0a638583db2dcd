"""lorafw against kohya sd-scripts on the same training run: s/step of each, the ratio, peak RSS, the settings.

    .venv/bin/python benchmarks/vs_kohya.py --sd-scripts PATH [--precision fp32|bf16|both] [--repeats N]
    .venv/bin/python benchmarks/vs_kohya.py --sd-scripts PATH --model anima [--steps-per-epoch N --epochs N]

PATH is an sd-scripts checkout you cloned (nothing of it is copied into lorafw). The run (issue 20): a
full-size SD1.5 single .safetensors with seeded random weights (built once, cached in --work) and 8
generated images at 256 px; batch 2, LoRA dim 16 / alpha 8 on the UNet and the text encoder, AdamW, latents
cached, clip_skip 2, 75 tokens, 4 steps per epoch, 2 epochs, same seed, lr and everything else both share.

How:
- lorafw's spec for the run is written as a run folder's config.yaml and `lorafw export` turns it into
  kohya's TOML pair; train_network.py gets those (--config_file/--dataset_config) plus only what the export
  cannot hold: output and logging folders (--log_with tensorboard) and --tokenizer_cache_dir. lorafw trains
  the same config.yaml (`lorafw rerun`). The settings table is read back from both sides' files.
- Each training is its own child process, kohya and lorafw alternating (kohya, lorafw, kohya, lorafw …
  with --repeats), so drift on a shared machine shows in the per-run figures. Peak RSS is that child's own
  (the kernel's high-water mark of that process's memory: no other run's peak can leak into it).
- Step times are the TensorBoard events both write once per step (see benchmarks/steplog.py for the
  definitions of "steady" and "with save", printed with the figures).
- kohya runs as `python train_network.py` (one process: what `accelerate launch` would start, without the
  launcher, which on a CPU may also set OMP_NUM_THREADS=1), from its own venv (--kohya-venv, made on first
  use from the registry; or --kohya-python), offline (HF_HUB_OFFLINE=1), with the torchvision stand-in and
  the tokenizer cache of benchmarks/kohya_env.py.
- kohya's bf16 with clip_skip 2 crashes on a CPU: its SD1.5 text encoder is cast to bf16 and
  strategy_sd.encode_tokens calls final_layer_norm on the accelerate-wrapped model's fp32 output outside
  autocast ("mixed dtype (CPU): expect parameter to have scalar type of Float"); no sd-scripts option keeps
  that text encoder in fp32 under bf16. When that run fails so, both trainers run that precision at
  clip_skip 1 (the same settings on both sides) and the printout says so.

--model anima (issue 25): a full-size Anima — the DiT (28 blocks × 2048, 16 heads, 2B parameters, its LLM adapter
inside), Qwen3-0.6B and the Qwen-Image VAE — with seeded random weights as ComfyUI's three bf16 single files (built
once, cached in --work), 8 images at 256 px; batch 2, LoRA 8/1 on the DiT blocks' attention and MLP layers (sd-scripts'
networks.lora_anima default targets), bf16, latents and the text encoder's outputs cached, AdamW, constant 1e-4.
kohya runs anima_train_network.py with the exported TOML pair plus --network_module networks.lora_anima (the export
writes networks.lora; a note says so) and reads Qwen3's and T5's tokenizers from its own configs/; the same ids as
lorafw's are checked in kohya's interpreter first (kohya_env.check_anima_tokenizers).

Figures only: nothing asserts. Take final figures on a quiet machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import kohya_env  # noqa: E402
import kohya_settings as ks  # noqa: E402
from vs_kohya_report import gib, report, summary  # noqa: E402
import steplog  # noqa: E402

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lorafw"
EXPECTED_DIFFERENCES = {"training state saved each epoch"}  # lorafw's default; --kohya-save-state makes them equal
ANIMA_DONE = "complete"  # written last into the Anima model folder


def bf16_clip_skip_crash(log_text: str) -> str | None:
    """The line of kohya's bf16 + clip_skip crash in its output, if that is how it failed: a dtype error raised from
    strategy_sd's final_layer_norm ("mixed dtype (CPU): expect parameter to have scalar type of Float" on a CPU)."""
    lines = log_text.replace("\r", "\n").splitlines()
    at_norm = any("final_layer_norm" in ln for ln in lines)
    err = next((ln.strip() for ln in reversed(lines) if ln.startswith("RuntimeError") and ("dtype" in ln or "scalar type" in ln)), None)
    return err if at_norm and err else None


# -- the model and the data (built once, in a child process: ~7 GB while building) -----------------------------
def build(model: Path, data: Path, n_images: int, resolution: int, seed: int) -> None:
    """A full-size SD1.5 (UNet, VAE, CLIP ViT-L text encoder) with seeded random weights as one original-layout
    fp16 .safetensors, as shared checkpoints are; and n captioned images at `resolution` px in data/1_bench."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    import step_overhead as so
    from lorafw.models import tiny

    so.make_images(data, n_images, resolution)
    if model.is_file():
        return
    vae = {"in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 512, 512],
           "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
           "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512, "scaling_factor": 0.18215}
    torch.manual_seed(seed)
    parts = {"unet": UNet2DConditionModel(**so.SD15_UNET).eval(), "vae": AutoencoderKL(**vae).eval(),
             "text_encoder": CLIPTextModel(CLIPTextConfig(**{**tiny.TINY_CLIP_L, **so.CLIP_L, "projection_dim": 768})).eval()}
    tmp = model.with_suffix(".partial")
    tiny.save_single_file(parts, tmp, torch.float16)
    tmp.rename(model)  # a build cut short is never taken for a model


def build_anima(folder: Path, data: Path, n_images: int, resolution: int, seed: int) -> None:
    """A full-size Anima (the DiT: 28 blocks × 2048, 16 heads, its LLM adapter inside; Qwen3-0.6B; the Qwen-Image VAE)
    with seeded random weights as ComfyUI's three bf16 single files (lorafw/archs/anima/tiny.py at its FULL sizes, the
    real shapes: sd-scripts reads Qwen3's and the VAE's configuration from its own files, so nothing smaller loads
    there); and n captioned images at `resolution` px in data/1_bench."""
    import torch

    import step_overhead as so
    from lorafw.archs.anima import tiny

    so.make_images(data, n_images, resolution)
    if (folder / ANIMA_DONE).is_file():
        return
    tiny.write(folder, tiny.FULL, seed, torch.bfloat16)
    (folder / ANIMA_DONE).write_text("built\n")  # a build cut short is never taken for a model


# -- one child process --------------------------------------------------------------------------------------------
@dataclass
class Child:
    rc: int
    peak_rss: int  # bytes
    wall_s: float
    load: float  # 1-minute load average when it started


def run_child(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, timeout: float) -> Child:
    """Run `cmd` to its end with its output in `log`. Peak RSS: the kernel's high-water mark of that process's own
    memory (/proc/PID/status VmHWM, read every 0.2 s until it exits). Not the rusage of wait4/RUSAGE_CHILDREN:
    Linux carries the spawning process's RSS into a child's ru_maxrss at exec, and RUSAGE_CHILDREN is the maximum
    over every child so far, so one run's peak would show in the next."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    peak = 0
    with open(log, "w") as f:
        p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        while True:
            peak = max(peak, hwm(p.pid))
            pid, status, usage = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - t0 > timeout:
                os.killpg(p.pid, signal.SIGTERM)
                _, status, usage = os.wait4(p.pid, 0)
                break
            time.sleep(0.2)
    p.returncode = os.waitstatus_to_exitcode(status)
    if not Path("/proc/self/status").is_file():  # no procfs (macOS): rusage, in bytes there
        peak = usage.ru_maxrss
    return Child(p.returncode, peak, time.perf_counter() - t0, load)


def hwm(pid: int) -> int:
    """VmHWM of a live process in bytes (0 once it has exited or where there is no procfs)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tail(log: Path, n: int = 15) -> str:
    lines = [ln for ln in log.read_text(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    return "\n".join("    " + ln for ln in lines[-n:])


# -- the two trainers ------------------------------------------------------------------------------------------
@dataclass
class Result:
    trainer: str
    precision: str
    repeat: int
    clip_skip: int
    child: Child
    out: Path
    log: Path
    figures: steplog.StepFigures | None = None
    lora: dict[str, int] = field(default_factory=dict)
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"trainer": self.trainer, "precision": self.precision, "repeat": self.repeat, "clip_skip": self.clip_skip,
                "rc": self.child.rc, "peak_rss_gib": round(self.child.peak_rss / 2**30, 2), "wall_s": round(self.child.wall_s, 1),
                "load_average": self.child.load, "lora": self.lora, "error": self.error, "out": str(self.out),
                **(self.figures.to_json() if self.figures else {})}


@dataclass
class Plan:
    """One precision's spec folder (config.yaml + kohya/config.toml, dataset.toml) and its settings table."""

    precision: str
    clip_skip: int
    folder: Path
    spec: dict[str, Any]
    kohya_config: Path
    kohya_dataset: Path
    rows: list[tuple[str, Any, Any, bool]]


def prepare(run: ks.Run, precision: str, clip_skip: int, model: Path, data: Path, folder: Path,
            kohya_cli: dict[str, Any], parts: dict[str, str] | None = None) -> Plan:
    """lorafw's spec for this precision as a run folder's config.yaml, and `lorafw export` of it. `parts`: Anima's
    text_encoder and vae files."""
    import tomllib

    from lorafw.config.compose import compose
    from lorafw.outputs.record import write_config
    from lorafw.run import resolve_outputs

    overrides = ks.lorafw_overrides(run, str(model), str(data), precision, clip_skip, **(parts or {}))
    spec = resolve_outputs(compose(None, overrides), folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_config(folder, spec)
    out = folder / "kohya"
    done = subprocess.run([sys.executable, "-m", "lorafw", "export", str(folder), "--out", str(out)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"vs_kohya: `lorafw export {folder}` failed:\n{done.stderr or done.stdout}")
    config, dataset = out / "config.toml", out / "dataset.toml"
    merged = ks.kohya_arguments(tomllib.loads(config.read_text()), tomllib.loads(dataset.read_text()), kohya_cli)
    return Plan(precision, clip_skip, folder, spec.to_dict(), config, dataset, ks.settings_rows(spec.to_dict(), merged))


KOHYA_SCRIPTS = {"sd15": "train_network.py", "anima": "anima_train_network.py"}


def cli_args(cli: dict[str, Any]) -> list[str]:
    """kohya's command-line arguments for `cli` ({name: value}, True = a flag): what kohya_arguments merged."""
    out: list[str] = []
    for k, v in cli.items():
        out += [f"--{k}"] if v is True else [] if v is False or v is None else [f"--{k}", str(v)]
    return out


def kohya_command(py: Path, arch: str, plan: Plan, out: Path, cli: dict[str, Any],
                  tokenizers: Path | None) -> list[str]:
    return ([str(py), KOHYA_SCRIPTS[arch], "--config_file", str(plan.kohya_config),
             "--dataset_config", str(plan.kohya_dataset), "--output_dir", str(out), "--logging_dir", str(out / "logs")]
            + cli_args(cli)
            + (["--tokenizer_cache_dir", str(tokenizers)] if tokenizers else []))


def lorafw_command(plan: Plan, out: Path) -> list[str]:
    return [sys.executable, "-m", "lorafw", "rerun", str(plan.folder), f"output.dir={out}"]


def read_figures(res: Result, run: ks.Run) -> None:
    """Step times from the run's TensorBoard events, the end of its last save, and its LoRA file's census."""
    logs = res.out / ("logs" if res.trainer == "kohya" else "tensorboard")
    times = steplog.step_times(steplog.scalar_events(steplog.event_files(logs)), steplog.STEP_TAGS[res.trainer])
    if len(times) != run.steps:
        res.error = f"{len(times)} step events in {logs} (expected {run.steps})"
        return
    res.figures = steplog.StepFigures(times, run.steps_per_epoch, steplog.save_end(res.trainer, res.out))
    final = res.out / ("bench.safetensors" if res.trainer == "kohya" else f"bench-{run.epochs:02d}.safetensors")
    if final.is_file():
        res.lora = steplog.lora_census(steplog.safetensors_header(final))


# -- main ------------------------------------------------------------------------------------------------------
ANIMA_NETWORK = "networks.lora_anima"


def anima_model(work: Path, seed: int, data: Path) -> tuple[Path, bool]:
    """The full-size Anima's DiT file in `work` and whether its folder (and the dataset) is complete."""
    folder = work / f"anima-full-seed{seed}-bf16"
    return folder / "anima.safetensors", (folder / ANIMA_DONE).is_file() and (data / "1_bench").is_dir()


def exported_network_module(config: Path) -> str | None:
    import tomllib

    return tomllib.loads(config.read_text()).get("network_arguments", {}).get("network_module")


def cpu_name(cpuinfo: str | None = None) -> str:
    """The CPU's model name (lorafw.precision.cpu_model of /proc/cpuinfo; platform.processor() elsewhere)."""
    import platform

    from lorafw.precision import cpu_model

    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    return cpu_model(cpuinfo) or platform.processor() or platform.machine() or "unknown CPU"


def git_rev(path: Path) -> str:
    p = subprocess.run(["git", "-C", str(path), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 and p.stdout.strip() else "unknown (not a git checkout)"


def kohya_environment(args: argparse.Namespace, work: Path, notes: list[str]) -> tuple[Path, dict[str, str]]:
    """kohya's interpreter and the environment its processes get (offline; the torchvision stand-in if needed)."""
    if args.kohya_python:
        py = Path(args.kohya_python)
        notes.append(f"kohya interpreter: {py} (given)")
    else:
        rep = kohya_env.ensure_venv(Path(args.kohya_venv).expanduser(), args.sd_scripts, args.kohya_torch, log=print)
        py = rep.python
        notes.append(rep.describe())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1")
    need, why = kohya_env.needs_torchvision_shim(py, env)
    if need:
        shim = kohya_env.write_torchvision_shim(work / "torchvision-shim")
        env["PYTHONPATH"] = str(shim)
        notes.append(f"torchvision: the kohya interpreter cannot import it ({why}); lorafw's stand-in (Compose, ToTensor, "
                     f"Normalize, pil_to_tensor, nearest resize of tensors; benchmarks/kohya_env.py) first on kohya's "
                     f"PYTHONPATH: {shim}")
    return py, env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sd-scripts", type=Path, required=True, help="an sd-scripts checkout (holding train_network.py)")
    ap.add_argument("--kohya-venv", default=str(CACHE / "kohya-venv"), help="sd-scripts' venv, made on first use (default %(default)s)")
    ap.add_argument("--kohya-python", default=None, help="use this interpreter for sd-scripts instead of --kohya-venv")
    ap.add_argument("--kohya-torch", default=kohya_env.TORCH_PIN, help="torch requirement installed first into the venv")
    ap.add_argument("--model", choices=["sd15", "anima"], default="sd15",
                    help="the family: sd15 (issue 20's run) or anima (issue 25's; bf16 only unless --precision says)")
    ap.add_argument("--precision", choices=["fp32", "bf16", "both"], default=None,
                    help="default: both (sd15), bf16 (anima)")
    ap.add_argument("--repeats", type=int, default=1, help="kohya, lorafw pairs per precision, alternating")
    ap.add_argument("--steps-per-epoch", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--clip-skip", type=int, default=2)
    ap.add_argument("--bf16-clip-skip", type=int, default=None,
                    help="bf16 at this clip_skip on both sides from the start (default: --clip-skip, and 1 if kohya crashes)")
    ap.add_argument("--device", default="auto", help="lorafw's train.device (kohya: accelerate's choice)")
    ap.add_argument("--threads", type=int, default=None, help="OMP/MKL threads for both trainers (default: torch's)")
    ap.add_argument("--kohya-save-state", action="store_true", help="kohya also saves its training state each epoch, as lorafw does")
    ap.add_argument("--work", type=Path, default=CACHE / "vs_kohya", help="model, data and runs (default %(default)s)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per training before it is stopped")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    args.sd_scripts = args.sd_scripts.expanduser().resolve()
    if not (args.sd_scripts / "train_network.py").is_file() or not (args.sd_scripts / "requirements.txt").is_file():
        print(f"vs_kohya: {args.sd_scripts} is not an sd-scripts checkout (no train_network.py / requirements.txt); "
              "clone kohya-ss/sd-scripts and pass its folder", file=sys.stderr)
        return 2
    anima = args.model == "anima"
    if anima:
        run = ks.anima_run(args.steps_per_epoch, args.epochs, args.device)
        if not (args.sd_scripts / KOHYA_SCRIPTS["anima"]).is_file():
            print(f"vs_kohya: {args.sd_scripts} has no anima_train_network.py (sd-scripts before Anima support, "
                  "February 2026); update the checkout", file=sys.stderr)
            return 2
    else:
        run = ks.Run(clip_skip=args.clip_skip, steps_per_epoch=args.steps_per_epoch, epochs=args.epochs,
                     device=args.device)
    precision = args.precision or ("bf16" if anima else "both")
    work = args.work.expanduser()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    runs_dir = work / "runs" / stamp
    notes: list[str] = []
    load_start = os.getloadavg()
    t_setup = time.perf_counter()
    kpy, kenv = kohya_environment(args, work, notes)
    lenv = {k: v for k, v in os.environ.items()}
    for env in (kenv, lenv):
        if args.threads:
            env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))

    data = work / f"data-{run.images}x{run.resolution}"
    parts: dict[str, str] = {}
    tokenizers: Path | None = None
    if anima:
        model, ready = anima_model(work, run.seed, data)
        parts = {"text_encoder": str(model.parent / "qwen_3_06b_base.safetensors"),
                 "vae": str(model.parent / "qwen_image_vae.safetensors")}
        what, builder, target = ("the full-size Anima (random weights, ~5 GB of bf16 files; once)", "build_anima",
                                 model.parent)
    else:
        model = work / f"sd15-random-seed{run.seed}-fp16.safetensors"
        ready = model.is_file() and (data / "1_bench").is_dir()
        what, builder, target = "the full-size SD1.5 model (random weights, ~2 GB; once)", "build", model
    if not ready:
        have = (model.parent / ANIMA_DONE).is_file() if anima else model.is_file()
        print(f"vs_kohya: building {what + ' and ' if not have else ''}the dataset in {work}", flush=True)
        code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[1] + '/benchmarks']; import vs_kohya; from pathlib import Path; "
                f"vs_kohya.{builder}(Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]))")
        subprocess.run([sys.executable, "-c", code, str(ROOT), str(target), str(data), str(run.images), str(run.resolution),
                        str(run.seed)], check=True)
    if anima:
        from lorafw.archs.anima.text import tokenizers as anima_tokenizers

        kohya_env.check_anima_tokenizers(kpy, args.sd_scripts, Path(parts["text_encoder"]), anima_tokenizers(),
                                         ["bench, picture 0", "1girl, (masterpiece:1.2), " * 30], kenv)
        notes.append("tokenizers: sd-scripts reads Qwen3's and T5's from its configs/ (anima_utils); the same ids and "
                     "masks as lorafw's at 512 tokens, checked in kohya's interpreter")
    else:
        from lorafw.models.tokenizer import clip_tokenizer, clip_tokenizer_dir

        tokenizers = work / "tokenizers"
        folders = kohya_env.write_tokenizer_cache(tokenizers, clip_tokenizer_dir())
        kohya_env.check_tokenizer(kpy, folders[0], clip_tokenizer(), ["bench, picture 0", "a (long:1.2) caption, " * 20], kenv)
        notes.append(f"tokenizer: sd-scripts reads lorafw's bundled CLIP files from {tokenizers} (--tokenizer_cache_dir); "
                     "the same ids as lorafw's tokenizer, checked in kohya's interpreter")
    setup_s = time.perf_counter() - t_setup

    kohya_cli = {"log_with": "tensorboard", **({"save_state": True} if args.kohya_save_state else {}),
                 **({"network_module": ANIMA_NETWORK} if anima else {})}
    precisions = ["fp32", "bf16"] if precision == "both" else [precision]
    results: list[Result] = []
    plans: dict[str, Plan] = {}
    for prec in precisions:
        clip = args.bf16_clip_skip if prec == "bf16" and args.bf16_clip_skip else run.clip_skip
        folder = runs_dir / (f"anima-{prec}" if anima else f"{prec}-clip{clip}")
        plan = prepare(run, prec, clip, model, data, folder, kohya_cli, parts)
        bad = [r[0] for r in plan.rows if not r[3] and r[0] not in EXPECTED_DIFFERENCES]
        if bad:
            notes.append(f"{prec}: the exported kohya settings differ from lorafw's in: {', '.join(bad)} (an exporter bug)")
        if anima:
            exported = exported_network_module(plan.kohya_config)
            if exported != ANIMA_NETWORK:
                notes.append(f"`lorafw export` wrote network_module = {exported} for this Anima run "
                             "(lorafw/interop/kohya.py has no Anima case); kohya was given "
                             f"--network_module {ANIMA_NETWORK} on its command line")
        for rep in range(1, args.repeats + 1):
            for trainer in ("kohya", "lorafw"):
                res = train_one(trainer, plan, rep, runs_dir, kpy, kenv, lenv, tokenizers, args, run, kohya_cli)
                crash = (bf16_clip_skip_crash(res.log.read_text(errors="replace"))
                         if trainer == "kohya" and res.child.rc and prec == "bf16" and plan.clip_skip > 1 else None)
                if crash:
                    notes.append(f"kohya's bf16 with clip_skip {plan.clip_skip} crashed on this device at strategy_sd's "
                                 f"final_layer_norm ({crash}; {res.log}): bf16 was run at clip_skip 1 by both trainers")
                    print(f"vs_kohya: kohya's bf16 crashed at clip_skip {plan.clip_skip} ({crash}); both at clip_skip 1", flush=True)
                    plan = prepare(run, prec, 1, model, data, runs_dir / f"{prec}-clip1", kohya_cli)
                    res = train_one(trainer, plan, rep, runs_dir, kpy, kenv, lenv, tokenizers, args, run, kohya_cli)
                results.append(res)
        plans[prec] = plan

    from lorafw.precision import cpu_facts, describe_cpu

    cpu = cpu_facts()  # the figures are this CPU's: its name, cores, bf16/AMX flags and torch's ISA level
    header = [f"vs_kohya {stamp} ({args.model}): lorafw {git_rev(ROOT)} vs sd-scripts {git_rev(args.sd_scripts)} "
              f"({args.sd_scripts})",
              f"machine: {describe_cpu(cpu)}; threads {args.threads or 'default'}, device {args.device}; load average "
              f"{load_start[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end; setup {setup_s:.0f} s; runs in {runs_dir}"]
    text = report(results, plans, notes, header, EXPECTED_DIFFERENCES)
    print("\n" + text)
    runs_dir.mkdir(parents=True, exist_ok=True)
    (runs_dir / "vs_kohya.md").write_text(text + "\n")
    payload = {"stamp": stamp, "header": header, "cpu": cpu, "notes": notes, "runs": [r.to_json() for r in results],
               "summary": [{**summary(results, p), "clip_skip": plans[p].clip_skip} for p in plans],
               "settings": {p: [list(map(str, row)) for row in plans[p].rows] for p in plans}}
    (runs_dir / "vs_kohya.json").write_text(json.dumps(payload, indent=1, default=str) + "\n")
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    return 0 if all(r.figures for r in results) else 1


def train_one(trainer: str, plan: Plan, rep: int, runs_dir: Path, kpy: Path, kenv: dict[str, str], lenv: dict[str, str],
              tokenizers: Path | None, args: argparse.Namespace, run: ks.Run, kohya_cli: dict[str, Any]) -> Result:
    out = plan.folder / f"{trainer}-{rep}"
    log = plan.folder / f"{trainer}-{rep}.log"
    out.parent.mkdir(parents=True, exist_ok=True)
    if trainer == "kohya":
        cmd, cwd, env = kohya_command(kpy, run.arch, plan, out, kohya_cli, tokenizers), args.sd_scripts, kenv
    else:
        cmd, cwd, env = lorafw_command(plan, out), ROOT, lenv
    print(f"vs_kohya: {plan.precision} run {rep}: {trainer} … ({log})", flush=True)
    child = run_child(cmd, cwd, env, log, args.timeout)
    res = Result(trainer, plan.precision, rep, plan.clip_skip, child, out, log)
    if child.rc:
        res.error = f"exit {child.rc}"
        print(f"vs_kohya: {trainer} failed (exit {child.rc}); the end of {log}:\n{tail(log)}", flush=True)
        return res
    read_figures(res, run)
    f = res.figures
    print(f"vs_kohya: {trainer} {plan.precision}: " + (f"steady {f.steady:.3f} s/step, with save {f.with_save:.3f} s/step, "
          if f and f.with_save else f"no figures ({res.error}), ") + f"peak RSS {gib(child.peak_rss)} GiB, {child.wall_s:.0f} s", flush=True)
    return res


if __name__ == "__main__":
    sys.exit(main())
