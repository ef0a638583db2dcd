"""Write lorafw/planning/vram_calibration.json: what `lorafw plan --vram` needs about the real SD1.5 and SDXL.

    python tools/vram_calibrate.py [--arch sd15 sdxl] [--quick] [--out PATH]

1. Parameter counts and the adapted layers' shapes. The real-size UNet, VAE and text encoder(s) are
   built on the `meta` device from their published configs, written as an original-layout state
   dict of shapes, and read back through lorafw.models.detect (the path a user's checkpoint takes), so
   the counted models are the ones lorafw would build. `lorafw.planning.vram.layer_table` lists every
   layer the adapter code can target; `plan` then counts adapter tensors for any dim/conv_dim exactly.

2. Activation coefficients, measured: the real UNet with random bf16 weights and lorafw's own adapters
   (lorafw.network.adapter.Network: peft, fp32 adapters for SD1.5 as sd15_character trains them, bf16
   for SDXL as pdxl's full_bf16 does) runs a training step on the CPU at a few small latent sizes, batch 1,
   SDPA attention, under bf16 autocast with GroupNorm/LayerNorm in fp32 as CUDA's autocast runs them.
   Two counts per step:
     - peak bytes live in torch's CPU allocator during forward + loss + backward, over what was
       allocated before the step (torch.profiler, profile_memory=True; the adapters' gradients exist
       before the step, as from a run's first step on); the CPU analogue of
       torch.cuda.max_memory_allocated() and what the planner uses;
     - bytes autograd saves for backward (torch.autograd.graph.saved_tensors_hooks, deduplicated by
       storage, parameters excluded), a cross-check without checkpointing.
   Bytes are fitted as F per step + batch × (a + b × latent pixels), through the larger sizes
   measured (with checkpointing the smallest sizes bend below the line); the residuals, and a
   check step at a larger size, are printed and stored. `--extend 1x96 1x128 2x128` adds larger
   checkpointing steps (memory-light) so the fit reaches the sizes people train at.
   The text encoders' saved activations (per 77-token window) and the VAE encoder's inference peak
   (per image pixel, fp32 and bf16) are measured the same way.

No GPU is used: nothing here is torch.cuda.max_memory_allocated. CUDA kernels (cuDNN, flash attention)
allocate workspaces of their own, so the figures still need checking against a GPU's measured peak.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lorafw.config.spec import NetworkSpec  # noqa: E402
from lorafw.planning.vram import UNET_CONTAINERS, layer_table  # noqa: E402
from lorafw.network.targets import TE_CONTAINERS, UNET_ATTN_CONTAINERS, UNET_CONV_CONTAINERS  # noqa: E402

OUT = ROOT / "lorafw" / "planning" / "vram_calibration.json"

# Published configs (diffusers / transformers names) of the real models.
CLIP_L = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu", "bos_token_id": 49406,
          "eos_token_id": 49407, "pad_token_id": 1, "projection_dim": 768, "layer_norm_eps": 1e-5}
BIGG = {**CLIP_L, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
        "hidden_act": "gelu", "projection_dim": 1280}
VAE = {"in_channels": 3, "out_channels": 3, "block_out_channels": [128, 256, 512, 512],
       "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4, "layers_per_block": 2,
       "latent_channels": 4, "norm_num_groups": 32, "sample_size": 512}
UNETS = {
    "sd15": {"sample_size": 64, "in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280, 1280],
             "layers_per_block": 2, "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32,
             "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
             "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3},
    "sdxl": {"sample_size": 128, "in_channels": 4, "out_channels": 4, "block_out_channels": [320, 640, 1280],
             "layers_per_block": 2, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
             "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
             "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20], "cross_attention_dim": 2048,
             "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": 2816, "norm_num_groups": 32},
}
TE_PREFIXES = {"sd15": ["lora_te"], "sdxl": ["lora_te1", "lora_te2"]}


def family(arch: str) -> dict[str, Any]:
    """What the planner needs to know about a family beyond its numbers (lorafw/planning/vram.py `Family`): its name,
    its denoiser's, the activation unit (image pixels per side of one: a latent pixel here), the text tokens
    (None: kohya's 77-token windows from train.max_token_length) and the containers of each network part's
    layers, linear then convolution (lorafw.network.targets: the trainer's own rule)."""
    if arch == "anima":
        import vram_anima

        return vram_anima.family()
    containers = {"unet": [list(UNET_ATTN_CONTAINERS), list(UNET_CONV_CONTAINERS)],
                  **{p.removeprefix("lora_"): [list(TE_CONTAINERS), []] for p in TE_PREFIXES[arch]}}
    return {"label": {"sd15": "SD1.5", "sdxl": "SDXL"}[arch], "denoiser": "UNet", "denoiser_long": "UNet", "unit_px": 8,
            "unit": "latent pixel", "text_tokens": None, "containers": containers}
# What the recipes train: sd15_character (LoRA 16/8, fp32 adapters), pdxl (LoRA 8/4, full_bf16), pdxl_dora (LoCon 8/4 conv 4/2 + DoRA)
NETWORKS = {
    "sd15": {"lora": (NetworkSpec("lora", 16, 8, False, 0.0), torch.float32),
             "locon": (NetworkSpec("locon", 16, 8, False, 0.0, 16, 8), torch.float32),
             "dora": (NetworkSpec("locon", 16, 8, True, 0.0, 16, 8), torch.float32)},
    "sdxl": {"lora": (NetworkSpec("lora", 8, 4, False, 0.0), torch.bfloat16),
             "locon": (NetworkSpec("locon", 8, 4, False, 0.0, 4, 2), torch.bfloat16),
             "dora": (NetworkSpec("locon", 8, 4, True, 0.0, 4, 2), torch.bfloat16)},
}
METHOD = (
    "activations: peak bytes of torch's CPU allocator during one training step (forward, loss, backward) of the real-size "
    "UNet with random bf16 weights and lorafw's peft adapters, over what was allocated before the step (the adapters' "
    "gradients included: they exist from the first step on and the planner counts them itself); torch.profiler "
    "profile_memory; bf16 autocast with GroupNorm/LayerNorm in fp32 as CUDA's autocast runs them; SDPA attention; batch 1 "
    "and 2; fitted as F per step + batch × (a + b × latent pixels) through the sizes of at least half the largest measured "
    "one; with checkpointing the bytes grow faster than linearly, so where smaller sizes were measured too (--extend added "
    "768-1024 px for SDXL), a second line goes through them and the planner takes the larger of the two. Cross-check: "
    "bytes autograd saves (saved_tensors_hooks; "
    "it also counts tensors saved in graphs freed during the forward, DoRA's weight norm). Text encoders: bytes their "
    "forward keeps for backward, per 77-token window. VAE: peak of the encoder's no-grad forward per image pixel. "
    "Measured on a CPU, not on a GPU."
)
CONTEXT_TOKENS = 2 + 75 * 3  # train.max_token_length=225 (every shipped recipe): 3 windows merged


def log(msg: str) -> None:
    print(msg, flush=True)


# -- building the real-size models ------------------------------------------------------------------
def meta_parts(arch: str) -> dict[str, torch.nn.Module]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        parts = {"unet": UNet2DConditionModel(**UNETS[arch]), "vae": AutoencoderKL(**VAE),
                 "text_encoder": CLIPTextModel(CLIPTextConfig(**CLIP_L))}
        if arch == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**BIGG))
    return parts


def from_info(info: Any) -> dict[str, torch.nn.Module]:
    """Modules (meta) from lorafw's detected configs, as lorafw.models.load builds them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        parts = {"unet": UNet2DConditionModel(**info.unet), "vae": AutoencoderKL(**info.vae),
                 "text_encoder": CLIPTextModel(CLIPTextConfig(**info.text_encoders[0]))}
        if info.arch == "sdxl":
            parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**info.text_encoders[1]))
    return parts


def lorafw_parts(arch: str) -> tuple[dict[str, torch.nn.Module], Any]:
    """The real-size models as lorafw builds them from a checkpoint: shapes → detect → configs → modules (meta)."""
    from lorafw.models.detect import detect
    from lorafw.models.tiny import original_state_dict

    published = meta_parts(arch)
    shapes = {k: tuple(v.shape) for k, v in original_state_dict(published).items()}
    info = detect(shapes)
    assert info.arch == arch, info.arch
    parts = from_info(info)
    for name, m in parts.items():
        a, b = count(m), count(published[name])
        assert a == b, f"{arch} {name}: lorafw's config gives {a} parameters, the published one {b}"
    return parts, info


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def materialise(m: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """meta → CPU in `dtype` without an fp32 copy: small random weights (values do not change the bytes)."""
    m = m.to(dtype=dtype).to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1 and name.endswith("weight"):
                p.fill_(1.0)  # norms
            elif p.ndim == 1:
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=g)
        for name, b in m.named_buffers():
            if name.endswith("position_ids"):
                b.copy_(torch.arange(b.shape[-1]).expand_as(b))
            else:
                b.zero_()
    return m


# -- measuring -----------------------------------------------------------------------------------------
@contextlib.contextmanager
def cuda_autocast_norms():
    """CPU autocast runs GroupNorm/LayerNorm in bf16; CUDA's autocast runs them in fp32 (its fp32 op list), so
    their outputs, which later ops save, are fp32 on a GPU. Do the same here."""
    import torch.nn.functional as F

    gn, ln = F.group_norm, F.layer_norm

    def up(t):
        return t.float() if t is not None and t.is_floating_point() else t

    def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
        if torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return gn(up(x), num_groups, up(weight), up(bias), eps)
        return gn(x, num_groups, weight, bias, eps)

    def layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
        if torch.is_autocast_enabled("cpu"):
            with torch.autocast("cpu", enabled=False):
                return ln(up(x), shape, up(weight), up(bias), eps)
        return ln(x, shape, weight, bias, eps)

    F.group_norm, F.layer_norm = group_norm, layer_norm
    try:
        yield
    finally:
        F.group_norm, F.layer_norm = gn, ln


@contextlib.contextmanager
def autocast():
    """The trainer's `accelerator.autocast()` under mixed_precision=bf16, with CUDA's fp32 norms."""
    with torch.autocast("cpu", dtype=torch.bfloat16), cuda_autocast_norms():
        yield


def allocator_trace(fn: Callable[[], Any]) -> tuple[int, int, Any]:
    """(peak, net) bytes of torch's CPU allocator over `fn`, from the profiler's memory events, and fn's result."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cum = peak = 0
    for e in events:
        cum += e.nbytes()
        peak = max(peak, cum)
    return peak, cum, result


class SavedBytes:
    """Bytes autograd saves for backward, each storage once, parameters and buffers excluded."""

    def __init__(self, modules: list[torch.nn.Module]) -> None:
        self.skip = {t.untyped_storage().data_ptr() for m in modules for t in [*m.parameters(), *m.buffers()]}
        self.seen: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in self.skip and s.data_ptr() not in self.seen:
            self.seen[s.data_ptr()] = s.nbytes()
        return t

    @property
    def total(self) -> int:
        return sum(self.seen.values())

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)


def clear_grads(modules: list[torch.nn.Module]) -> None:
    for m in modules:
        for p in m.parameters():
            p.grad = None


def unet_inputs(arch: str, side: int, batch: int = 1) -> tuple[tuple, dict]:
    g = torch.Generator().manual_seed(side)
    x = torch.randn(batch, 4, side, side, generator=g).to(torch.bfloat16)
    t = torch.full((batch,), 500, dtype=torch.long)
    ctx = torch.randn(batch, CONTEXT_TOKENS, UNETS[arch]["cross_attention_dim"], generator=g).to(torch.bfloat16)
    kw: dict[str, Any] = {"encoder_hidden_states": ctx}
    if arch == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, 1280, generator=g).to(torch.bfloat16),
                                   "time_ids": torch.tensor([[side * 8, side * 8, 0, 0, side * 8, side * 8]] * batch).to(torch.bfloat16)}
    return (x, t), kw


def unet_step(unet: torch.nn.Module, arch: str, side: int, batch: int = 1) -> dict[str, int]:
    """One training step of a UNet at latent side × side: train_step."""
    (x, t), kw = unet_inputs(arch, side, batch)
    return train_step([unet], lambda: unet(x, t, **kw).sample, x.shape)


def train_step(modules: list[torch.nn.Module], predict: Callable[[], torch.Tensor], shape: Any) -> dict[str, int]:
    """One training step's activation bytes: the allocator's peak over the step (`predict` under autocast, the
    loss, backward) and the saved tensors. The adapters' gradients exist before the step (zeros), as after the
    first step of a run, so they are not counted here (the planner counts them with the adapters)."""
    target = torch.randn(shape, generator=torch.Generator().manual_seed(1))
    saved = SavedBytes(modules)

    def step():
        with cuda_autocast_norms():  # also while checkpointed blocks are recomputed in backward
            with torch.autocast("cpu", dtype=torch.bfloat16), saved.hooks():
                pred = predict()
            loss = torch.nn.functional.mse_loss(pred.float(), target.float())
            loss.backward()

    zero_grads(modules)
    peak, net, _ = allocator_trace(step)
    clear_grads(modules)
    return {"peak": peak, "saved": saved.total, "leftover": net}


def zero_grads(modules: list[torch.nn.Module]) -> None:
    for m in modules:
        for p in m.parameters():
            if p.requires_grad:
                p.grad = torch.zeros_like(p)


def fit_batch(points: list[tuple[int, float, float]], min_x: float | None = None) -> dict[str, Any]:
    """Least squares y = F + B·(a + b·x) over (B, x, y): F per step, a + b·x per image; through the points with
    x ≥ min_x only (the UNet's steps: the smallest size bends below the line with checkpointing, and the planner
    extrapolates upwards)."""
    import numpy as np

    used = [p for p in points if min_x is None or p[1] >= min_x]
    A = np.array([[1.0, B, B * x] for B, x, _ in used])
    y = np.array([v for _, _, v in used])
    (F, a, b), *_ = np.linalg.lstsq(A, y, rcond=None)

    def worst(pts):
        return round(float(max((abs(v - (F + B * (a + b * x))) / v for B, x, v in pts), default=0.0)), 5)

    out = {"F": round(float(F)), "a": round(float(a)), "b": round(float(b), 3), "points": [list(p) for p in points],
           "max_abs_relative_residual": worst(used)}
    if len(used) < len(points):
        out["fitted_from_x"] = min_x
        out["max_abs_relative_residual_below"] = worst([p for p in points if p not in used])
    return out


def unet_fit(pts: list, saved_pts: list) -> dict[str, Any]:
    """The UNet's fit: through the sizes of at least half the largest one's latent pixels. With checkpointing the
    bytes grow faster than linearly (the peak moves from block to block as the size grows: a maximum of lines), so
    when smaller sizes were measured too (two or more between an eighth and a half of the largest), a second line is
    fitted through them and the planner takes the larger of the two ("pieces")."""
    top = max(p[1] for p in pts)
    out = fit_batch(pts, top / 2)
    lower = [p for p in pts if top / 8 <= p[1] < top / 2]
    if len({p[1] for p in lower}) >= 2:
        low = fit_batch(lower)
        out["pieces"] = [{k: low[k] for k in ("F", "a", "b")} | {"sizes": sorted({round(p[1] ** 0.5) for p in lower})},
                         {k: out[k] for k in ("F", "a", "b")} | {"sizes": sorted({round(p[1] ** 0.5) for p in pts if p[1] >= top / 2})}]
        worst = max(abs(v - max(f["F"] + B * (f["a"] + f["b"] * x) for f in out["pieces"])) / v for B, x, v in pts if x >= top / 8)
        out["max_abs_relative_residual_pieces"] = round(float(worst), 5)
    return out | {"saved_tensors": fit_batch(saved_pts)}


def extend(path: Path, arch: str, nets: list[str], points: list[tuple[int, int]]) -> None:
    """Add checkpointing steps at larger sizes (batch, latent side) to a calibration file, then refit. A stored
    check at the same size becomes a fit point."""
    from diffusers.training_utils import cast_training_params

    from lorafw.network.adapter import Network

    data = json.loads(path.read_text())
    _, info = lorafw_parts(arch)
    for net in nets:
        entry = data["archs"][arch]["activations"][net]["checkpointing"]
        net_spec, adapter_dtype = NETWORKS[arch][net]
        unet = materialise(from_info(info)["unet"], torch.bfloat16)
        unet.requires_grad_(False)
        Network(net_spec, unet, [], [], False, lambda p: p)
        cast_training_params([unet], dtype=adapter_dtype)
        unet.train()
        unet.enable_gradient_checkpointing()
        check = entry.pop("check", None)
        if check:
            entry["points"].append([check["batch"], check["latent"] ** 2, check["measured"]])
        for batch, side in points:
            if any(p[0] == batch and p[1] == side * side for p in entry["points"]):
                continue
            t0 = time.time()
            r = unet_step(unet, arch, side, batch)
            entry["points"].append([batch, side * side, r["peak"]])
            entry["saved_tensors"]["points"].append([batch, side * side, r["saved"]])
            entry.setdefault("runs", []).append({"batch": batch, "latent": side, **r, "seconds": round(time.time() - t0, 1)})
            log(f"  {arch} {net} checkpointing=True batch {batch} latent {side}²: peak {r['peak'] / 2**20:.1f} MiB, "
                f"saved {r['saved'] / 2**20:.1f} MiB, {time.time() - t0:.0f}s")
            path.write_text(json.dumps(data, indent=1) + "\n")
            trim()
        path.write_text(json.dumps(data, indent=1) + "\n")
        del unet
        trim()
    refit(path)


def refit(path: Path) -> None:
    """Recompute the UNet fits (and checks) of an existing calibration file from its stored points."""
    data = json.loads(path.read_text())
    for arch, cal in data["archs"].items():
        data["archs"][arch] = {"family": family(arch), **{k: v for k, v in cal.items() if k != "family"}}
        if family(arch)["unit"] != "latent pixel":
            continue  # not a UNet: its fits are vram_anima.fit's, made by its run
        for net, res in cal["activations"].items():
            for key in ("no_checkpointing", "checkpointing"):
                f = res[key]
                pts = [tuple(p) for p in f["points"]]
                new = unet_fit(pts, [tuple(p) for p in f["saved_tensors"]["points"]])
                new["runs"] = f.get("runs", [])
                if "check" in f:
                    c = dict(f["check"])
                    c["predicted"] = round(new["F"] + new["a"] + new["b"] * c["latent"] ** 2)
                    c["relative_error"] = round((c["predicted"] - c["measured"]) / c["measured"], 5)
                    new["check"] = c
                res[key] = new
                log(f"{arch} {net} {key}: F={new['F'] / 2**20:.1f} MiB a={new['a'] / 2**20:.1f} MiB b={new['b']:.0f} B/px"
                    + (f", check {new['check']['relative_error']:+.2%}" if "check" in new else "")
                    + f", below the fit {new.get('max_abs_relative_residual_below', 0):.1%}")
    data["method"] = METHOD
    path.write_text(json.dumps(data, indent=1) + "\n")


def te_forward(tes: list[torch.nn.Module], arch: str, windows: int, batch: int = 1) -> dict[str, int]:
    """The CLIP text encoders' forward_retained over `windows` 77-token windows."""
    from lorafw.models.text import encode_sd15, encode_sdxl

    g = torch.Generator().manual_seed(windows)
    ids = torch.randint(0, 49407, (batch, windows, 77), generator=g)

    def fwd():
        if arch == "sd15":
            return encode_sd15(tes[0], ids, 2)
        return encode_sdxl(tes[0], tes[1], ids, ids)

    return forward_retained(tes, fwd)


def forward_retained(tes: list[torch.nn.Module], fwd: Callable[[], Any]) -> dict[str, int]:
    """Bytes text encoders keep for backward (held through the denoiser's step): the net allocation of their
    forward under autocast with the output alive; then a backward through the output(s)."""
    saved = SavedBytes(tes)

    def run():
        with autocast(), saved.hooks():
            return fwd()

    clear_grads(tes)
    peak, net, out = allocator_trace(run)
    outs = out if isinstance(out, tuple) else (out,)
    with cuda_autocast_norms():
        sum(o.float().square().mean() for o in outs).backward()
    clear_grads(tes)
    return {"retained": net, "peak": peak, "saved": saved.total}


def vae_encode(vae: torch.nn.Module, side: int, batch: int = 1) -> dict[str, int]:
    """Peak bytes of LatentCache._encode's VAE call (no grad, the VAE's own dtype, no autocast)."""
    x = torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(side)).to(vae.dtype)

    @torch.no_grad()
    def enc():
        dist = vae.encode(x).latent_dist
        return dist.mean + dist.std * torch.randn_like(dist.mean)

    peak, _, _ = allocator_trace(enc)
    return {"peak": peak}


# -- the calibration ---------------------------------------------------------------------------------------
def calibrate_arch(arch: str, sides: list[int], check_side: int | None, nets: list[str], batch2_sides: list[int],
                   store: Callable[[dict[str, Any]], None], check_nets: tuple[str, ...] = ("lora", "dora"),
                   vae: bool = True, max_check_gib: float = 6.0) -> dict[str, Any]:
    """Everything for one architecture; `store` is called with what there is so far after each part."""
    from lorafw.network.adapter import Network
    from diffusers.training_utils import cast_training_params

    parts, info = lorafw_parts(arch)
    te_names = [k for k in ("text_encoder", "text_encoder_2") if k in parts]
    out: dict[str, Any] = {
        "family": family(arch),
        "params": {"unet": count(parts["unet"]), "vae": count(parts["vae"]),
                   "text_encoders": [count(parts[k]) for k in te_names]},
        "targets": {"unet": layer_table(parts["unet"], UNET_CONTAINERS),
                    **{p.removeprefix("lora_"): layer_table(parts[k], TE_CONTAINERS) for k, p in zip(te_names, TE_PREFIXES[arch])}},
        "unet_config": info.unet,
        "activations": {},
    }
    log(f"{arch}: UNet {out['params']['unet'] / 1e6:.1f}M, VAE {out['params']['vae'] / 1e6:.1f}M, text encoders "
        f"{[round(n / 1e6, 1) for n in out['params']['text_encoders']]}M parameters")
    del parts

    # VAE encoder, inference, fp32 and bf16: bytes per image pixel
    vae_out = {}
    for label, dtype in (("fp32", torch.float32), ("half", torch.bfloat16)) if vae else ():
        vae = materialise(from_info(info)["vae"], dtype).eval()
        pts = []
        for side in (s * 8 for s in sides):
            r = vae_encode(vae, side)
            pts.append((1, side * side, r["peak"]))
        pts.append((2, sides[0] ** 2 * 64, vae_encode(vae, sides[0] * 8, batch=2)["peak"]))
        vae_out[label] = fit_batch(pts)
        log(f"  VAE encode {label}: {vae_out[label]}")
        del vae
    if vae_out:
        out["vae_encode"] = vae_out
        store(out)

    for net_name in nets:
        net_spec, adapter_dtype = NETWORKS[arch][net_name]
        fresh = from_info(info)
        unet = materialise(fresh["unet"], torch.bfloat16)
        train_tes = net_name == "lora"  # the text encoders' activations do not depend on the UNet's network
        tes = [materialise(fresh[k], torch.bfloat16) for k in te_names] if train_tes else []
        for m in (unet, *tes):
            m.requires_grad_(False)
        network = Network(net_spec, unet, tes, TE_PREFIXES[arch], train_tes, lambda p: p)
        cast_training_params([unet, *tes], dtype=adapter_dtype)
        unet.train()
        res: dict[str, Any] = {"network": net_spec.__dict__ | {"adapter_dtype": str(adapter_dtype).removeprefix("torch.")},
                               "adapter_parameters": network.n_parameters()}
        for ckpt in (False, True):
            if ckpt:
                unet.enable_gradient_checkpointing()
            else:
                unet.disable_gradient_checkpointing()
            pts, saved_pts, raw = [], [], []
            for batch, side in [(1, sd) for sd in sides] + [(2, sd) for sd in batch2_sides]:
                t0 = time.time()
                r = unet_step(unet, arch, side, batch)
                pts.append((batch, side * side, r["peak"]))
                saved_pts.append((batch, side * side, r["saved"]))
                raw.append({"batch": batch, "latent": side, **r, "seconds": round(time.time() - t0, 1)})
                trim()
                log(f"  {arch} {net_name} checkpointing={ckpt} batch {batch} latent {side}²: peak {r['peak'] / 2**20:.1f} MiB, "
                    f"saved {r['saved'] / 2**20:.1f} MiB, {time.time() - t0:.0f}s")
            key = "checkpointing" if ckpt else "no_checkpointing"
            res[key] = unet_fit(pts, saved_pts) | {"runs": raw}
            f = res[key]
            log(f"  {key}: F={f['F'] / 2**20:.1f} MiB per step + a={f['a'] / 2**20:.1f} MiB + b={f['b']:.1f} B × latent px "
                f"per image; max residual {f['max_abs_relative_residual']:.2%}")
            predicted = f["F"] + f["a"] + f["b"] * (check_side or 0) ** 2
            if check_side and net_name in check_nets and predicted > max_check_gib * 2**30:
                log(f"  no check at latent {check_side}²: it would need {predicted / 2**30:.1f} GiB (--max-check-gib {max_check_gib:g})")
            elif check_side and net_name in check_nets:
                t0 = time.time()
                r = unet_step(unet, arch, check_side)
                pred = f["F"] + f["a"] + f["b"] * check_side**2
                f["check"] = {"batch": 1, "latent": check_side, "measured": r["peak"], "predicted": round(pred),
                              "relative_error": round((pred - r["peak"]) / r["peak"], 5), "seconds": round(time.time() - t0, 1)}
                log(f"  check at latent {check_side}²: measured {r['peak'] / 2**20:.1f} MiB, fit {pred / 2**20:.1f} MiB "
                    f"({f['check']['relative_error']:+.2%}), {time.time() - t0:.0f}s")
        out["activations"][net_name] = res
        if train_tes:
            te_res: dict[str, Any] = {}
            for ckpt in (False, True):
                for te in tes:
                    if ckpt:
                        te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
                    te.train()
                pts = [(1, w * 77, te_forward(tes, arch, w)["retained"]) for w in (1, 2, 3)]
                pts.append((2, 3 * 77, te_forward(tes, arch, 3, batch=2)["retained"]))
                te_res["checkpointing" if ckpt else "no_checkpointing"] = fit_batch(pts)
                log(f"  text encoders checkpointing={ckpt}: {te_res['checkpointing' if ckpt else 'no_checkpointing']}")
            out["text_encoder_activations"] = te_res
        store(out)
        del unet, tes, network
        trim()
    return out


def trim() -> None:
    """Hand freed memory back to the OS (glibc keeps it otherwise): the next, larger step needs it."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", nargs="+", default=["sd15", "sdxl"])
    ap.add_argument("--nets", nargs="+", default=["lora", "locon", "dora"])
    ap.add_argument("--sides", nargs="+", type=int, default=None,
                    help="sizes in the family's unit per side: latent pixels for SD (default 32 48 64 = 256-512 px), DiT "
                         "tokens for Anima (default 16 24 32 = 256-512 px)")
    ap.add_argument("--large", nargs="+", default=["1x64"], metavar="BxSIDE",
                    help="Anima: also these checkpointing steps (default 1x64 = 1024 px), each when memory allows")
    ap.add_argument("--check", type=int, default=96, help="also measure this latent size (LoRA, DoRA) and compare with the fit; 0 = no")
    ap.add_argument("--batch2-sides", nargs="+", type=int, default=None,
                    help="latent sizes also measured at batch 2 (default: the second and the last of --sides)")
    ap.add_argument("--no-vae", action="store_true", help="keep the stored VAE figures")
    ap.add_argument("--no-te", action="store_true", help="Anima: keep the stored text encoder figures")
    ap.add_argument("--max-check-gib", type=float, default=6.0, help="skip a check step whose activations would exceed this")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--extend", nargs="+", default=None, metavar="BxSIDE",
                    help="only add checkpointing steps at these sizes (e.g. 1x96 1x128 2x128) to --out and refit")
    ap.add_argument("--refit", action="store_true",
                    help="only recompute the UNet fits of --out from its stored points (and every family's description)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.refit:
        return refit(Path(args.out))
    if args.extend:
        points = [tuple(int(v) for v in e.split("x")) for e in args.extend]
        if args.arch[0] == "anima":
            import vram_anima

            return vram_anima.extend(Path(args.out), [n for n in args.nets if n in vram_anima.NETWORKS], points)
        return extend(Path(args.out), args.arch[0], args.nets, points)
    import diffusers
    import peft
    import transformers

    path = Path(args.out)
    old = json.loads(path.read_text()) if path.is_file() else {}
    when = {"date": datetime.date.today().isoformat(),
            "device": f"CPU ({platform.processor() or platform.machine()}), {args.threads} thread(s); no GPU",
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__, "peft": peft.__version__}}
    data = {"generated_by": "tools/vram_calibrate.py", **when, **{k: v for k, v in old.items() if k in when},
            "method": METHOD, "context_tokens": CONTEXT_TOKENS, "latent_sides": [32, 48, 64],
            "archs": dict(old.get("archs", {}))}  # the file's own date/device: its first (SD) calibration's
    for arch in args.arch:
        t0 = time.time()
        before = dict(data["archs"].get(arch, {}))  # --nets dora: keep the other networks' figures

        def store(new: dict[str, Any], arch: str = arch, before: dict[str, Any] = before) -> None:
            merged = {**before, **new, "calibrated": when,
                      "activations": {**before.get("activations", {}), **new["activations"]}}
            data["archs"][arch] = merged
            path.write_text(json.dumps(data, indent=1) + "\n")

        if arch == "anima":
            import vram_anima

            sides = args.sides or [16, 24, 32]
            nets = [n for n in args.nets if n in vram_anima.NETWORKS]
            vram_anima.calibrate(sides, nets, args.batch2_sides or [sides[1], sides[-1]], store, vae=not args.no_vae,
                                 extend=[tuple(int(v) for v in e.split("x")) for e in args.large],  # type: ignore[misc]
                                 te=not args.no_te)
        else:
            sides = args.sides or [32, 48, 64]
            calibrate_arch(arch, sides, args.check or None, args.nets, args.batch2_sides or [sides[1], sides[-1]],
                           store, vae=not args.no_vae, max_check_gib=args.max_check_gib)
        log(f"{arch}: {time.time() - t0:.0f}s")
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
