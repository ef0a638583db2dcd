"""Where a lorafw training step's time goes, on the run issue 20 compared with kohya sd-scripts.

    python benchmarks/step_profile.py                         # fp32, clip_skip 2: per-step and per-phase times
    python benchmarks/step_profile.py --precision bf16 --clip-skip 1
    python benchmarks/step_profile.py --profile               # + torch.profiler's top operators of one step
    python benchmarks/step_profile.py --ab                    # each speed lever off vs on, alternating runs

The run: a full-size SD1.5 (UNet 320/640/1280/1280, CLIP-L 12 layers; a small VAE, which only builds the
latent cache) with seeded random weights, written once as an original-layout single .safetensors file
(cached under --work); 8 generated images at 256 px with captions; batch 2, LoRA dim 16 / alpha 8 on the
UNet and the text encoder (trained, lr 1e-4), AdamW, cached latents, clip_skip 2, 75 tokens, 4 steps per
epoch, 2 epochs, a LoRA file and state.pt at each epoch's end — lorafw's own `train()` loop, as `lorafw train`
runs it (progress bar, metrics files, TensorBoard, NaN checks).

Phases are timed by wrapping the functions a step calls (wall time, perf_counter; on a CPU every op is
synchronous): tokenize, text-encoder forward, UNet forward, UNet backward (until the text states' gradient
arrives, a tensor hook), text-encoder backward (the rest of backward), gradient clipping, optimizer step,
zero_grad, metrics; "other" is the step's remainder (noise, loss, the host read, bookkeeping). Epoch-end
writes (LoRA file, state.pt, summary) are timed apart. s/step "with saves" divides the loop's whole time
after the first step (which is warm-up) by the steps after it.

--ab runs the run in fresh subprocesses, alternating lever off / all on (A B A B ...), and prints each
lever's s/step both ways: relative figures on a shared machine (the load average is printed with them).
Figures only: nothing asserts.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

# --against runs this script on another lorafw tree (e.g. a `git archive` of an older commit)
sys.path.insert(0, os.environ.get("STEP_PROFILE_TREE") or str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
          "projection_dim": 768}


# -- inputs ------------------------------------------------------------------------------------------------
def full_sd15(path: Path) -> Path:
    """A full-size SD1.5 single file with seeded random weights (fp16 on disk: the common download), made once."""
    if path.exists():
        return path
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorafw.models import tiny

    torch.manual_seed(0)
    parts = {"unet": UNet2DConditionModel(**SD15_UNET).eval(), "vae": AutoencoderKL(**tiny.TINY_VAE).eval(),
             "text_encoder": CLIPTextModel(CLIPTextConfig(**{**tiny.TINY_CLIP_L, **CLIP_L})).eval()}
    tmp = path.with_name(path.name + ".part")
    tiny.save_single_file(parts, tmp, torch.float16)
    tmp.replace(path)
    return path


def images(root: Path, n: int, resolution: int) -> Path:
    """n smooth random pictures with tag captions in one `1_bench` folder (one bucket)."""
    import numpy as np
    from PIL import Image

    folder = root / "1_bench"
    if folder.is_dir() and len(list(folder.glob("*.png"))) == n:
        return root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((resolution, resolution), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(f"bench, 1girl, solo, picture {i}, long hair, smile, outdoors")
    return root


def overrides(model: Path, data: Path, out: Path, args: argparse.Namespace) -> list[str]:
    return [
        f"base_model.path={model}", f"dataset.root={data}", "dataset.resolution=256", "dataset.min_bucket_reso=256",
        "dataset.max_bucket_reso=256", "dataset.enable_bucket=false", "dataset.cache_latents=true",
        "network=lora", "network.dim=16", "network.alpha=8",
        "optimizer=adamw", "optimizer.lr=1e-4", "optimizer.text_encoder_lr=1e-4", "optimizer.weight_decay=0.01",
        "scheduler=constant",
        f"train.mixed_precision={'no' if args.precision == 'fp32' else args.precision}", "train.batch_size=2",
        f"train.epochs={args.epochs}", f"train.clip_skip={args.clip_skip}", "train.max_token_length=75",
        "train.min_snr_gamma=null", "train.device=cpu",
        f"output.dir={out}", "output.name=bench", "output.overwrite=true", "log.tensorboard=true",
    ]


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- phase timing ------------------------------------------------------------------------------------------
class Phases:
    """Wall seconds per named phase, per optimizer step (and per epoch end)."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self.current: dict[str, float] = defaultdict(float)
        self.epoch_end: list[dict[str, float]] = []
        self.writer_jobs: list[dict[str, Any]] = []  # the background writer's jobs, timed on its thread
        self.step_ends: list[float] = []
        self.cpu_ends: list[float] = []  # the process's CPU seconds (user + system, every thread) at each step end
        self.loop_start = 0.0
        self.loop_end = 0.0

    @contextlib.contextmanager
    def timed(self, name: str, into: dict[str, float] | None = None):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            (self.current if into is None else into)[name] += time.perf_counter() - t0

    def wrap(self, obj: Any, attr: str, name: str, into: dict[str, float] | None = None) -> None:
        inner = getattr(obj, attr)

        @functools.wraps(inner)  # keeps torch's markers (the LR scheduler's on optimizer.step)
        def timed(*a: Any, **k: Any) -> Any:
            with self.timed(name, into):
                return inner(*a, **k)

        setattr(obj, attr, timed)


class Timed:
    """The trainer's architecture with some of its calls replaced by timed ones (the shared one is untouched)."""

    def __init__(self, arch: Any, **calls: Any) -> None:
        self._arch, self._calls = arch, calls

    def __getattr__(self, name: str) -> Any:
        return self._calls.get(name) or getattr(self._arch, name)


def instrument(tr: Any, ph: Phases) -> None:
    """Wrap the functions one step calls (after setup: the optimizer and metrics exist)."""
    from lorafw.models import text

    ph.wrap(text, "tokenize", "tokenize")
    inner_encode = tr.arch.encode_text

    def encode(models: Any, captions: list[str], train: Any) -> dict[str, torch.Tensor]:
        t0 = time.perf_counter()
        out = inner_encode(models, captions, train)
        ph.current["te_forward (incl. tokenize)"] += time.perf_counter() - t0
        for v in out.values():  # the UNet's backward ends when the text states' gradient arrives
            if v.requires_grad:
                v.register_hook(lambda g: ph.current.__setitem__("_unet_bw_end", time.perf_counter()) or g)
        return out

    tr.arch = Timed(tr.arch, encode_text=encode)
    unet_t0: list[float] = []
    tr.models.denoiser.register_forward_pre_hook(lambda m, a: unet_t0.append(time.perf_counter()))
    tr.models.denoiser.register_forward_hook(lambda m, a, o: ph.current.__setitem__(
        "unet_forward", ph.current["unet_forward"] + time.perf_counter() - unet_t0.pop()))
    amp_backward = tr.dev.amp.backward

    def backward(loss: Any) -> None:
        t0 = time.perf_counter()
        ph.current.pop("_unet_bw_end", None)
        amp_backward(loss)
        t1 = time.perf_counter()
        mid = ph.current.pop("_unet_bw_end", None)
        if mid is None:
            ph.current["unet_backward"] += t1 - t0
        else:
            ph.current["unet_backward"] += mid - t0
            ph.current["te_backward"] += t1 - mid

    tr.dev.amp.backward = backward
    ph.wrap(torch.nn.utils, "clip_grad_norm_", "clip_grad_norm")
    ph.wrap(tr.state.optimizer, "step", "optimizer_step")
    ph.wrap(tr.state.optimizer, "zero_grad", "zero_grad")
    if tr.metrics is not None:
        ph.wrap(tr.metrics, "step", "metrics_step")
    inner_step = tr._optimizer_step

    def step(group: Any) -> None:
        ph.current = defaultdict(float)
        t0 = time.perf_counter()
        inner_step(group)
        t1 = time.perf_counter()
        ph.current["total"] = t1 - t0
        ph.steps.append(dict(ph.current))
        ph.step_ends.append(t1)
        ph.cpu_ends.append(cpu_seconds())

    tr._optimizer_step = step
    ends: dict[str, float] = defaultdict(float)
    ph.epoch_end.append(ends)
    for attr, name in (("save", "save LoRA file"), ("save_state", "save state.pt"), ("write_summary", "write_summary")):
        ph.wrap(tr, attr, name, ends)
    writes(ph)


def writes(ph: Phases) -> None:
    """The writer thread's jobs (LoRA files, state.pt with run.json, the summary): each one's wall and thread CPU
    seconds, and state.pt's size: what an epoch end costs off the training thread."""
    from lorafw.outputs import summary
    from lorafw.trainers import checkpoint

    def timed(module: Any, attr: str, label: str) -> None:
        inner = getattr(module, attr)

        def job(*a: Any, **k: Any) -> Any:
            t0, c0 = time.perf_counter(), time.thread_time()
            out = inner(*a, **k)
            ph.writer_jobs.append({"job": label, "wall": time.perf_counter() - t0, "cpu": time.thread_time() - c0})
            if label == "state.pt + run.json":
                from lorafw.run_folder import STATE

                ph.writer_jobs[-1]["bytes"] = (Path(a[0]) / STATE).stat().st_size
            return out

        setattr(module, attr, job)

    timed(checkpoint, "write_loras", "LoRA file")
    timed(checkpoint, "write_state_and_record", "state.pt + run.json")
    timed(summary, "write_summary", "run_summary.json")


def run_once(args: argparse.Namespace) -> dict[str, Any]:
    """One training run in this process; returns its timings."""
    import lorafw
    from lorafw.outputs.metrics import Metrics
    from lorafw.run import resolve_outputs
    from lorafw.trainers.trainer import prepare

    work = Path(args.work)
    model = full_sd15(work / "sd15-full-random.safetensors")
    data = images(work / "data", 8, 256)
    out = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    spec = resolve_outputs(lorafw.compose("sd15_character", overrides(model, data, out, args) + args.set))
    tr = prepare(spec, spec.output.dir)
    tr.setup()
    tr.metrics = Metrics(tr.run_dir, tr.spec.log, 0)
    ph = Phases()
    instrument(tr, ph)
    prof = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile, schedule

        prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=2, warmup=0, active=1, repeat=1),
                       record_shapes=False)
        prof.start()
        inner = tr._optimizer_step

        def stepped(group: Any) -> None:
            inner(group)
            prof.step()

        tr._optimizer_step = stepped
    ph.loop_start = time.perf_counter()
    try:
        with tr.session.stop:
            tr.train()
    finally:
        ph.loop_end = time.perf_counter()
        cpu_end = cpu_seconds()
        tr.metrics.close()
        if prof is not None:
            prof.stop()
    if prof is not None:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile_rows), flush=True)
    n = len(ph.step_ends)
    steady = [b - a for i, (a, b) in enumerate(zip(ph.step_ends, ph.step_ends[1:]), 1)
              if i % tr.plan.steps_per_epoch != 0]  # intervals that contain no epoch end
    with_saves = (ph.loop_end - ph.step_ends[0]) / (n - 1)
    cpu_steady = [b - a for i, (a, b) in enumerate(zip(ph.cpu_ends, ph.cpu_ends[1:]), 1) if i % tr.plan.steps_per_epoch != 0]
    cpu_with_saves = (cpu_end - ph.cpu_ends[0]) / (n - 1)
    # what an epoch's end costs the loop: the interval holding it (the end's own work and the next step, which the
    # background writer shares the CPU with) less a steady step; and the wait for the last epoch's files
    ends = [b - a for i, (a, b) in enumerate(zip(ph.step_ends, ph.step_ends[1:]), 1) if i % tr.plan.steps_per_epoch == 0]
    epoch_end_excess = [e - statistics.median(steady) for e in ends]
    cpu_ends = [b - a for i, (a, b) in enumerate(zip(ph.cpu_ends, ph.cpu_ends[1:]), 1)
                if i % tr.plan.steps_per_epoch == 0]
    epoch_end_cpu_excess = [e - statistics.median(cpu_steady) for e in cpu_ends]
    final_writes = ph.loop_end - ph.step_ends[-1]
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    return {"steps": ph.steps[1:], "steady": steady, "with_saves": with_saves, "epoch_end": ph.epoch_end[0],
            "cpu_steady": cpu_steady, "cpu_with_saves": cpu_with_saves, "epoch_end_excess": epoch_end_excess,
            "epoch_end_cpu_excess": epoch_end_cpu_excess, "writer_jobs": ph.writer_jobs,
            "final_writes": final_writes,
            "epochs": args.epochs, "threads": torch.get_num_threads(), "cpu": machine()}


def machine() -> dict[str, Any] | None:
    """lorafw.precision.cpu_facts (the CPU's name, cores, bf16/AMX flags, torch's ISA level), or None from a tree
    older than it (--against)."""
    try:
        from lorafw.precision import cpu_facts
    except ImportError:
        return None
    return cpu_facts()


def describe_cpu(facts: dict[str, Any]) -> str:
    from lorafw.precision import describe_cpu as describe

    return describe(facts)


def report(res: dict[str, Any], label: str = "") -> None:
    steps = res["steps"]
    names = sorted({k for s in steps for k in s if not k.startswith("_")}, key=lambda k: -statistics.mean(
        s.get(k, 0.0) for s in steps))
    print(f"\n{label}per-phase wall time, mean of {len(steps)} steps after the first (ms):")
    accounted = 0.0
    for k in names:
        v = 1000 * statistics.mean(s.get(k, 0.0) for s in steps)
        if k not in ("total", "tokenize"):
            accounted += v
        print(f"  {k:32s} {v:9.1f}")
    total = 1000 * statistics.mean(s["total"] for s in steps)
    print(f"  {'other (noise, loss, host read…)':32s} {total - accounted:9.1f}")
    print(f"epoch-end writes, over {res['epochs']} epochs (ms): "
          + ", ".join(f"{k} {1000 * v:.0f}" for k, v in res["epoch_end"].items()))
    print("each step after the first (s): " + " ".join(f"{s['total']:.2f}" for s in steps))
    print("an epoch end between two steps, over a steady step (s): "
          + " ".join(f"{e:+.3f}" for e in res["epoch_end_excess"])
          + f"; after the last step, until its files are written: {res['final_writes']:.3f} s")
    print("an epoch end between two steps, over a steady step, in CPU seconds (all threads): "
          + " ".join(f"{e:+.3f}" for e in res["epoch_end_cpu_excess"]))
    for j in res["writer_jobs"]:
        print(f"  writer thread: {j['job']:<20} wall {j['wall']:.3f} s, CPU {j['cpu']:.3f} s"
              + (f", {j['bytes'] / 1e6:.1f} MB" if "bytes" in j else ""))
    print(f"s/step: steady {statistics.median(res['steady']):.3f} (median of {len(res['steady'])}), "
          f"with saves {res['with_saves']:.3f}; {res['threads']} threads; load average {os.getloadavg()[0]:.2f}")
    if res.get("cpu"):
        print(f"CPU: {describe_cpu(res['cpu'])}")
    print(f"CPU s/step (user + system, all threads): steady {statistics.median(res['cpu_steady']):.3f}, "
          f"with saves {res['cpu_with_saves']:.3f}")


# -- A/B ---------------------------------------------------------------------------------------------------
def levers() -> list[str]:
    from lorafw import speed

    return list(speed.LEVERS)


def ab(args: argparse.Namespace) -> None:
    """Each lever off (all others on) against all on, in fresh subprocesses, alternating."""
    names = args.levers or levers()
    variants = {"all on": "", **{f"{n} off": n for n in names}}
    if len(names) > 1:
        variants["all off"] = ",".join(names)
    if args.against:
        variants = {"all on": "", f"{args.against}": None}
    times: dict[str, list[tuple[float, float]]] = defaultdict(list)
    base = [sys.executable, __file__, "--json", "--precision", args.precision, "--clip-skip", str(args.clip_skip),
            "--epochs", str(args.epochs), "--work", args.work, *sum((["--set", s] for s in args.set), []),
            *(["--threads", str(args.threads)] if args.threads else [])]
    loads = []
    print(f"CPU: {describe_cpu(machine() or {})}", flush=True)
    for r in range(args.rounds):
        for label, off in variants.items():
            env = {**os.environ, "LORAFW_SPEED_OFF": off or ""}
            if off is None:  # another tree, without lorafw.speed
                env = {**os.environ, "STEP_PROFILE_TREE": args.against, "PYTHONPATH": args.against}
                env.pop("LORAFW_SPEED_OFF", None)
            p = subprocess.run(base, env=env, capture_output=True, text=True)
            if p.returncode:
                sys.exit(p.stderr[-3000:])
            res = json.loads(p.stdout.strip().splitlines()[-1])
            times[label].append((statistics.median(res["steady"]), res["with_saves"],
                                 statistics.median(res["cpu_steady"]), res["cpu_with_saves"],
                                 statistics.mean(res["epoch_end_excess"]), res["final_writes"],
                                 statistics.mean(res["epoch_end_cpu_excess"])))
            loads.append(os.getloadavg()[0])
            t = times[label][-1]
            print(f"round {r + 1} {label:28s} wall s/step: steady {t[0]:.3f} with saves {t[1]:.3f}; "
                  f"CPU s/step: steady {t[2]:.3f} with saves {t[3]:.3f}; epoch end {t[4]:+.3f} s ({t[6]:+.3f} CPU s), "
                  f"last files {t[5]:.3f} s  (load {loads[-1]:.1f})", flush=True)
    print(f"\n{args.precision}, clip_skip {args.clip_skip}, {args.threads or torch.get_num_threads()} threads; "
          f"load average {min(loads):.1f}–{max(loads):.1f}; means over {args.rounds} rounds, min in brackets")
    ref = statistics.mean(t[1] for t in times["all on"]), statistics.mean(t[3] for t in times["all on"])
    for label, ts in times.items():
        m = [statistics.mean(t[i] for t in ts) for i in range(7)]
        lo = [min(t[i] for t in ts) for i in range(4)]
        print(f"  {label:28s} wall: steady {m[0]:.3f} ({lo[0]:.3f}), with saves {m[1]:.3f} ({lo[1]:.3f}) = "
              f"{m[1] / ref[0]:.3f}× all on | CPU: steady {m[2]:.3f} ({lo[2]:.3f}), with saves {m[3]:.3f} "
              f"({lo[3]:.3f}) = {m[3] / ref[1]:.3f}× all on | epoch end {m[4]:+.3f} s ({m[6]:+.3f} CPU s), last files "
              f"{m[5]:.3f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--clip-skip", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "lorafw-step-profile"))
    ap.add_argument("--set", action="append", default=[], help="another lorafw override, e.g. train.attention=sdpa")
    ap.add_argument("--profile", action="store_true", help="print torch.profiler's top operators of step 3")
    ap.add_argument("--profile-rows", type=int, default=40)
    ap.add_argument("--ab", action="store_true", help="each speed lever off vs all on, in alternating subprocesses")
    ap.add_argument("--levers", nargs="*", help="--ab: only these levers")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--against", metavar="DIR", help="--ab: this tree (all levers on) against the lorafw tree in DIR")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ab:
        return ab(args)
    import logging

    logging.getLogger("lorafw").setLevel(logging.WARNING)
    res = run_once(args)
    if args.json:
        print(json.dumps(res))
    else:
        report(res, f"{args.precision}, clip_skip {args.clip_skip}, torch {torch.__version__}: ")


if __name__ == "__main__":
    main()
