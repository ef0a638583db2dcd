"""DoRA's cost: a DoRA training step against the same network without DoRA, and where the time goes.

    python benchmarks/dora_cost.py --peft               # mid-size SDXL-structured UNet, CPU, 256 px, batch 2
    python benchmarks/dora_cost.py --width 1.0          # the real SDXL widths (random weights; slow on a CPU)
    python benchmarks/dora_cost.py --profile            # also torch.profiler's top operators per variant

One UNet with SDXL's structure (3 levels, transformer depths 1/2/10, linear projections) at `--width` of
SDXL's channels, seeded random weights, the pdxl_dora network on it (LoCon: dim 8 / alpha 4 on the
transformer blocks' Linear and 1×1 layers, conv dim 4 / alpha 2 on the ResNet and sampler 3×3 convolutions).
Each variant times forward + backward of the UNet (the training step's compute; the optimizer's share is
the same with or without DoRA) on a fixed batch, median of `--steps` after one warm-up:
  locon           lorafw's LoCon (LyCORIS parameters, kohya's forward beside the frozen layer)
  dora            lorafw's DoRA (the same, scaled by m / ‖W + ΔW‖ from small matrices; network/modules.py)
  dora_lycoris    LyCORIS's own DoRA forward (builds W + ΔW, its norm and a full-size weight gradient per layer)
  locon_peft, dora_peft   peft's LoRA / DoRA on the same layers (lorafw's engine before LyCORIS)
and checks that `dora` and `dora_lycoris` give the same output and gradients (results unchanged).
Figures only: nothing here asserts. The machine may be shared: run it twice and say so with the figures.

    python benchmarks/dora_cost.py --full               # the pdxl_dora step end to end: the figure that counts

--full is the training step as the pdxl_dora recipe runs it, at SDXL's full size (2.6B parameters, built in
code with seeded random weights, in bf16: ~5 GB): base weights bf16, adapters fp32, bf16 autocast, gradient
checkpointing, 256 px, batch 2, all CPU threads; forward, loss, backward and the AdamW update of the variant's
adapters. Variants, interleaved round by round: locon, dora, each with the speed levers autocast_no_upcast and
dora_norm_cache off (`_before`: what lorafw did before them), and dora_nocache (only dora_norm_cache off). The
text encoders are not in it (pdxl trains the UNet only, from cached text states). Keep it to 2-3 rounds after the
warm-up: a step takes tens of seconds on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def unet_config(width: float) -> dict:
    ch = [max(32, int(round(c * width / 32)) * 32) for c in (320, 640, 1280)]
    return {
        "sample_size": 32, "in_channels": 4, "out_channels": 4, "layers_per_block": 2, "block_out_channels": ch,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [c // 64 for c in ch],
        "cross_attention_dim": int(2048 * width) // 64 * 64, "use_linear_projection": True,
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 256 * 6 + int(1280 * width) // 64 * 64, "norm_num_groups": 32,
    }


def build(width: float) -> torch.nn.Module:
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**unet_config(width))
    unet.requires_grad_(False)
    return unet.train()


def build_full(width: float = 1.0) -> torch.nn.Module:
    """SDXL's UNet (at `width` of its channels: 1.0, its full size) in bf16, checkpointing on; constructed in bf16
    (no fp32 copy of 10 GB on the way)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        unet = UNet2DConditionModel(**unet_config(width))
    finally:
        torch.set_default_dtype(before)
    unet.to(torch.bfloat16).requires_grad_(False)
    unet.enable_gradient_checkpointing()
    return unet.train()


def batch(unet: torch.nn.Module, res: int, n: int) -> tuple:
    cfg = unet.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, res // 8, res // 8, generator=g)
    ctx = torch.randn(n, 77, cfg.cross_attention_dim, generator=g)
    pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
    added = {"text_embeds": torch.randn(n, pooled, generator=g),
             "time_ids": torch.tensor([[res, res, 0, 0, res, res]] * n, dtype=torch.float32)}
    return x, torch.tensor([500] * n), ctx, added


def lycoris_network(unet: torch.nn.Module, dora: bool, own: bool):
    """lorafw's adapters (own=True) or LyCORIS's LoConModule (own=False) on the pdxl_dora layers."""
    from lycoris.modules.locon import LoConModule

    from lorafw.network.adapter import layers_of
    from lorafw.network.modules import KohyaLoCon
    from lorafw.network.targets import UNET_ATTN_CONTAINERS, UNET_CONV_CONTAINERS, select

    targets = select(layers_of(unet, UNET_ATTN_CONTAINERS + UNET_CONV_CONTAINERS), UNET_ATTN_CONTAINERS,
                     UNET_CONV_CONTAINERS, 8, 4.0, 4, 2.0)
    modules = dict(unet.named_modules())
    out = []
    torch.manual_seed(2)
    for t in targets:
        layer = modules[t.name]
        if own:
            m = KohyaLoCon(t.name, layer, t.rank, t.alpha, weight_decompose=dora)
        else:
            m = LoConModule(t.name, layer, 1.0, t.rank, t.alpha, weight_decompose=dora, bypass_mode=False)
        with torch.no_grad():
            m.lora_up.weight.normal_(0, 0.01)  # trained-looking: the update is not zero
        m.apply_to()
        out.append(m)
    for m in reversed(out):  # left off; `rounds` switches each variant on for its step
        m.restore()
    return out


def peft_network(unet: torch.nn.Module) -> dict[str, list]:
    """peft LoRA ("l") and DoRA ("d") adapters on the same layers of one model; `use_peft` picks one."""
    from peft import LoraConfig, inject_adapter_in_model

    from lorafw.network.adapter import layers_of
    from lorafw.network.targets import UNET_ATTN_CONTAINERS, UNET_CONV_CONTAINERS, select

    targets = select(layers_of(unet, UNET_ATTN_CONTAINERS + UNET_CONV_CONTAINERS), UNET_ATTN_CONTAINERS,
                     UNET_CONV_CONTAINERS, 8, 4.0, 4, 2.0)
    conv = [t.name for t in targets if t.rank != 8]
    for name, dora in (("l", False), ("d", True)):
        cfg = LoraConfig(r=8, lora_alpha=4.0, target_modules=[t.name for t in targets], use_dora=dora,
                         rank_pattern={k: 4 for k in conv}, alpha_pattern={k: 2.0 for k in conv})
        inject_adapter_in_model(cfg, unet, adapter_name=name)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.01)
    return {name: [p for n, p in unet.named_parameters() if f".{name}." in n and "lora_" in n] for name in ("l", "d")}


def use_peft(unet: torch.nn.Module, name: str) -> None:
    from peft.tuners.lora import LoraLayer

    for m in unet.modules():
        if isinstance(m, LoraLayer):
            m.set_adapter(name)


def params_of(modules) -> list[torch.nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def step(unet, data, params) -> torch.Tensor:
    x, t, ctx, added = data
    for p in params:
        p.grad = None
    y = unet(x, t, ctx, added_cond_kwargs=added).sample
    y.float().square().mean().backward()
    return y.detach()


def full_step(unet, data, params, opt) -> torch.Tensor:
    """One pdxl_dora training step: the UNet in bf16 under bf16 autocast (lorafw's CPU bf16 run), an fp32 loss,
    backward, AdamW."""
    x, t, ctx, added = data
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = unet(x, t, ctx, added_cond_kwargs=added).sample
    y.float().square().mean().backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return y.detach()


BEFORE = ("autocast_no_upcast", "dora_norm_cache")  # the speed levers that changed DoRA's step (lorafw/speed.py)


def full(args) -> None:
    """--full: see the module docstring."""
    import contextlib
    import os

    from lorafw import speed
    from lorafw.precision import cpu_facts

    print(json.dumps(cpu_facts()))
    unet = build_full(args.width or 1.0)
    n = sum(p.numel() for p in unet.parameters())
    x, t, ctx, added = batch(unet, args.resolution, args.batch)
    bf = torch.bfloat16
    data = (x.to(bf), t, ctx.to(bf), {"text_embeds": added["text_embeds"].to(bf), "time_ids": added["time_ids"].to(bf)})
    nets = {"locon": lycoris_network(unet, False, True), "dora": lycoris_network(unet, True, True)}
    opts = {k: torch.optim.AdamW(params_of(m), lr=5e-5) for k, m in nets.items()}
    print(f"UNet: SDXL at width {args.width or 1.0} ({n / 1e9:.2f}B parameters, bf16, gradient checkpointing), "
          f"{args.resolution} px, batch {args.batch}, bf16 autocast, CPU threads {torch.get_num_threads()}, load "
          f"average {os.getloadavg()[0]:.1f}; forward + backward + AdamW, median of {args.steps} interleaved rounds",
          flush=True)
    # (variant, label, levers off): "_before" is what lorafw did before both levers; dora_nocache isolates the cache
    order = [("locon", "locon", ()), ("locon", "locon_before", BEFORE), ("dora", "dora", ()),
             ("dora", "dora_nocache", ("dora_norm_cache",)), ("dora", "dora_before", BEFORE)]
    times: dict[str, list[float]] = {label: [] for _, label, _ in order}
    cpu: dict[str, list[float]] = {k: [] for k in times}  # the process's CPU seconds (all threads): a shared
    # machine's load stretches wall time far more than the work done
    @contextlib.contextmanager
    def variant(k: str, off: tuple[str, ...]):
        """Variant k's adapters applied and its levers `off`, for one step."""
        for m in nets[k]:
            m.apply_to()
        try:
            with speed.off(*off) if off else contextlib.nullcontext():
                yield
        finally:
            for m in reversed(nets[k]):
                m.restore()

    for r in range(args.steps + 1):
        for k, label, off in order:
            with variant(k, off):
                t0, c0 = time.perf_counter(), time.process_time()
                full_step(unet, data, params_of(nets[k]), opts[k])
                dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if r:
                times[label].append(dt)
                cpu[label].append(dc)
            print(f"  round {r} {label:<14} {dt:7.2f} s, CPU {dc:7.2f} s{'  (warm-up)' if not r else ''} "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for k, label, off in order:
            with variant(k, off), profile(activities=[ProfilerActivity.CPU]) as p:
                full_step(unet, data, params_of(nets[k]), opts[k])
            print(f"\n--- {label}: top operators (self CPU time) ---")
            print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    print()
    for what, series in (("wall", times), ("CPU", cpu)):
        med = {k: statistics.median(v) for k, v in series.items()}
        for k, v in series.items():
            print(f"  {what:<4} {k:<14} {med[k]:7.2f} s/step   ({' '.join(f'{x:.2f}' for x in v)})")
        print(f"  {what}: dora / locon (lorafw, end to end) {med['dora'] / med['locon']:.2f}x (goal <= 1.5x); "
              f"without dora_norm_cache {med['dora_nocache'] / med['locon']:.2f}x; before (levers "
              f"{', '.join(BEFORE)} off) {med['dora_before'] / med['locon_before']:.2f}x; dora after / before "
              f"{med['dora'] / med['dora_before']:.2f}x; "
              f"locon after / before {med['locon'] / med['locon_before']:.2f}x")
    print(json.dumps({"cpu": cpu_facts(), "wall": times, "cpu_seconds": cpu}))


def rounds(variants: dict, data, steps: int) -> dict[str, float]:
    """Each round runs every variant once (switching adapters between them), so load changes hit all alike."""
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(steps + 1):
        for label, (unet, on, off, params) in variants.items():
            on()
            t0 = time.perf_counter()
            step(unet, data, params)
            if r:  # round 0 warms up
                times[label].append(time.perf_counter() - t0)
            off()
    return {k: statistics.median(v) for k, v in times.items()}


def profile_top(unet, data, params, label: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as p:
        step(unet, data, params)
    print(f"\n--- {label}: top operators (self CPU time) ---")
    print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=float, default=None, help="fraction of SDXL's channels (default 0.5; --full: 1.0)")
    ap.add_argument("--resolution", type=int, default=256)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--peft", action="store_true", help="also peft's LoRA and DoRA, in the same rounds (a second model in memory)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads (default 1: on a shared machine, multi-threaded small ops wait on each other)")
    ap.add_argument("--full", action="store_true", help="the pdxl_dora step end to end at SDXL's full size (see above)")
    args = ap.parse_args()
    if args.full:
        return full(args)
    torch.set_num_threads(args.threads)
    args.width = args.width or 0.5
    unet = build(args.width)
    n = sum(p.numel() for p in unet.parameters())
    print(f"UNet: SDXL structure at width {args.width} ({n / 1e6:.0f}M parameters), {args.resolution} px, batch "
          f"{args.batch}, CPU threads {torch.get_num_threads()}, forward + backward, median of {args.steps} "
          "interleaved rounds", flush=True)
    data = batch(unet, args.resolution, args.batch)
    nets = {"locon": lycoris_network(unet, False, True), "dora": lycoris_network(unet, True, True),
            "dora_lycoris": lycoris_network(unet, True, False)}

    def switch(mods, on):
        return (lambda: [m.apply_to() for m in mods]) if on else (lambda: [m.restore() for m in reversed(mods)])

    variants = {k: (unet, switch(m, True), switch(m, False), params_of(m)) for k, m in nets.items()}
    if args.peft:  # a second copy of the model, so peft's variants run in the same rounds
        fresh = build(args.width)
        pp = peft_network(fresh)
        for k, v in pp.items():
            variants[f"{'locon' if k == 'l' else 'dora'}_peft"] = (fresh, (lambda k=k: use_peft(fresh, k)), (lambda: None), v)
    res = rounds(variants, data, args.steps)
    outs = {}
    for label in ("dora", "dora_lycoris"):
        unet_, on, off, params = variants[label]
        on()
        outs[label] = (step(unet, data, params), [p.grad.clone() for p in params])
        if args.profile:
            profile_top(unet, data, params, label)
        off()
    (ya, ga), (yb, gb) = outs["dora"], outs["dora_lycoris"]
    out_diff = ((ya - yb).abs().max() / yb.abs().max()).item()
    grad_diff = max(((a - b).norm() / b.norm().clamp_min(1e-30)).item() for a, b in zip(ga, gb))
    for k, v in res.items():
        print(f"  {k:<14} {v:7.2f} s/step")
    print()
    print(f"dora / locon (lorafw):          {res['dora'] / res['locon']:.2f}x   (goal <= 1.5x)")
    print(f"dora_lycoris / locon:           {res['dora_lycoris'] / res['locon']:.2f}x")
    if "dora_peft" in res:
        print(f"dora_peft / locon_peft:         {res['dora_peft'] / res['locon_peft']:.2f}x   (lorafw before)")
    print(f"lorafw dora vs LyCORIS dora:    output max rel. diff {out_diff:.1e}, gradients max rel. diff {grad_diff:.1e}")


if __name__ == "__main__":
    main()
