"""The floor under both trainers' step: a bare SD1.5 UNet's forward + backward, kohya's against diffusers'.

    python benchmarks/unet_floor.py --sd-scripts PATH                 # bf16 autocast, then fp32
    python benchmarks/unet_floor.py --sd-scripts PATH --precision bf16 --rounds 3
    python benchmarks/unet_floor.py --sd-scripts PATH --model anima --rounds 1     # the Anima DiT (bf16)

Both UNets at full size (320/640/1280/1280, cross-attention 768, SDPA attention), random weights, frozen and held
in the compute dtype as both trainers hold a LoRA run's base; batch 2 at 32×32 latents (256 px) and 77 context
tokens whose gradient is taken (the text encoder is trained in vs_kohya.py's run). kohya's is sd-scripts'
library/original_unet.py, run from the checkout given in its own interpreter (vs_kohya.py's venv); diffusers' is the
one lorafw trains. Each side runs in a fresh process, alternating; the figure is the median of the steps after the
first. What a trainer's step costs above this floor is its adapters, text encoder, optimizer, data and
bookkeeping: issue 20's account of where lorafw's and kohya's time goes. Figures only: nothing asserts.

--model anima: the full-size Anima DiT with its LLM adapter (vs_kohya.py --model anima's file, built there), loaded
from that one file by each side's own loader (sd-scripts' anima_utils.load_anima_model; lorafw's archs/anima) in bf16,
bf16 autocast; batch 2 at 32×32 latents (256 px), 512 Qwen3 states and T5 ids as the text cache holds them, σ 0.5 and
0.6; the gradient taken with respect to the noisy latents (so backward runs through every block, as a LoRA's does).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r"""
import json, sys, time, torch
side, dtype_name, steps, sd_scripts = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
if side == "kohya":
    sys.path.insert(0, sd_scripts)
    from library.original_unet import UNet2DConditionModel
    unet = UNet2DConditionModel(sample_size=64, attention_head_dim=8, cross_attention_dim=768,
                                use_linear_projection=False, upcast_attention=False)
    unet.set_use_sdpa(True)
else:
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel(**json.loads(sys.argv[5]))
bf16 = dtype_name == "bf16"
unet = unet.to(torch.bfloat16 if bf16 else torch.float32).requires_grad_(False)
x, t = torch.randn(2, 4, 32, 32), torch.tensor([500, 600])
ctx = torch.randn(2, 77, 768, requires_grad=True)
times = []
for _ in range(steps):
    ctx.grad = None
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = unet(x, t, ctx)
        out = out.sample if hasattr(out, "sample") else out
    out.float().pow(2).mean().backward()
    times.append(time.perf_counter() - t0)
print("FLOOR " + json.dumps({"times": times, "threads": torch.get_num_threads(), "torch": torch.__version__}))
"""


ANIMA_CHILD = r"""
import json, sys, time, torch
side, dtype_name, steps, sd_scripts, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
torch.manual_seed(0)
bf16 = dtype_name == "bf16"
dtype = torch.bfloat16 if bf16 else torch.float32
b, n = 2, 512
x = torch.randn(b, 16, 32, 32, requires_grad=True)
t = torch.tensor([0.5, 0.6])
width = int(sys.argv[6]) if len(sys.argv) > 6 else 1024  # Qwen3-0.6B's hidden size (a tiny model's for a check)
emb, mask = torch.randn(b, n, width), torch.zeros(b, n, dtype=torch.long)
mask[:, :8] = 1
ids, tmask = torch.zeros(b, n, dtype=torch.long), mask.clone()
ids[:, :8] = torch.randint(0, 32000, (b, 8))
if side == "kohya":
    sys.path.insert(0, sd_scripts)
    from library import anima_utils
    model = anima_utils.load_anima_model("cpu", path, "torch", False, "cpu", dtype)
    pad = torch.zeros(b, 1, 32, 32, dtype=dtype)
    def call():
        return model(x.unsqueeze(2), t, emb.to(dtype), padding_mask=pad, target_input_ids=ids, target_attention_mask=tmask,
                     source_attention_mask=mask).squeeze(2)
else:
    from safetensors.torch import load_file
    from lorafw.archs.anima import ARCH, dit
    info = ARCH.inspect(path)
    model = dit.build(info, *dit.split_file(load_file(path), info.prefix), path)
    def call():
        return model(x, t.to(dtype), emb, mask, ids, tmask)
model = model.to(dtype).requires_grad_(False).eval()
times = []
for _ in range(steps):
    x.grad = None
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = call()
    out.float().pow(2).mean().backward()
    times.append(time.perf_counter() - t0)
print("FLOOR " + json.dumps({"times": times, "threads": torch.get_num_threads(), "torch": torch.__version__}))
"""


def run(py: Path, env: dict[str, str], side: str, precision: str, steps: int, sd_scripts: Path,
        anima: Path | None = None, text_width: int = 1024) -> dict:
    from step_profile import SD15_UNET  # the diffusers config lorafw's step profile trains

    last = [str(anima), str(text_width)] if anima else [json.dumps(SD15_UNET)]
    out = subprocess.run([str(py), "-c", ANIMA_CHILD if anima else CHILD, side, precision, str(steps), str(sd_scripts), *last],
                         env=env, cwd=sd_scripts if side == "kohya" else None, capture_output=True, text=True, timeout=1800)
    line = next((x for x in out.stdout.splitlines() if x.startswith("FLOOR ")), None)
    if out.returncode or line is None:
        raise SystemExit(f"{side} {precision} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(line[6:])


def main(argv: list[str] | None = None) -> int:
    import vs_kohya

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sd-scripts", type=Path, required=True, help="an sd-scripts checkout (library/original_unet.py)")
    ap.add_argument("--kohya-venv", default=str(Path("~/.cache/lorafw/kohya-venv")))
    ap.add_argument("--kohya-python", default=None)
    ap.add_argument("--kohya-torch", default=vs_kohya.kohya_env.TORCH_PIN)
    ap.add_argument("--model", choices=["sd15", "anima"], default="sd15")
    ap.add_argument("--precision", choices=["bf16", "fp32", "both"], default=None, help="default: both (sd15), bf16 (anima)")
    ap.add_argument("--rounds", type=int, default=2, help="kohya, diffusers pairs per precision, alternating")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--work", type=Path, default=Path("~/.cache/lorafw/vs_kohya"))
    args = ap.parse_args(argv)
    if not (args.sd_scripts / "library" / "original_unet.py").is_file():
        raise SystemExit(f"{args.sd_scripts} is not an sd-scripts checkout (no library/original_unet.py)")
    notes: list[str] = []
    kpy, kenv = vs_kohya.kohya_environment(args, args.work.expanduser(), notes)
    lenv = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    anima = None
    if args.model == "anima":
        anima = vs_kohya.anima_model(args.work.expanduser(), vs_kohya.ks.anima_run().seed, Path("/nonexistent"))[0]
        if not (anima.parent / vs_kohya.ANIMA_DONE).is_file():
            raise SystemExit(f"no full-size Anima in {anima.parent}: run benchmarks/vs_kohya.py --model anima first")
        lenv = dict(os.environ)  # lorafw's archs/anima is imported: its PYTHONPATH (a worktree's) stays
    asked = args.precision or ("bf16" if anima else "both")
    rows = []
    for precision in (["bf16", "fp32"] if asked == "both" else [asked]):
        got: dict[str, list[float]] = {"kohya": [], "diffusers": []}
        for _ in range(args.rounds):
            for side, py, env in (("kohya", kpy, kenv), ("diffusers", Path(sys.executable), lenv)):
                r = run(py, env, side, precision, args.steps, args.sd_scripts, anima)
                got[side].append(statistics.median(r["times"][1:]))
                print(f"{precision} {side}: " + " ".join(f"{v:.3f}" for v in r["times"]) + f" s ({r['threads']} threads)",
                      flush=True)
        rows.append((precision, got))
    what = ("kohya anima_models s (runs) | lorafw's diffusers DiT s (runs)" if anima else
            "kohya original_unet s (runs) | diffusers UNet s (runs)")
    print(f"\n| precision | {what} | diffusers ÷ kohya |\n|---|---|---|---|")
    for precision, got in rows:
        k, d = statistics.mean(got["kohya"]), statistics.mean(got["diffusers"])
        print(f"| {precision} | {', '.join(f'{v:.3f}' for v in got['kohya'])} | "
              f"{', '.join(f'{v:.3f}' for v in got['diffusers'])} | {d / k:.3f} |")
    print("\nnotes:\n" + "\n".join(f"- {n}" for n in notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
