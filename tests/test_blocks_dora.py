"""kohya's block-wise numbering and lr weights (networks/lora.py), and DoRA as each UI computes it."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lorafw.config.spec import NetworkSpec
from lorafw.errors import ConfigError
from lorafw.config import blocks
from lorafw.network.dora import decomposed, patched


@pytest.mark.parametrize("name,arch,idx", [
    ("lora_unet_down_blocks_0_resnets_0_conv1", "sd15", 1),
    ("lora_unet_down_blocks_0_attentions_1_proj_in", "sd15", 2),
    ("lora_unet_down_blocks_0_downsamplers_0_conv", "sd15", 3),
    ("lora_unet_down_blocks_3_resnets_1_conv2", "sd15", 11),
    ("lora_unet_mid_block_attentions_0_proj_out", "sd15", 12),
    ("lora_unet_up_blocks_0_resnets_0_conv1", "sd15", 13),
    ("lora_unet_up_blocks_1_upsamplers_0_conv", "sd15", 18),
    ("lora_unet_up_blocks_3_attentions_2_proj_out", "sd15", 24),
    ("lora_te_text_model_encoder_layers_0_mlp_fc1", "sd15", -1),
    ("lora_unet_time_embed_0", "sdxl", 0),
    ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", "sdxl", 5),
    ("lora_unet_input_blocks_8_0_conv1", "sdxl", 9),
    ("lora_unet_middle_block_1_proj_in", "sdxl", 11),
    ("lora_unet_output_blocks_0_1_proj_in", "sdxl", 13),
    ("lora_unet_output_blocks_8_0_skip_connection", "sdxl", 21),
    ("lora_unet_out_2", "sdxl", 22),
    ("lora_te1_text_model_encoder_layers_0_mlp_fc1", "sdxl", -1),
])
def test_block_index_is_kohyas(name, arch, idx):
    assert blocks.block_index(name, arch) == idx


def test_block_counts():
    assert blocks.n_blocks("sd15") == 25 and blocks.n_blocks("sdxl") == 23
    assert blocks.counts("sd15") == (12, 1) and blocks.counts("sdxl") == (9, 3)


def test_presets_are_kohyas_curves():
    n = 12
    assert blocks.preset("cosine", n) == pytest.approx([math.sin(math.pi * (i / 11) / 2) for i in reversed(range(n))])
    assert blocks.preset("sine+0.5", n) == pytest.approx([math.sin(math.pi * (i / 11) / 2) + 0.5 for i in range(n)])
    assert blocks.preset("linear", n)[0] == 0 and blocks.preset("linear", n)[-1] == 1
    assert blocks.preset("reverse_linear", n)[0] == 1 and blocks.preset("zeros+0.25", n) == [0.25] * n
    with pytest.raises(ValueError):
        blocks.preset("wave", n)


def test_lr_weights_pad_cut_threshold_and_sdxl_ends():
    w = blocks.lr_weights("sd15", [0.1, 0.5], None, "1," * 13, 0.2)
    assert len(w) == 25
    assert w[:3] == [0.0, 0.5, 1.0]  # 0.1 ≤ threshold → 0; padded with 1.0 (kohya)
    assert w[12] == 1.0 and w[13:] == [1.0] * 12  # mid defaults to 1; the up list is cut to 12
    x = blocks.lr_weights("sdxl", None, [0, 1, 2], None, 0.0)
    assert len(x) == 23 and x[0] == 1.0 and x[22] == 1.0 and x[10:13] == [0.0, 1.0, 2.0]
    assert blocks.lr_weights("sd15", None, None, None, 0.0) is None
    with pytest.raises(ConfigError, match="network.down_lr_weight"):
        blocks.lr_weights("sd15", "bogus", None, None, 0.0)


def test_plan_checks_lengths_and_removes_zero_lr_blocks():
    spec = NetworkSpec(dim=8, alpha=4.0, conv_dim=4, conv_alpha=2.0, algo="locon", down_lr_weight="zeros", up_lr_weight=None)
    p = blocks.plan("sd15", spec)
    assert p.dims[:12] == [0] * 12 and p.conv_dims[:12] == [0] * 12 and p.dims[12:] == [8] * 13
    assert p.rank_alpha(5, True, (9, 9.0)) == (0, 2.0) and p.rank_alpha(20, False, (9, 9.0)) == (8, 4.0)
    problems = blocks.check("sdxl", dataclasses.replace(spec, block_dims=(4,) * 25))
    assert problems == ["network.block_dims: sdxl has 23 blocks (kohya's order), got 25 values"]
    assert blocks.plan("sd15", NetworkSpec()).dims is None  # nothing block-wise: network.dim everywhere


# -- DoRA per reader --------------------------------------------------------------------------------------
W = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
D = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
M = torch.tensor([[10.0], [1.0]])  # LyCORIS's (out, 1) dora_scale


def test_exact_is_lycoris_weight_decompose():
    from lycoris.functional.general import weight_decompose

    torch.manual_seed(0)
    for shape in ((8, 6), (8, 4, 3, 3)):
        w, d = torch.randn(shape), torch.randn(shape) * 0.1
        m = torch.rand(shape[0], *[1] * (len(shape) - 1)) + 0.5
        torch.testing.assert_close(decomposed(w, d, m, "exact"), weight_decompose(w + d, m, 1.0, True, backend="torch"))


def test_comfyui_divides_by_the_original_weight_norm():
    merged = W + D  # rows [3, 5] and [1, 2]
    want = merged * torch.tensor([[10 / 5.0], [1 / 2.0]])  # ‖W‖ rows: 5 and 2
    torch.testing.assert_close(decomposed(W, D, M, "comfyui"), want)
    exact = merged * torch.tensor([[10 / math.sqrt(34)], [1 / math.sqrt(5)]])
    torch.testing.assert_close(decomposed(W, D, M, "exact"), exact)


def test_a1111_normalises_per_input_column():
    merged = W + D  # columns [3, 1] and [5, 2]
    cols = torch.tensor([[math.sqrt(10), math.sqrt(29)]])
    want = merged * (M / cols)  # (out, 1) / (1, in) broadcasts to an (out, in) matrix
    torch.testing.assert_close(decomposed(W, D, M, "a1111"), want)


def test_ui_weight_interpolates_and_zero_is_the_base():
    for ui in ("comfyui", "a1111", "exact"):
        full = decomposed(W, D, M, ui)
        torch.testing.assert_close(patched(W, D, 0.5, M, ui), W + 0.5 * (full - W))
        assert torch.equal(patched(W, D, 0.0, M, ui), W)
    torch.testing.assert_close(patched(W, D, 0.7), W + 0.7 * D)  # plain LoRA: every reader adds w·ΔW


# -- network settings refused with the key, the value and the fix ----------------------------------------
@pytest.mark.parametrize("overrides,message", [
    (["network.algo=lora", "network.factor=4"], "network.factor: a LoKr setting, but network.algo=lora"),
    (["network=ia3", "network.dora_wd=true"], "network.dora_wd: LyCORIS has no weight-decomposed ia3"),
    (["network=ia3", "network.rank_dropout=0.1"], "IA3 learns one scale per channel"),
    (["network=glora", "network.loraplus_lr_ratio=16"], "network.loraplus_lr_ratio: LoRA+ speeds up lora_up"),
    (["network=loha", "network.conv_alpha=null"], "network.conv_alpha: network.conv_dim=4 needs an alpha too"),
    (["network.train_on_input=true"], "network.train_on_input: an IA3 setting"),
    (["network.block_dims=[4,4]"], "network.block_dims: sd15 has 25 blocks"),
    (["network.down_lr_weight=wave"], "network.down_lr_weight: 'wave' is not a list of numbers"),
    (["optimizer.stop_text_encoder_training=2.5"], "optimizer.stop_text_encoder_training: 2.5 is neither"),
])
def test_network_settings_refused_with_the_fix(overrides, message):
    from lorafw.config.compose import compose_dict
    from lorafw.config.validate import spec_from_dict

    with pytest.raises(ConfigError) as e:
        spec_from_dict(compose_dict("sd15_character", ["base_model.path=/m", "dataset.root=/d", *overrides]),
                       check_paths=False)
    assert any(p.startswith(message) or message in p for p in e.value.problems), e.value.problems


def test_block_wise_keys_on_a_family_without_unet_blocks_are_refused():
    """Anima's DiT has none of kohya's UNet blocks: a block-wise key is refused by name, not ignored."""
    from lorafw.config.blocks import check

    problems = check("anima", NetworkSpec(block_dims=(4,) * 23, mid_lr_weight="1,1,1"))
    assert [p.split(":")[0] for p in problems] == ["network.block_dims", "network.mid_lr_weight"]
    assert "base_model.arch=anima" in problems[0]
    assert check("anima", NetworkSpec()) == []
