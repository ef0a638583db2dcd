"""Adapter targets, kohya/LyCORIS key names, every algorithm's file read whole by LyCORIS's own loader,
kohya's dropouts, the DoRA fast path against LyCORIS's own forward, and the file round trip."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lorafw.config.spec import NetworkSpec
from lorafw.models.tiny import build_sd15, build_sdxl
from lorafw.network.adapter import Network, layers_of
from lorafw.network.apply import WeightPatcher, module_names, rebuild
from lorafw.network.modules import KohyaLoCon
from lorafw.network.targets import (
    UNET_ATTN_CONTAINERS,
    UNET_CONV_CONTAINERS,
    Layer,
    kohya_name,
    select,
    te_module_path,
    unet_namer,
)

BASE = NetworkSpec()
LORA = dataclasses.replace(BASE, dim=4, alpha=2.0)
LOCON = dataclasses.replace(LORA, algo="locon", conv_dim=2, conv_alpha=1.0)
DORA = dataclasses.replace(LOCON, dora_wd=True)
ALGOS = {
    "lora": LORA,
    "locon": LOCON,
    "dora": DORA,
    "loha": dataclasses.replace(LOCON, algo="loha"),
    "lokr": dataclasses.replace(LOCON, algo="lokr", factor=4),
    "lokr_both": dataclasses.replace(LOCON, algo="lokr", factor=4, dim=2, decompose_both=True),
    "locon_tucker": dataclasses.replace(LOCON, use_tucker=True),  # lora_mid on the k×k convolutions
    "loha_tucker": dataclasses.replace(LOCON, algo="loha", use_tucker=True),
    "lokr_tucker": dataclasses.replace(LOCON, algo="lokr", factor=4, use_tucker=True),  # lokr_t2 on the convolutions
    "ia3": dataclasses.replace(BASE, algo="ia3"),
    "glora": dataclasses.replace(LORA, algo="glora"),
}

# What A1111/Forge's LoRA loader matches for SD1.5 text-encoder keys (FORMATS.md).
A1111_TE = re.compile(r"lora_te_text_model_encoder_layers_(\d+)_(.+)")


def test_select_follows_kohya():
    layers = [
        Layer("a.to_q", "linear", "Transformer2DModel"),
        Layer("a.proj_in", "conv1x1", "Transformer2DModel"),
        Layer("r.conv1", "conv", "ResnetBlock2D"),
        Layer("r.conv_shortcut", "conv1x1", "ResnetBlock2D"),
        Layer("r.time_emb_proj", "linear", "ResnetBlock2D"),
        Layer("d.conv", "conv", "Downsample2D"),
        Layer("x.conv", "conv", "Transformer2DModel"),
    ]
    lora = select(layers, UNET_ATTN_CONTAINERS, UNET_CONV_CONTAINERS, 8, 4.0, None, None)
    assert [(t.name, t.rank) for t in lora] == [("a.to_q", 8), ("a.proj_in", 8)]
    locon = select(layers, UNET_ATTN_CONTAINERS, UNET_CONV_CONTAINERS, 8, 4.0, 2, 1.0)
    assert [(t.name, t.rank, t.alpha) for t in locon] == [
        ("a.to_q", 8, 4.0), ("a.proj_in", 8, 4.0), ("r.conv1", 2, 1.0), ("r.conv_shortcut", 8, 4.0),
        ("r.time_emb_proj", 8, 4.0), ("d.conv", 2, 1.0),
    ]


def test_names():
    assert kohya_name("lora_unet", "down_blocks.0.attentions.0.proj_in") == "lora_unet_down_blocks_0_attentions_0_proj_in"
    assert te_module_path("encoder.layers.0.mlp.fc1") == "text_model.encoder.layers.0.mlp.fc1"
    assert te_module_path("text_model.encoder.layers.0.mlp.fc1") == "text_model.encoder.layers.0.mlp.fc1"
    assert unet_namer(lambda p: "input_blocks.1.1." + p)("x") == "lora_unet_input_blocks_1_1_x"


def net(spec: NetworkSpec, train_te: bool = True, arch: str = "sd15", **kw) -> tuple[Network, dict]:
    if arch == "sd15":
        parts = build_sd15(0)
        return Network(spec, parts["unet"], [parts["text_encoder"]], ["lora_te"], train_te, unet_namer(None), **kw), parts
    from lorafw.models.ldm_layout import UNetLayout, unet_to_original

    parts = build_sdxl(0)
    layout = UNetLayout.from_config(dict(parts["unet"].config))
    namer = unet_namer(lambda p: unet_to_original(p, layout))
    return Network(spec, parts["unet"], [parts["text_encoder"], parts["text_encoder_2"]], ["lora_te1", "lora_te2"],
                   train_te, namer, **kw), parts


def names_of(arch: str, parts: dict) -> dict[str, torch.nn.Module]:
    """The model's layers under their file names, as the family names them (SD1.5 diffusers paths, SDXL original)."""
    from lorafw import families

    fam = families.get(arch)
    tes = [parts["text_encoder"]] + ([parts["text_encoder_2"]] if arch == "sdxl" else [])
    return module_names(parts["unet"], tes, fam.te_prefixes, fam.denoiser_namer(parts["unet"]))


def perturb(n: Network, seed: int = 1, std: float = 0.05) -> None:
    """Trained-looking weights: every parameter moved off its initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for e in n.entries:
            for name, p in e.module.named_parameters():
                noise = torch.randn(p.shape, generator=g) * std
                p.mul_(1 + noise) if name == "dora_scale" else p.add_(noise)  # magnitudes move relative to themselves


def test_lora_targets_on_sd15():
    n, parts = net(LORA)
    unet = [e for e in n.entries if e.part == "unet"]
    te = [e for e in n.entries if e.part == "te"]
    attn_layers = layers_of(build_sd15(0)["unet"], UNET_ATTN_CONTAINERS)
    assert len(unet) == len(attn_layers) == 120  # 10 per transformer block: proj_in/out, q/k/v/out ×2, ff ×2
    assert len(te) == 3 * 6  # per CLIP layer: q, k, v, out_proj, fc1, fc2
    assert all(A1111_TE.fullmatch(e.file_name) for e in te)
    modules = dict(build_sd15(0)["unet"].named_modules())
    for e in unet:  # every UNet name is a real diffusers module path (what every reader accepts for SD1.5)
        assert e.file_name.startswith("lora_unet_") and e.path in modules
        assert e.file_name == "lora_unet_" + e.path.replace(".", "_")
    assert sum(p.numel() for p in parts["unet"].parameters() if p.requires_grad) == sum(p.numel() for p in n.parameters("unet"))
    assert all(isinstance(e.module, KohyaLoCon) for e in n.entries)


def test_no_text_encoder_adapters_when_it_is_frozen_and_no_unet_ones_when_that_is():
    n, _ = net(LORA, train_te=False)
    assert n.entries and all(e.part == "unet" for e in n.entries)
    assert not any(k.startswith("lora_te") for k in n.kohya_state_dict())
    n, _ = net(LORA, train_unet=False)
    assert n.entries and all(e.part == "te" for e in n.entries)


def test_kohya_state_dict_layout():
    n, _ = net(LORA)
    sd = n.kohya_state_dict()
    name = "lora_unet_down_blocks_0_attentions_0_proj_in"
    assert sd[f"{name}.lora_down.weight"].shape == (4, 32, 1, 1)  # 1×1 conv in SD1.5's transformer blocks
    assert sd[f"{name}.lora_up.weight"].shape == (32, 4, 1, 1)
    assert sd[f"{name}.alpha"].shape == () and sd[f"{name}.alpha"].item() == 2.0
    assert sd["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"].shape == (4, 32)
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert len(sd) == 3 * len(n.entries)


def test_locon_conv_layers_and_dora_scale_shapes():
    n, _ = net(LOCON)
    sd = n.kohya_state_dict(torch.float32)
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"
    assert sd[f"{conv}.lora_down.weight"].shape == (2, 32, 3, 3) and sd[f"{conv}.lora_up.weight"].shape == (32, 2, 1, 1)
    assert sd[f"{conv}.alpha"].item() == 1.0
    d, _ = net(DORA)
    sd = d.kohya_state_dict(torch.float32)
    assert sd[f"{conv}.dora_scale"].shape == (32, 1, 1, 1)
    assert sd["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.dora_scale"].shape == (32, 1)
    assert sd["lora_te_text_model_encoder_layers_0_self_attn_q_proj.dora_scale"].shape == (32, 1)


KEYS = {  # the tensors each algorithm's file holds per layer (LyCORIS's names; ComfyUI and A1111 read the same)
    "lora": {"lora_down.weight", "lora_up.weight", "alpha"},
    "loha": {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "alpha"},
    "ia3": {"weight", "on_input"},
    "glora": {"a1.weight", "a2.weight", "b1.weight", "b2.weight", "alpha"},
}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_each_file_is_taken_whole_by_lycoris_loader(algo, arch):
    """LyCORIS's own loader (get_module + make_module per layer) rebuilds every layer of the file: each tensor
    is one it reads, the rebuilt module holds the same values, and the model it makes is ours."""
    spec = ALGOS[algo]
    n, parts = net(spec, arch=arch)
    perturb(n)
    sd = n.kohya_state_dict(torch.float32)
    if algo in KEYS:
        assert {k.split(".", 1)[1] for k in sd if k.startswith(n.entries[0].file_name + ".")} == KEYS[algo]
    modules = names_of(arch, parts)
    n.set_enabled(False)  # the loader patches the plain layers
    x = {e.file_name: None for e in n.entries}
    for name in x:
        rebuilt = rebuild(sd, name, modules[name])
        theirs = {k: v for k, v in rebuilt.state_dict().items()}
        mine = {k.split(".", 1)[1]: v for k, v in sd.items() if k.startswith(name + ".")}
        assert set(mine) == set(theirs), (name, set(mine) ^ set(theirs))  # every tensor read, none made up
        full_matrix = getattr(rebuilt, "use_w1", False) and getattr(rebuilt, "use_w2", False)
        for k, v in mine.items():
            if k == "alpha" and full_matrix:
                # LoKr full-matrix layers: LyCORIS writes alpha = dim and reads it back as 1; both mean scale 1
                assert rebuilt.scale == 1.0
                continue
            assert torch.equal(theirs[k].float(), v), (name, k)
    # the model LyCORIS's modules make is the one we trained
    n.set_enabled(True)
    x_in, t = torch.randn(1, 4, 8, 8), torch.tensor([10])
    ctx = torch.randn(1, 77, 32 if arch == "sd15" else 64)
    kw = {} if arch == "sd15" else {"added_cond_kwargs": {"text_embeds": torch.randn(1, 32),
                                                          "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}}
    parts["unet"].eval()
    with torch.no_grad():
        ours = parts["unet"](x_in, t, ctx, **kw).sample
        n.set_enabled(False)
        base = parts["unet"](x_in, t, ctx, **kw).sample
        applied = []
        for name in x:
            if name.startswith("lora_unet"):
                m = rebuild(sd, name, modules[name])
                m.apply_to()
                applied.append(m)
        theirs = parts["unet"](x_in, t, ctx, **kw).sample
        for m in reversed(applied):
            m.restore()
    assert (ours - base).abs().max() > 1e-3
    torch.testing.assert_close(theirs, ours, atol=5e-4, rtol=1e-3)  # fp32 rounding through 30 layers


@pytest.mark.parametrize("algo", sorted(ALGOS))
def test_grid_patch_equals_the_training_forward(algo):
    """W + ΔW as the UIs merge it (exact DoRA) gives the model the adapters run, for every algorithm."""
    n, parts = net(ALGOS[algo])
    perturb(n)
    sd = n.kohya_state_dict(torch.float32)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32)
    parts["unet"].eval()
    with torch.no_grad():
        ours = parts["unet"](x, t, c).sample
        n.set_enabled(False)
        base = parts["unet"](x, t, c).sample
        patcher = WeightPatcher(module_names(parts["unet"], [parts["text_encoder"]], ("lora_te",)), "exact")
        assert patcher.apply(sd, 1.0) == len(n.entries)
        patched = parts["unet"](x, t, c).sample
        patcher.restore()
        assert torch.equal(parts["unet"](x, t, c).sample, base)  # restored bit for bit
        if algo == "ia3":
            comfy = WeightPatcher(module_names(parts["unet"], [parts["text_encoder"]], ("lora_te",)), "comfyui")
            assert comfy.apply(sd, 1.0) == 0  # ComfyUI ignores IA3 files: the grid shows the base model
    torch.testing.assert_close(patched, ours, atol=5e-4, rtol=1e-3)  # fp32 rounding through 30 layers


def test_set_enabled_gives_the_base_model_bit_for_bit():
    n, parts = net(DORA)
    perturb(n)
    base = build_sd15(0)["unet"].eval()
    parts["unet"].eval()
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32)
    with torch.no_grad():
        n.set_enabled(False)
        assert torch.equal(parts["unet"](x, t, c).sample, base(x, t, c).sample)
        n.set_enabled(True)
        assert not torch.equal(parts["unet"](x, t, c).sample, base(x, t, c).sample)


# -- kohya's dropouts, on one layer -------------------------------------------------------------------
def one(layer: torch.nn.Module, **kw) -> KohyaLoCon:
    torch.manual_seed(0)
    m = KohyaLoCon("x", layer, 4, 2.0, **kw)
    with torch.no_grad():
        m.lora_up.weight.normal_()
    m.apply_to()
    return m.train()


def test_network_dropout_drops_the_rank_activation():
    layer = torch.nn.Linear(16, 8)
    m = one(layer, dropout=0.5)
    x = torch.randn(3, 5, 16)
    torch.manual_seed(7)
    got = layer(x)
    torch.manual_seed(7)
    lx = F.dropout(F.linear(x, m.lora_down.weight), p=0.5)  # kohya: dropout on lora_down's output
    want = F.linear(x, layer.weight, layer.bias) + F.linear(lx, m.lora_up.weight) * m.scale
    torch.testing.assert_close(got, want)
    m.eval()
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias) + F.linear(F.linear(x, m.lora_down.weight), m.lora_up.weight) * m.scale)


@pytest.mark.parametrize("conv", [False, True])
def test_rank_dropout_masks_ranks_per_sample_and_rescales(conv):
    layer = torch.nn.Conv2d(6, 8, 3, padding=1) if conv else torch.nn.Linear(16, 8)
    m = one(layer, rank_dropout=0.25)
    x = torch.randn(3, 6, 5, 5) if conv else torch.randn(3, 7, 16)
    torch.manual_seed(3)
    got = layer(x)
    torch.manual_seed(3)
    mask = (torch.rand((3, 4)) > 0.25).float()
    lx = m.lora_down(x)
    lx = lx * (mask[:, :, None, None] if conv else mask[:, None, :])
    base = F.conv2d(x, layer.weight, layer.bias, padding=1) if conv else F.linear(x, layer.weight, layer.bias)
    want = base + m.lora_up(lx) * (m.scale / 0.75)
    torch.testing.assert_close(got, want)


def test_module_dropout_skips_the_adapter():
    layer = torch.nn.Linear(16, 8)
    m = one(layer, module_dropout=0.999999)
    x = torch.randn(2, 16)
    assert torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))
    m.eval()
    assert not torch.equal(layer(x), F.linear(x, layer.weight, layer.bias))


# -- DoRA: the fast path is LyCORIS's DoRA ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv", "linear_nobias"])
def test_dora_fast_path_equals_lycoris_merged_weight_forward(kind):
    from lycoris.modules.locon import LoConModule

    def make_layer():
        torch.manual_seed(0)
        if kind == "conv":
            return torch.nn.Conv2d(6, 8, 3, padding=1)
        return torch.nn.Linear(16, 8, bias=kind == "linear")

    a_layer, b_layer = make_layer(), make_layer()
    torch.manual_seed(1)
    ours = KohyaLoCon("x", a_layer, 4, 2.0, weight_decompose=True)
    torch.manual_seed(1)
    theirs = LoConModule("x", b_layer, 1.0, 4, 2.0, weight_decompose=True, bypass_mode=False)
    with torch.no_grad():
        for p, q in zip(ours.parameters(), theirs.parameters()):
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.shape == ours.dora_scale.shape else 0.0))
            q.copy_(p)
    ours.apply_to()
    theirs.apply_to()
    x = torch.randn(2, 6, 5, 5) if kind == "conv" else torch.randn(2, 3, 16)
    ya, yb = a_layer(x), b_layer(x)
    torch.testing.assert_close(ya, yb, atol=1e-5, rtol=1e-5)
    (ya.square().sum()).backward()
    (yb.square().sum()).backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-4, msg=name)


# -- block-wise ranks and lr weights ------------------------------------------------------------------
def test_block_dims_give_kohya_ranks_and_zero_blocks_no_adapter():
    dims = [4] * 25
    dims[1] = 0  # down block 0's first ResNet/attention (kohya index 1): no adapter
    dims[12] = 2  # the mid block
    spec = dataclasses.replace(LORA, block_dims=tuple(dims), block_alphas=tuple([1.0] * 25))
    n, _ = net(spec, train_te=False)
    by_name = {e.file_name: e for e in n.entries}
    assert not any(k.startswith("lora_unet_down_blocks_0_attentions_0_") for k in by_name)
    mid = [e for e in n.entries if e.file_name.startswith("lora_unet_mid_block_")]
    assert mid and all(e.target.rank == 2 and e.target.alpha == 1.0 for e in mid)
    assert all(e.target.rank == 4 for e in n.entries if e.block not in (1, 12))


def test_param_groups_loraplus_and_block_lr():
    spec = dataclasses.replace(LORA, loraplus_lr_ratio=16.0, loraplus_text_encoder_lr_ratio=4.0,
                               down_lr_weight="zeros+0.5", mid_lr_weight="2", up_lr_weight=None)
    n, _ = net(spec)
    groups = n.param_groups(1e-4, 2e-5)
    by = {g["name"]: g for g in groups}
    assert by["text_encoder"]["lr"] == pytest.approx(2e-5) and by["text_encoder_plus"]["lr"] == pytest.approx(8e-5)
    assert by["unet_block12"]["lr"] == pytest.approx(2e-4) and by["unet_block12_plus"]["lr"] == pytest.approx(3.2e-3)
    assert by["unet_block01"]["lr"] == pytest.approx(5e-5)
    up = [g for g in groups if g["name"].startswith("unet_block") and int(g["name"][10:12]) >= 13 and "plus" not in g["name"]]
    assert up and all(g["lr"] == pytest.approx(1e-4) for g in up)  # up blocks keep 1.0
    pname = {id(p): k for e in n.entries for k, p in e.module.named_parameters()}
    for g in groups:
        assert all(("lora_up" in pname[id(p)]) == g["name"].endswith("_plus") for p in g["params"]), g["name"]
    params = [p for g in groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(n.parameters("")))


@pytest.mark.parametrize("kind,dora", [("linear", True), ("conv", True), ("linear", False), ("conv", False)])
def test_cpu_autocast_adapters_skip_the_fp32_copies_with_the_same_bits(kind, dora):
    """speed lever autocast_no_upcast: under the CPU's bf16 autocast the adapter's input (and DoRA's frozen weight)
    goes to autocast as it is; the fp32 copy it replaces was cast back to the same values, so output and gradients
    are bit-identical. Engaged: the frozen weight itself (not a copy of it) is what DoRA's W·Dᵀ keeps for backward,
    and no fp32 copy of the bf16 input is made."""
    from lorafw import speed

    def run(lever_on: bool) -> tuple[torch.Tensor, list[torch.Tensor], int, int]:
        torch.manual_seed(0)
        layer = torch.nn.Conv2d(32, 48, 3, padding=1) if kind == "conv" else torch.nn.Linear(64, 48)
        layer.to(torch.bfloat16).requires_grad_(False)
        m = one(layer, weight_decompose=dora)
        with torch.no_grad():
            m.lora_down.weight.normal_()
        x = (torch.randn(2, 32, 6, 6) if kind == "conv" else torch.randn(2, 5, 64)).to(torch.bfloat16).requires_grad_()
        saved: set[int] = set()  # storages of the weight's size kept for the backward pass
        upcasts = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.numel() == layer.weight.numel():
                saved.add(t.untyped_storage().data_ptr())
            return t

        def count(mod: Any, args: tuple) -> None:
            nonlocal upcasts
            upcasts += args[0].dtype == torch.float32

        m.lora_down.register_forward_pre_hook(count)
        with contextlib.ExitStack() as stack:
            if not lever_on:
                stack.enter_context(speed.off("autocast_no_upcast"))
            stack.enter_context(torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t))
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = layer(x)
            y.float().square().sum().backward()
        grads = [x.grad] + [p.grad for p in m.parameters() if p.requires_grad]
        return y, grads, len(saved), upcasts

    y_on, g_on, saved_on, up_on = run(True)
    y_off, g_off, saved_off, up_off = run(False)
    assert y_on.dtype == torch.bfloat16 and torch.equal(y_on, y_off)
    assert len(g_on) == len(g_off) > 2 and all(torch.equal(a, b) for a, b in zip(g_on, g_off))
    assert (up_on, up_off) == (0, 1)  # lever off: lora_down got an fp32 copy of the input
    # the layer keeps its weight for the input's gradient; lever off, DoRA's W·Dᵀ kept a bf16 copy of an fp32 copy too
    assert (saved_on, saved_off) == ((1, 2) if dora else (1, 1))


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("autocast", [False, True])
@pytest.mark.parametrize("reentrant", [False, True])
def test_dora_norm_cache_reuses_w_dt_in_the_checkpoint_recompute_with_the_same_bits(kind, autocast, reentrant,
                                                                                  monkeypatch):
    """speed lever dora_norm_cache: under gradient checkpointing each forward runs twice per step with the same
    D; W·Dᵀ is computed once a step instead of twice, and outputs, every gradient and the updated weights over
    two optimizer steps are bit-identical to computing it each time."""
    from torch.utils.checkpoint import checkpoint

    from lorafw import speed

    real_mm = torch.mm

    def run(lever_on: bool) -> tuple[list[torch.Tensor], int]:
        torch.manual_seed(0)
        layer = torch.nn.Conv2d(32, 48, 3, padding=1) if kind == "conv" else torch.nn.Linear(64, 48)
        layer.requires_grad_(False)
        if autocast:
            layer.to(torch.bfloat16)
        m = one(layer, weight_decompose=True)
        with torch.no_grad():
            m.lora_down.weight.normal_()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        products = 0

        def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            nonlocal products
            products += a.numel() == layer.weight.numel()
            return real_mm(a, b)

        monkeypatch.setattr(torch, "mm", mm)
        seen: list[torch.Tensor] = []
        with contextlib.ExitStack() as stack:
            if not lever_on:
                stack.enter_context(speed.off("dora_norm_cache"))
            for step in range(2):
                x = torch.randn(2, 32, 6, 6) if kind == "conv" else torch.randn(2, 5, 64)
                x.requires_grad_()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    y = checkpoint(layer, x.to(torch.bfloat16) if autocast else x, use_reentrant=reentrant)
                y.float().square().sum().backward()
                seen += [y.detach(), x.grad] + [p.grad.clone() for p in m.parameters() if p.requires_grad]
                opt.step()
                opt.zero_grad(set_to_none=True)
            seen += [p.detach().clone() for p in m.parameters() if p.requires_grad]
            # bitsandbytes' optimizers write the weights through .data: no version bump; D's values decide
            m.lora_down.weight.data.mul_(1.5)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                seen.append(layer(x.detach().to(torch.bfloat16) if autocast else x.detach()))
        monkeypatch.setattr(torch, "mm", real_mm)
        return seen, products

    on, products_on = run(True)
    off, products_off = run(False)
    assert len(on) == len(off) > 8 and all(torch.equal(a, b) for a, b in zip(on, off, strict=True))
    # two steps: once each, against forward and recompute each; then the changed D is not served from the cache
    assert (products_on, products_off) == (3, 5)
