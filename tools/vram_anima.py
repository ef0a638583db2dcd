"""The Anima family's part of tools/vram_calibrate.py: its real-size parts, a training step of its DiT, its text
encoder's forward. Run through vram_calibrate (`python tools/vram_calibrate.py --arch anima`).

The parts are built as lorafw builds them from the three files users download: the files' tensors (shapes only,
on the `meta` device, from lorafw.archs.anima.tiny at its FULL sizes) → lorafw.archs.anima.files.describe_dit →
dit.build (DiT + LLM adapter), text.qwen3_config (Qwen3-0.6B), codec.vae_config (the Qwen-Image VAE). The
activation unit is the DiT's token: (h/16)·(w/16) per image (the VAE's 8× then the 2×2 patch); the text is 512
Qwen3 tokens (and 512 T5 ids, the LLM adapter's queries).

Memory: the DiT is about 2B parameters (4 GB in bf16) and a step at 512 px without checkpointing keeps several GB, so
each step waits until the machine has the memory it needs (MemAvailable, /proc/meminfo) and is skipped, with a note
in the file, when it never does.
"""

from __future__ import annotations

import subprocess
import time
from types import SimpleNamespace
from typing import Any, Callable

import torch
import vram_calibrate as vc

from lorafw.config.spec import NetworkSpec
from lorafw.planning.vram import layer_table

TEXT_TOKENS = 512  # Qwen3 tokens and T5 ids per caption (sd-scripts' max lengths; captions are padded to them)
CAPTION_TOKENS = 128  # the unpadded part of a caption (the masks' ones); the bytes do not depend on it
UNIT_PX = 16  # image pixels per side of a DiT token
# sd-scripts' Anima example: LoRA dim 8, bf16 (full_bf16 adapters); Anima has no convolutions to adapt (LoCon = LoRA)
NETWORKS = {"lora": (NetworkSpec("lora", 8, 4, False, 0.0), torch.bfloat16),
            "dora": (NetworkSpec("lora", 8, 4, True, 0.0), torch.bfloat16)}
MIN_FREE_GIB = 12.0  # another process may be using this machine's memory: start a model only with this much free
METHOD_NOTE = ("Anima: the DiT with its LLM adapter (network.train_llm_adapter off), the Qwen3 states as inputs "
               "(cached or not, the DiT's step is the same); x = DiT tokens (h/16)·(w/16); text 512 tokens")


def family() -> dict[str, Any]:
    """What the planner needs to know about Anima beyond the numbers (lorafw/planning/vram.py `Family`)."""
    from lorafw.archs.anima import TARGETS

    return {"label": "Anima", "denoiser": "DiT", "denoiser_long": "DiT + LLM adapter", "unit_px": UNIT_PX,
            "unit": "DiT token", "text_tokens": TEXT_TOKENS,
            "containers": {"unet": [list(TARGETS.denoiser), list(TARGETS.denoiser_conv)],
                           "llm_adapter": [list(TARGETS.llm_adapter), []],
                           "te": [list(TARGETS.text_encoder), []]}}


# -- the parts -------------------------------------------------------------------------------------------
def parts(sizes: Any = None) -> tuple[dict[str, torch.nn.Module], Any]:
    """{"unet": the denoiser (DiT + LLM adapter), "vae": the codec, "text_encoder": Qwen3}, on the meta device, and
    the DiT's description (AnimaInfo), through lorafw's own loading code. `sizes`: tiny.Sizes (default Anima's)."""
    from diffusers import AutoencoderKLQwenImage
    from transformers import Qwen3Model

    from lorafw.archs.anima import codec, dit, files, text, tiny
    from lorafw.logs import quiet

    with torch.device("meta"), quiet("diffusers"):
        sizes = sizes or tiny.FULL
        dit_file = tiny.dit_state(sizes)
        qwen_file = tiny.qwen3_state(sizes)
        vae_file = codec.from_comfyui(tiny.vae_state(sizes))
    shapes = {k: tuple(v.shape) for k, v in dit_file.items()}
    info = files.describe_dit(SimpleNamespace(shapes=lambda: shapes), "anima (meta)")  # type: ignore[arg-type]
    dit_state, adapter_state = dit.split_file(dit_file, info.prefix)
    denoiser = dit.build(info, dit_state, adapter_state, "anima (meta)")
    q_shapes = {k: tuple(v.shape) for k, v in qwen_file.items()}
    with torch.device("meta"), quiet("diffusers"):
        qwen = Qwen3Model(text.qwen3_config(q_shapes, "model."))
        vae = AutoencoderKLQwenImage(**codec.vae_config({k: tuple(v.shape) for k, v in vae_file.items()}))
        cod = codec.QwenImageCodec(vae)
    return {"unet": denoiser, "vae": cod, "text_encoder": qwen}, info


def tables(p: dict[str, torch.nn.Module]) -> dict[str, list[list[Any]]]:
    """The layer tables per network part, with the family's own targets (lorafw.archs.anima.TARGETS)."""
    from lorafw.archs.anima import TARGETS

    return {"unet": layer_table(p["unet"], TARGETS.denoiser + TARGETS.denoiser_conv),
            "llm_adapter": layer_table(p["unet"], TARGETS.llm_adapter),
            "te": layer_table(p["text_encoder"], TARGETS.text_encoder)}


def materialise_codec(cod: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    cod = vc.materialise(cod, dtype)
    with torch.no_grad():
        cod.latents_std.fill_(1.0)  # type: ignore[operator]
    return cod.eval()


# -- memory on this machine ------------------------------------------------------------------------------
def available_gib() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


def wait_for_memory(need_gib: float, what: str, timeout_s: float = 900.0) -> bool:
    """Wait until `need_gib` is available (another process may be using the memory); False after `timeout_s`."""
    t0 = time.time()
    while True:
        free = available_gib()
        if free >= need_gib:
            return True
        if time.time() - t0 > timeout_s:
            vc.log(f"  {what}: {free:.1f} GiB available, {need_gib:.1f} needed: skipped")
            return False
        top = subprocess.run(["ps", "-eo", "rss,pid,comm", "--sort=-rss"], capture_output=True, text=True).stdout
        vc.log(f"  {what}: waiting for {need_gib:.1f} GiB ({free:.1f} available); largest: "
               + "; ".join(" ".join(r.split()) for r in top.splitlines()[1:3]))
        time.sleep(30)


# -- steps ------------------------------------------------------------------------------------------------
def text_inputs(batch: int, width: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """What the text cache holds for a caption (lorafw.archs.anima.text.encode): Qwen3 states zero at the padding,
    the mask, the T5 ids and their mask."""
    mask = torch.zeros(batch, TEXT_TOKENS, dtype=torch.long)
    mask[:, :CAPTION_TOKENS] = 1
    states = torch.randn(batch, TEXT_TOKENS, width, generator=g).to(torch.bfloat16) * mask.unsqueeze(-1)
    ids = torch.randint(0, 32128, (batch, TEXT_TOKENS), generator=g)
    return {"prompt_embeds": states, "attn_mask": mask, "t5_input_ids": ids, "t5_attn_mask": mask.clone()}


def dit_step(denoiser: torch.nn.Module, side: int, batch: int = 1) -> dict[str, int]:
    """One training step of the denoiser at side × side tokens (side·16 pixels): vram_calibrate.train_step."""
    g = torch.Generator().manual_seed(side)
    x = torch.randn(batch, 16, 2 * side, 2 * side, generator=g).to(torch.bfloat16)
    t = torch.full((batch,), 0.5).to(torch.bfloat16)  # σ, as Anima.denoise passes it (the weights' dtype)
    cond = text_inputs(batch, denoiser.llm_adapter.config.source_dim, g)  # type: ignore[union-attr]
    return vc.train_step([denoiser], lambda: denoiser(x, t, **cond), x.shape)


def te_forward(qwen: torch.nn.Module, tokens: int, batch: int = 1) -> dict[str, int]:
    """Bytes Qwen3's forward keeps for backward (its LoRA training), as text.encode calls it."""
    g = torch.Generator().manual_seed(tokens)
    ids = torch.randint(0, 151643, (batch, tokens), generator=g)
    mask = torch.zeros(batch, tokens, dtype=torch.long)
    mask[:, : min(CAPTION_TOKENS, tokens)] = 1

    def fwd() -> torch.Tensor:
        states = qwen(input_ids=ids, attention_mask=mask).last_hidden_state
        return states.masked_fill(~mask.bool().unsqueeze(-1), 0)

    return vc.forward_retained([qwen], fwd)


def fit(pts: list[tuple[int, int, int]], saved_pts: list[tuple[int, int, int]], n_small: int) -> dict[str, Any]:
    """One line through every size (vram_calibrate.fit_batch): the DiT is one stack of equal blocks at one
    resolution with memory-linear attention, so its bytes grow linearly in tokens, unlike a UNet's (whose peak moves
    between levels: vram_calibrate.unet_fit's pieces). Where larger steps were measured after the first
    `n_small`, the line through the small ones alone is checked against the largest ("check")."""
    out = vc.fit_batch(pts) | {"saved_tensors": vc.fit_batch(saved_pts)}
    if len(pts) > n_small >= 3:
        small = vc.fit_batch(pts[:n_small])
        B, x, measured = max(pts[n_small:], key=lambda p: p[0] * p[1])
        pred = small["F"] + B * (small["a"] + small["b"] * x)
        out["check"] = {"batch": B, "latent": round(x ** 0.5), "measured": measured, "predicted": round(pred),
                        "relative_error": round((pred - measured) / measured, 5), "fitted_without_it": True}
    return out


def text_encoder(store: Callable[[dict[str, Any]], None], out: dict[str, Any]) -> None:
    """Qwen3 trained (text_encoder_lr > 0): what its forward keeps for backward at 512 tokens (and 256, for the
    fit), with and without checkpointing."""
    from diffusers.training_utils import cast_training_params

    from lorafw.archs.anima import TARGETS
    from lorafw.network.adapter import Network
    from lorafw.network.targets import kohya_name

    net_spec, adapter_dtype = NETWORKS["lora"]
    qwen = vc.materialise(parts()[0]["text_encoder"], torch.bfloat16)
    qwen.requires_grad_(False)
    Network(net_spec, torch.nn.Module(), [qwen], ["lora_te"], True, lambda s: s, arch="anima", train_unet=False,
            targets=TARGETS, te_names=[lambda s: kohya_name("lora_te", s)])
    cast_training_params([qwen], dtype=adapter_dtype)
    te_res = {}
    for ckpt in (False, True):
        if ckpt:
            qwen.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        qwen.train()
        pts = [(1, n, te_forward(qwen, n)["retained"]) for n in (TEXT_TOKENS // 2, TEXT_TOKENS)]
        pts.append((2, TEXT_TOKENS, te_forward(qwen, TEXT_TOKENS, batch=2)["retained"]))
        te_res["checkpointing" if ckpt else "no_checkpointing"] = vc.fit_batch(pts)
        vc.log(f"  Qwen3 checkpointing={ckpt}: {te_res['checkpointing' if ckpt else 'no_checkpointing']}")
    out["text_encoder_activations"] = te_res
    store(out)
    del qwen
    vc.trim()


# -- the calibration --------------------------------------------------------------------------------------
def calibrate(sides: list[int], nets: list[str], batch2_sides: list[int], store: Callable[[dict[str, Any]], None],
              vae: bool = True, extend: list[tuple[int, int]] | None = None, te: bool = True) -> dict[str, Any]:
    """Everything for Anima; `store` is called with what there is so far after each part. `sides` in DiT tokens
    per side (16 = 256 px); `extend`: (batch, side) steps with checkpointing only (the large sizes)."""
    from diffusers.training_utils import cast_training_params

    from lorafw.archs.anima import TARGETS
    from lorafw.network.adapter import Network

    p, info = parts()
    out: dict[str, Any] = {
        "family": family(),
        "params": {"unet": vc.count(p["unet"]), "vae": vc.count(p["vae"]),
                   "text_encoders": [vc.count(p["text_encoder"])]},
        "params_detail": {"dit": vc.count(p["unet"].dit), "llm_adapter": vc.count(p["unet"].llm_adapter)},
        "targets": tables(p),
        "dit_config": {k: getattr(info, k) for k in ("blocks", "channels", "heads", "patch", "in_channels", "text_dim",
                                                     "adaln_lora_dim", "mlp_ratio", "adapter_layers")},
        "activations": {},
        "notes": [METHOD_NOTE],
    }
    detail = out["params_detail"]
    vc.log(f"anima: DiT {detail['dit'] / 1e6:.1f}M + LLM adapter {detail['llm_adapter'] / 1e6:.1f}M, "
           f"VAE {out['params']['vae'] / 1e6:.1f}M, Qwen3 {out['params']['text_encoders'][0] / 1e6:.1f}M parameters")
    del p
    skipped: list[str] = []

    if vae:  # the VAE encoder's no-grad peak, per image pixel (the sizes people cache at)
        vae_out = {}
        for label, dtype in (("fp32", torch.float32), ("half", torch.bfloat16)):
            cod = materialise_codec(parts()[0]["vae"], dtype)
            pts = [(1, (s * UNIT_PX) ** 2, vc.vae_encode(cod, s * UNIT_PX)["peak"]) for s in sides]
            pts.append((2, (sides[0] * UNIT_PX) ** 2, vc.vae_encode(cod, sides[0] * UNIT_PX, batch=2)["peak"]))
            vae_out[label] = vc.fit_batch(pts)
            vc.log(f"  VAE encode {label}: {vae_out[label]}")
            del cod
            vc.trim()
        out["vae_encode"] = vae_out
        store(out)

    if te:
        text_encoder(store, out)

    for net_name in nets:
        net_spec, adapter_dtype = NETWORKS[net_name]
        if not wait_for_memory(MIN_FREE_GIB, f"anima {net_name}: the DiT (4 GiB in bf16)"):
            skipped.append(f"{net_name}: not measured (less than {MIN_FREE_GIB:g} GiB free)")
            continue
        den = vc.materialise(parts()[0]["unet"], torch.bfloat16)
        den.requires_grad_(False)
        network = Network(net_spec, den, [], ["lora_te"], False, lambda s: s, arch="anima", targets=TARGETS)
        cast_training_params([den], dtype=adapter_dtype)
        den.train()
        res: dict[str, Any] = {
            "network": net_spec.__dict__ | {"adapter_dtype": str(adapter_dtype).removeprefix("torch.")},
            "adapter_parameters": network.n_parameters()}
        for ckpt in (False, True):
            if ckpt:
                den.enable_gradient_checkpointing()  # type: ignore[operator]
            else:
                den.dit.disable_gradient_checkpointing()  # type: ignore[operator,union-attr]
                den.llm_adapter.disable_gradient_checkpointing()  # type: ignore[operator,union-attr]
            large = list(extend or []) if ckpt else []
            steps = [(1, sides[0]), *[(2, s) for s in batch2_sides], *[(1, s) for s in sides[1:]], *large]
            key = "checkpointing" if ckpt else "no_checkpointing"
            pts, saved_pts, raw = [], [], []
            per_token = 0.0  # bytes per token and image seen so far: how much the next step will need
            n_small = 0  # steps measured before the large ones
            for batch, side in steps:
                need = per_token * batch * side * side * 1.25 / 2**30 + 2.0
                if not wait_for_memory(need, f"anima {net_name} checkpointing={ckpt} {batch}×{side * UNIT_PX}px"):
                    skipped.append(f"{net_name} checkpointing={ckpt} batch {batch} at {side * UNIT_PX} px: not "
                                   f"measured (needs about {need:.0f} GiB free)")
                    continue
                t0 = time.time()
                r = dit_step(den, side, batch)
                per_token = max(per_token, r["peak"] / (batch * side * side))
                pts.append((batch, side * side, r["peak"]))
                saved_pts.append((batch, side * side, r["saved"]))
                raw.append({"batch": batch, "latent": side, **r, "seconds": round(time.time() - t0, 1)})
                vc.trim()
                n_small += (batch, side) not in large
                vc.log(f"  anima {net_name} checkpointing={ckpt} batch {batch} {side * UNIT_PX}px ({side * side} "
                       f"tokens): peak {r['peak'] / 2**20:.1f} MiB, saved {r['saved'] / 2**20:.1f} MiB, "
                       f"{time.time() - t0:.0f}s")
                if len(pts) >= 3:  # what there is so far, in case a later (larger) step is stopped
                    res[key] = fit(pts, saved_pts, n_small) | {"runs": raw}
                    out["activations"][net_name] = res
                    store(out | {"notes": out["notes"] + skipped})
            res[key] = fit(pts, saved_pts, n_small) | {"runs": raw}
            f = res[key]
            vc.log(f"  {key}: F={f['F'] / 2**20:.1f} MiB per step + a={f['a'] / 2**20:.1f} MiB + b={f['b']:.1f} B × "
                   f"token per image; max residual {f['max_abs_relative_residual']:.2%}"
                   + (f"; {f['check']['latent'] * UNIT_PX} px predicted by the smaller sizes within "
                      f"{f['check']['relative_error']:+.2%}" if "check" in f else ""))
        out["activations"][net_name] = res
        out["notes"] = [METHOD_NOTE] + skipped
        store(out)
        del den, network
        vc.trim()
    return out


def extend(path: Any, nets: list[str], points: list[tuple[int, int]]) -> None:
    """Add checkpointing steps at larger sizes (batch, side in tokens) to a calibration file's Anima entry, each a
    check of the line through the sizes before it, then refit through all."""
    import json

    from diffusers.training_utils import cast_training_params

    from lorafw.archs.anima import TARGETS
    from lorafw.network.adapter import Network

    data = json.loads(path.read_text())
    for net_name in nets:
        entry = data["archs"]["anima"]["activations"][net_name]["checkpointing"]
        net_spec, adapter_dtype = NETWORKS[net_name]
        if not wait_for_memory(MIN_FREE_GIB, f"anima {net_name}: the DiT (4 GiB in bf16)"):
            continue
        den = vc.materialise(parts()[0]["unet"], torch.bfloat16)
        den.requires_grad_(False)
        Network(net_spec, den, [], ["lora_te"], False, lambda s: s, arch="anima", targets=TARGETS)
        cast_training_params([den], dtype=adapter_dtype)
        den.train()
        den.enable_gradient_checkpointing()  # type: ignore[operator]
        pts = [tuple(p) for p in entry["points"]]
        saved = [tuple(p) for p in entry["saved_tensors"]["points"]]
        runs = entry.get("runs", [])
        for batch, side in points:
            need = max(p[2] / (p[0] * p[1]) for p in pts) * batch * side * side * 1.25 / 2**30 + 2.0
            if any(p[:2] == (batch, side * side) for p in pts) or not wait_for_memory(
                    need, f"anima {net_name} {batch}×{side * UNIT_PX}px"):
                continue
            t0 = time.time()
            r = dit_step(den, side, batch)
            n_small = len(pts)
            pts.append((batch, side * side, r["peak"]))
            saved.append((batch, side * side, r["saved"]))
            runs.append({"batch": batch, "latent": side, **r, "seconds": round(time.time() - t0, 1)})
            new = fit(pts, saved, n_small) | {"runs": runs}
            data["archs"]["anima"]["activations"][net_name]["checkpointing"] = new
            path.write_text(json.dumps(data, indent=1) + "\n")
            vc.log(f"  anima {net_name} checkpointing=True batch {batch} {side * UNIT_PX}px: peak "
                   f"{r['peak'] / 2**20:.1f} MiB, predicted by the smaller sizes within "
                   f"{new['check']['relative_error']:+.2%}, {time.time() - t0:.0f}s")
            vc.trim()
        del den
        vc.trim()
