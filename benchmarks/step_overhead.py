"""lorafw's training step against the floor: a bare diffusers + peft step on the same model, batch and size.

    python benchmarks/step_overhead.py --size small            # CPU: ends with `ratio (lorafw/bare): X.XX`
    python benchmarks/step_overhead.py --size sd15 --resolution 768      # GPU, real SD1.5 dimensions
    python benchmarks/step_overhead.py --size sdxl --resolution 1024     # GPU, real SDXL dimensions
    python benchmarks/step_overhead.py --size small --compile            # lorafw with train.compile=true

In one process: a model of the chosen size is built with seeded random weights, saved as a single
original-layout .safetensors (the file users have) and a dataset of generated images is written.
(a) the floor: the UNet with peft LoRA on the layers kohya adapts (every Linear and 1×1 conv in the
transformer blocks), torch AdamW, precomputed latents and text states, DDPM noise, min-SNR-weighted MSE,
backward, gradient clipping, step — a few dozen lines, below. (b) lorafw: the `sd15_character` (or
`pdxl` for SDXL) recipe with latents and text-encoder outputs cached, text encoder frozen, optimizer
AdamW (the floor's), through lorafw's own `train()` loop (progress bar, metrics, NaN checks included);
the seconds between consecutive step ends after warm-up. The floor is timed before and after lorafw
(drift shows as a difference) and the mean of both is the reference.

Sizes: tiny (the tests' model), small (SD1.5 structure at a fifth of the width: a CPU step takes
about a second, so the ratio measures compute, not Python overhead), sd15 and sdxl (the real
dimensions, random weights; GPU only). Peak memory: RSS on CPU, torch.cuda.max_memory_allocated on
GPU. On GPU also the model FLOP utilisation: FLOPs of one floor step from torch's FLOP counter ÷ step
time ÷ the device's dense bf16 peak. Figures only: nothing here asserts.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# UNet / text-encoder widths per size. "small" keeps SD1.5's structure (3 cross-attention levels + 1,
# 2 ResNets per level, 8 heads) at a fifth of its width.
SMALL_UNET = {
    "sample_size": 32, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [64, 128, 256, 256],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "cross_attention_dim": 192, "attention_head_dim": 8, "norm_num_groups": 32,
}
SD15_UNET = {**SMALL_UNET, "sample_size": 64, "block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768}
SDXL_UNET = {
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": [320, 640, 1280],
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
    "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32,
}
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12}
BIGG = {"hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
        "hidden_act": "gelu", "projection_dim": 1280}
DEFAULT_RESOLUTION = {"tiny": 128, "small": 256, "sd15": 768, "sdxl": 1024}
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "4090": 165.0, "A10": 125.0}


# -- the model and the data ------------------------------------------------------------------------------
def build_parts(size: str, seed: int = 0) -> dict[str, torch.nn.Module]:
    """diffusers/transformers modules of `size`, seeded (tiny: lorafw's test models)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from lorafw.models import tiny

    if size == "tiny":
        return tiny.build_sd15(seed)
    torch.manual_seed(seed)
    unet_cfg = {"small": SMALL_UNET, "sd15": SD15_UNET, "sdxl": SDXL_UNET}[size]
    if size == "small":  # text states are cached, so only their width matters to the step
        te_cfg = {**tiny.TINY_CLIP_L, "hidden_size": 192, "intermediate_size": 384, "num_attention_heads": 3,
                  "num_hidden_layers": 2, "projection_dim": 192}
    else:
        te_cfg = {**tiny.TINY_CLIP_L, **CLIP_L, "projection_dim": 768}
    with torch.device("cpu"):
        parts = {"unet": UNet2DConditionModel(**unet_cfg).eval(), "vae": AutoencoderKL(**tiny.TINY_VAE).eval(),
                 "text_encoder": CLIPTextModel(CLIPTextConfig(**te_cfg)).eval()}
        if size == "sdxl":
            parts["vae"] = AutoencoderKL(**{**tiny.TINY_VAE, "scaling_factor": 0.13025}).eval()
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**{**tiny.TINY_BIGG, **BIGG})).eval()
    return parts


def make_images(root: Path, n: int, resolution: int) -> Path:
    """n square captioned images in one `1_bench` folder (one bucket: every step does the same work)."""
    import numpy as np
    from PIL import Image

    folder = root / "1_bench"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):  # smooth random pictures: distinct to the duplicate check, cheap to write
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((resolution, resolution), Image.Resampling.BICUBIC).save(folder / f"{i:04d}.png")
        (folder / f"{i:04d}.txt").write_text(f"bench, picture {i}")
    return root


# -- memory ------------------------------------------------------------------------------------------------
class PeakMemory:
    """Peak memory during a phase: torch.cuda.max_memory_allocated on GPU, sampled RSS on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak, self._stop = device, 0, threading.Event()

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.peak = self.rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.rss())

    def describe(self) -> str:
        what = "max_memory_allocated" if self.device.type == "cuda" else "peak RSS (whole process)"
        return f"{self.peak / 2**30:.2f} GiB {what}"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# -- (a) the floor: diffusers + peft, nothing else ---------------------------------------------------------
def bare_trainer(unet: torch.nn.Module, batch: int, latent_hw: tuple[int, int], text_shape: tuple[int, int],
                 device: torch.device, dtype: torch.dtype, rank: int, alpha: float, lr: float, min_snr_gamma: float,
                 sdxl: bool) -> Callable[[int], float]:
    """One training step per call, written directly with diffusers + peft (the floor)."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import cast_training_params, compute_snr
    from peft import LoraConfig, inject_adapter_in_model

    targets = sorted({name for block_name, block in unet.named_modules() if type(block).__name__ == "Transformer2DModel"
                      for sub, m in block.named_modules()
                      if isinstance(m, torch.nn.Linear) or (isinstance(m, torch.nn.Conv2d) and m.kernel_size == (1, 1))
                      for name in [f"{block_name}.{sub}"] if sub})
    unet.requires_grad_(False)
    unet.to(device, dtype=dtype)
    unet = inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights="gaussian"), unet)
    cast_training_params(unet, dtype=torch.float32)
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    gen = torch.Generator(device=device).manual_seed(0)
    latents = torch.randn((batch, 4, *latent_hw), generator=gen, device=device)
    text = torch.randn((batch, *text_shape), generator=gen, device=device, dtype=dtype)
    extra = {}
    if sdxl:
        h, w = latent_hw[0] * 8, latent_hw[1] * 8
        extra = {"added_cond_kwargs": {"text_embeds": torch.randn((batch, 1280), device=device, dtype=dtype),
                                       "time_ids": torch.tensor([[h, w, 0, 0, h, w]] * batch, device=device, dtype=dtype)}}
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def step(i: int) -> float:
        noise = torch.randn(latents.shape, generator=gen, device=device)
        t = torch.randint(0, 1000, (batch,), generator=gen, device=device)
        noisy = sched.add_noise(latents, noise, t)
        with autocast:
            pred = unet(noisy.to(dtype), t, text, **extra).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise, reduction="none").mean(dim=(1, 2, 3))
        snr = compute_snr(sched, t)
        loss = (loss * torch.clamp(snr, max=min_snr_gamma) / snr).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return 0.0

    step.params = params  # type: ignore[attr-defined]
    step.unet = unet  # type: ignore[attr-defined]
    return step


def time_bare(step: Callable[[int], float], warmup: int, steps: int, device: torch.device) -> list[float]:
    for i in range(warmup):
        step(i)
    sync(device)
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(i)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def step_flops(step: Callable[[int], float]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        step(0)
    return float(fc.get_total_flops())


# -- (b) lorafw's own loop -----------------------------------------------------------------------------------
def lorafw_trainer(model: Path, data: Path, out: Path, size: str, resolution: int, batch: int, epochs_steps: int,
                   device: str, extra: list[str]):
    from lorafw.config.compose import compose
    from lorafw.run import resolve_outputs
    from lorafw.trainers.trainer import prepare
    
    recipe = "pdxl" if size == "sdxl" else "sd15_character"
    overrides = [
        f"base_model.path={model}", f"dataset.root={data}", f"dataset.resolution={resolution}",
        f"dataset.min_bucket_reso={min(resolution, 256)}", f"dataset.max_bucket_reso={max(resolution, 1024)}",
        "dataset.cache_latents=true", "dataset.cache_text_encoder_outputs=true", "dataset.shuffle_caption=false",
        "dataset.flip_aug=false", "dataset.caption_dropout_rate=0", "dataset.caption_tag_dropout_rate=0",
        "optimizer=adamw", "optimizer.lr=5e-4", "optimizer.text_encoder_lr=0", "optimizer.weight_decay=0.1",
        "optimizer.betas=[0.9,0.99]", "scheduler=constant_with_warmup", "train.min_snr_gamma=5.0",
        f"train.batch_size={batch}", "train.epochs=1", f"train.device={device}", f"output.dir={out}",
        "output.name=bench", "log.tensorboard=true", *extra,
    ]
    if size != "sdxl":
        overrides += ["network.dim=16", "network.alpha=8"]
    spec = resolve_outputs(compose(recipe, overrides))
    return prepare(spec, spec.output.dir)


def time_lorafw(tr: Any, warmup: int) -> list[float]:
    """Seconds between consecutive step ends inside lorafw's train() (its whole loop body), after warm-up."""
    from lorafw.outputs.metrics import Metrics

    ends: list[float] = []
    inner = tr._optimizer_step

    def timed(group: list[list[int]]) -> None:
        inner(group)
        sync(tr.dev.device)
        ends.append(time.perf_counter())

    tr._optimizer_step = timed
    tr.metrics = Metrics(tr.run_dir, tr.spec.log, 0)
    try:
        tr.train()
    finally:
        tr.metrics.close()
    return [b - a for a, b in zip(ends[warmup:], ends[warmup + 1:])]


def fmt(times: list[float]) -> str:
    return (f"{statistics.median(times):.4f} s/step (median of {len(times)}; min {min(times):.4f}, max {max(times):.4f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=["tiny", "small", "sd15", "sdxl"], default="small")
    ap.add_argument("--resolution", type=int, default=None, help="image side in px (default: tiny 128, small 256, sd15 768, sdxl 1024)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--compile", action="store_true", help="lorafw with train.compile=true (regional torch.compile)")
    ap.add_argument("--gradient-checkpointing", action="store_true", help="both with gradient checkpointing")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: looked up by name)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    if args.size in ("sd15", "sdxl") and device.type != "cuda":
        sys.exit(f"--size {args.size} (real dimensions) is for a GPU; on CPU use --size small")
    if args.threads:
        torch.set_num_threads(args.threads)
    res = args.resolution or DEFAULT_RESOLUTION[args.size]
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    work = Path(tempfile.mkdtemp(prefix="lorafw-step-"))
    from lorafw.models.tiny import save_single_file

    parts = build_parts(args.size)
    model = save_single_file(parts, work / f"{args.size}.safetensors", torch.float16 if device.type == "cuda" else torch.float32)
    n_images = args.batch * (args.warmup + args.steps + 2)
    data = make_images(work / "data", n_images, res)
    sdxl = args.size == "sdxl"
    text_shape = (227, parts["unet"].config.cross_attention_dim)  # max_token_length 225 → 3 chunks of 75 + BOS/EOS
    latent_hw = (res // 8, res // 8)

    # (a) the floor, before
    bare = bare_trainer(parts.pop("unet"), args.batch, latent_hw, text_shape, device, dtype, 16 if not sdxl else 8,
                        8 if not sdxl else 4, 5e-4, 5.0, sdxl)
    del parts
    gc.collect()
    if args.gradient_checkpointing:
        bare.unet.enable_gradient_checkpointing()  # type: ignore[attr-defined]
    with PeakMemory(device) as bare_mem:
        bare_1 = time_bare(bare, args.warmup, args.steps, device)
    print(f"bare (diffusers + peft), before: {fmt(bare_1)}", flush=True)

    # (b) lorafw
    extra = [f"train.mixed_precision={'no' if device.type == 'cpu' else 'bf16'}"]
    if args.gradient_checkpointing:
        extra.append("train.gradient_checkpointing=true")
    if args.compile:
        extra.append("train.compile=true")
    tr = lorafw_trainer(model, data, work / "run", args.size, res, args.batch, 0, device.type, extra)
    tr.setup()
    with PeakMemory(device) as lf_mem:
        lf = time_lorafw(tr, args.warmup)
    print(f"lorafw (train loop),           {fmt(lf)}", flush=True)

    # (a) the floor, after (drift check)
    bare_2 = time_bare(bare, 1, args.steps, device)
    print(f"bare (diffusers + peft), after:  {fmt(bare_2)}", flush=True)

    floor = statistics.median(bare_1 + bare_2)
    ours = statistics.median(lf)
    print(f"\nsize {args.size}, {res}×{res} px, batch {args.batch}, device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else f", {torch.get_num_threads()} threads")
          + f", {dtype}, torch {torch.__version__}"
          + (", gradient checkpointing" if args.gradient_checkpointing else "") + (", lorafw compiled" if args.compile else ""))
    print(f"trainable parameters: bare {sum(p.numel() for p in bare.params) / 1e6:.2f}M, "  # type: ignore[attr-defined]
          f"lorafw {tr.state.network.n_parameters() / 1e6:.2f}M")
    print(f"peak memory: bare {bare_mem.describe()}; lorafw {lf_mem.describe()}")
    print(f"seconds per step: bare {floor:.4f}, lorafw {ours:.4f}")
    if device.type == "cuda":
        flops = step_flops(bare)
        name = torch.cuda.get_device_name(device)
        peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
        if peak:
            print(f"MFU: {flops / 1e12:.1f} TFLOP per step; bare {100 * flops / floor / (peak * 1e12):.1f}%, "
                  f"lorafw {100 * flops / ours / (peak * 1e12):.1f}% of {peak:.0f} TFLOPS ({name}, dense bf16)")
        else:
            print(f"{flops / 1e12:.1f} TFLOP per step; pass --peak-tflops for MFU on {name}")
    print(f"ratio (lorafw/bare): {ours / floor:.2f}")


if __name__ == "__main__":
    main()
