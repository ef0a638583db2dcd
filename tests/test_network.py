"""Adapter targets, kohya/LyCORIS key names, and the file round trip."""

from __future__ import annotations

import re

import pytest
import torch

from lorafw.config.spec import NetworkSpec
from lorafw.models.tiny import build_sd15
from lorafw.network.adapter import ADAPTER, Network, layers_of
from lorafw.network.targets import (
    UNET_ATTN_CONTAINERS,
    UNET_CONV_CONTAINERS,
    Layer,
    kohya_name,
    select,
    te_module_path,
    unet_namer,
)

LORA = NetworkSpec("lora", 4, 2.0, False, 0.0)
LOCON = NetworkSpec("locon", 4, 2.0, False, 0.0, conv_dim=2, conv_alpha=1.0)
DORA = NetworkSpec("locon", 4, 2.0, True, 0.0, conv_dim=2, conv_alpha=1.0)

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


def net(spec: NetworkSpec, train_te: bool = True) -> tuple[Network, dict]:
    parts = build_sd15(0)
    return Network(spec, parts["unet"], [parts["text_encoder"]], ["lora_te"], train_te, unet_namer(None)), parts


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


def test_no_text_encoder_adapters_when_it_is_frozen():
    n, _ = net(LORA, train_te=False)
    assert n.entries and all(e.part == "unet" for e in n.entries)
    assert not any(k.startswith("lora_te") for k in n.kohya_state_dict())


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


@pytest.mark.parametrize("spec", [LORA, LOCON, DORA], ids=["lora", "locon", "dora"])
def test_file_round_trip_restores_the_adapted_outputs(spec):
    n, parts = net(spec)
    torch.manual_seed(1)
    with torch.no_grad():
        for e in n.entries:
            e.module.lora_B[ADAPTER].weight.normal_(0, 0.05)
    sd = n.kohya_state_dict(torch.float32)
    m, parts2 = net(spec)
    m.load_kohya_state_dict(sd)
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32)
    with torch.no_grad():
        assert torch.allclose(parts["unet"](x, t, c).sample, parts2["unet"](x, t, c).sample, atol=1e-6)
    with pytest.raises(KeyError):
        m.load_kohya_state_dict({k: v for k, v in sd.items() if "proj_in" not in k})
