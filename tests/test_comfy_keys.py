"""ComfyUI's Anima LoRA key map, restated (lorafw/interop/comfy_keys.py), on synthetic names as Anima's files hold
them; and, once the Anima family is importable, every name its namer gives the tiny model's layers."""

from __future__ import annotations

import pytest

from lorafw.interop.comfy_keys import (dit_lora_keys, dit_state_keys, lora_modules, not_loaded, te_lora_keys,
                                       unet_prefix)

# a DiT file's names as Anima ships them (`net.` + Cosmos-Predict2's MiniTrainDIT names, the LLM adapter inside)
DIT = ["net.x_embedder.proj.1.weight", "net.t_embedder.1.linear_1.weight", "net.t_embedding_norm.weight",
       "net.blocks.0.self_attn.q_proj.weight", "net.blocks.0.self_attn.q_norm.weight",
       "net.blocks.0.cross_attn.k_proj.weight", "net.blocks.0.mlp.layer1.weight", "net.blocks.0.mlp.layer2.weight",
       "net.blocks.0.adaln_modulation_self_attn.1.weight", "net.final_layer.linear.weight",
       "net.llm_adapter.blocks.0.self_attn.q_proj.weight", "net.llm_adapter.blocks.0.mlp.0.weight",
       "net.llm_adapter.blocks.0.mlp.0.bias", "net.llm_adapter.out_proj.weight", "net.pos_embedder.seq"]
QWEN3 = ["model.embed_tokens.weight", "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_norm.weight",
         "model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.down_proj.weight", "model.norm.weight"]


def test_the_dit_prefix_is_comfyuis_choice():
    assert unet_prefix(DIT) == "net."
    assert unet_prefix(["net.a.weight"] * 5) == "model."  # more than 5 names, or the fallback
    assert unet_prefix([f"model.diffusion_model.b{i}.weight" for i in range(6)] + [f"net.b{i}" for i in range(9)]) == (
        "net.")  # the most common candidate
    assert unet_prefix([f"net.b{i}" for i in range(6)] + [f"module.backbone.b{i}" for i in range(6)]) == "net."  # ties: first
    assert dit_state_keys(DIT)[0] == "diffusion_model.x_embedder.proj.1.weight"
    unprefixed = [n[len("net."):] for n in DIT]
    assert dit_state_keys(unprefixed) == dit_state_keys(DIT)  # no `model.` names: all are kept as they are
    assert "diffusion_model.stray.weight" not in dit_state_keys(DIT + ["stray.weight"])  # dropped next to net.


def test_kohya_and_generic_forms_of_every_dit_weight():
    m = dit_lora_keys(DIT)
    assert m["lora_unet_blocks_0_self_attn_q_proj"] == "diffusion_model.blocks.0.self_attn.q_proj.weight"
    assert m["lora_unet_llm_adapter_blocks_0_mlp_0"] == "diffusion_model.llm_adapter.blocks.0.mlp.0.weight"
    assert m["lora_unet_blocks_0_adaln_modulation_self_attn_1"] == "diffusion_model.blocks.0.adaln_modulation_self_attn.1.weight"
    assert m["diffusion_model.blocks.0.mlp.layer2"] == "diffusion_model.blocks.0.mlp.layer2.weight"
    assert m["diffusion_model.llm_adapter.blocks.0.mlp.0.bias"] == "diffusion_model.llm_adapter.blocks.0.mlp.0.bias"
    assert "lora_unet_llm_adapter_blocks_0_mlp_0_bias" not in m and "lora_unet_pos_embedder_seq" not in m
    assert "lora_unet_net_blocks_0_self_attn_q_proj" not in m  # the file's prefix is not part of the name


def test_qwen3_lora_te_names_are_sd_scripts_names():
    m = te_lora_keys(QWEN3)
    assert m["lora_te_layers_0_self_attn_q_proj"] == "qwen3_06b.transformer.model.layers.0.self_attn.q_proj.weight"
    assert m["lora_te_layers_0_mlp_down_proj"] == "qwen3_06b.transformer.model.layers.0.mlp.down_proj.weight"
    assert m["text_encoders.qwen3_06b.transformer.model.layers.0.mlp.gate_proj"].endswith("gate_proj.weight")
    assert m["text_encoders.transformer.model.norm"] == "qwen3_06b.transformer.model.norm.weight"
    assert "lora_te_model_layers_0_self_attn_q_proj" not in m  # a Qwen3ForCausalLM name: ComfyUI skips it
    assert "lora_te_lm_head" not in te_lora_keys(QWEN3 + ["lm_head.weight"])  # outside `model.`: generic forms only


def test_a_file_is_checked_module_by_module():
    file = ["lora_unet_blocks_0_self_attn_q_proj.lora_down.weight", "lora_unet_blocks_0_self_attn_q_proj.lora_up.weight",
            "lora_unet_blocks_0_self_attn_q_proj.alpha", "lora_te_layers_0_self_attn_q_proj.lora_down.weight",
            "lora_unet_blocks_0_self_attn_v_proj.lora_down.weight", "lora_te_model_layers_0_mlp_up_proj.alpha",
            "diffusion_model.blocks.0.mlp.layer1.lora_A.weight", "diffusion_model.blocks.0.mlp.layer1.lora_B.weight"]
    assert lora_modules(file[:3]) == {"lora_unet_blocks_0_self_attn_q_proj"}
    assert not_loaded(file, DIT, QWEN3) == ["lora_te_model_layers_0_mlp_up_proj", "lora_unet_blocks_0_self_attn_v_proj"]
    assert not_loaded(file[:4], DIT) == ["lora_te_layers_0_self_attn_q_proj"]  # no text encoder given


def test_every_layer_the_anima_namer_names_is_in_comfyuis_map(tmp_path):
    """The Anima family's namer (lorafw/archs/anima: dit.namer, ARCH.denoiser_namer) against ComfyUI's map of the tiny
    DiT file's own names: every Linear of the denoiser gets a name ComfyUI loads. Skipped until lorafw.archs.anima
    is importable; written against the names its `anima` branch has (tiny.write, ARCH.inspect, dit.split_file,
    files.dit_prefix, dit.build)."""
    anima = pytest.importorskip("lorafw.archs.anima")
    import torch
    from safetensors import safe_open

    from lorafw.archs.anima import dit, files, tiny

    paths = tiny.write(tmp_path)
    with safe_open(str(paths.dit), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
    info = anima.ARCH.inspect(str(paths.dit))
    dit_state, adapter_state = dit.split_file(state, files.dit_prefix(state))
    denoiser = dit.build(info, dit_state, adapter_state, str(paths.dit))
    name = anima.ARCH.denoiser_namer(denoiser)
    linears = [p for p, m in denoiser.named_modules() if isinstance(m, torch.nn.Linear)]
    assert linears and any(p.startswith("llm_adapter.") for p in linears)
    comfy = dit_lora_keys(state)
    assert [name(p) for p in linears if name(p) not in comfy] == []
