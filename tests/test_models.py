"""Reading base models: headers, detection from tensor shapes, layout maps, loading files and folders."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from lorafw.errors import ModelError
from lorafw.models.detect import ModelInfo, classify, detect
from lorafw.models.header import read_header
from lorafw.models.ldm_layout import UNetLayout, unet_to_original, vae_to_original
from lorafw.models.load import check_arch, inspect_base_model, load_components, load_vae

REAL_SD15_UNET = dict(
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768, attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",), up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
)
REAL_SDXL_UNET = dict(
    block_out_channels=(320, 640, 1280), layers_per_block=2, cross_attention_dim=2048, attention_head_dim=[5, 10, 20],
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=[1, 2, 10],
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
REAL_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def meta(cls, **cfg):
    with torch.device("meta"):
        return cls(**cfg)


# -- header ------------------------------------------------------------------------------------------
def test_header_reads_names_shapes_and_metadata(tiny_model):
    h = read_header(tiny_model)
    assert h.tensors["model.diffusion_model.input_blocks.0.0.weight"].shape == (32, 4, 3, 3)
    assert h.metadata == {"format": "pt"}


def test_truncated_and_corrupt_files_are_clear_errors(tmp_path, tiny_model):
    data = tiny_model.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="truncated"):
        read_header(cut)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"<html>404 Not Found</html>" * 10)
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        read_header(junk)
    bad_json = tmp_path / "bad.safetensors"
    bad_json.write_bytes(struct.pack("<Q", 10) + b"{not json}" + b"\0" * 10)
    with pytest.raises(ModelError, match="header is corrupt"):
        read_header(bad_json)
    tiny = tmp_path / "empty.safetensors"
    tiny.write_bytes(b"\1\2")
    with pytest.raises(ModelError, match="download is probably incomplete"):
        read_header(tiny)


# -- layout maps (checked against diffusers' own converters) --------------------------------------------
@pytest.mark.parametrize("cfg", [REAL_SD15_UNET, REAL_SDXL_UNET], ids=["sd15", "sdxl"])
def test_unet_layout_round_trips_through_diffusers(cfg):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

    unet = meta(UNet2DConditionModel, **cfg)
    keys = list(unet.state_dict())
    lay = UNetLayout.from_config(dict(unet.config))
    ldm = {"model.diffusion_model." + unet_to_original(k, lay): torch.zeros(1) for k in keys}
    assert set(convert_ldm_unet_checkpoint(ldm, dict(unet.config))) == set(keys)


def test_sdxl_original_names_match_the_reference_trainers():
    from diffusers import UNet2DConditionModel

    lay = UNetLayout.from_config(dict(meta(UNet2DConditionModel, **REAL_SDXL_UNET).config))
    assert unet_to_original("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", lay) == "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    assert unet_to_original("mid_block.attentions.0.proj_in", lay) == "middle_block.1.proj_in"
    assert unet_to_original("up_blocks.0.attentions.2.proj_out", lay) == "output_blocks.2.1.proj_out"
    assert unet_to_original("down_blocks.0.resnets.1.conv1", lay) == "input_blocks.2.0.in_layers.2"
    assert unet_to_original("up_blocks.1.upsamplers.0.conv", lay) == "output_blocks.5.2.conv"


def test_vae_layout_round_trips_through_diffusers():
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    vae = meta(AutoencoderKL, **REAL_VAE)
    sd = vae.state_dict()
    ldm = {}
    for k, t in sd.items():
        nk = "first_stage_model." + vae_to_original(k, 4)
        ldm[nk] = torch.zeros(tuple(t.shape) + ((1, 1) if ".mid.attn_1." in nk and t.ndim == 2 else ()))
    back = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert set(back) == set(sd) and all(back[k].shape == sd[k].shape for k in sd)


# -- detection --------------------------------------------------------------------------------------
def real_sd15_shapes() -> dict[str, tuple[int, ...]]:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = meta(UNet2DConditionModel, **REAL_SD15_UNET)
    lay = UNetLayout.from_config(dict(unet.config))
    shapes = {"model.diffusion_model." + unet_to_original(k, lay): tuple(v.shape) for k, v in unet.state_dict().items()}
    for k, v in meta(AutoencoderKL, **REAL_VAE).state_dict().items():
        nk = "first_stage_model." + vae_to_original(k, 4)
        shapes[nk] = tuple(v.shape) + ((1, 1) if ".mid.attn_1." in nk and v.ndim == 2 else ())
    with torch.device("meta"):
        te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12))
    for k, v in te.state_dict().items():
        shapes["cond_stage_model.transformer.text_model." + k.removeprefix("text_model.")] = tuple(v.shape)
    return shapes


def test_detects_real_sd15_dimensions_from_shapes():
    info = detect(real_sd15_shapes())
    u = info.unet
    assert info.arch == "sd15"
    assert u["block_out_channels"] == [320, 640, 1280, 1280] and u["layers_per_block"] == 2
    assert u["cross_attention_dim"] == 768 and u["attention_head_dim"] == 8 and not u["use_linear_projection"]
    assert u["down_block_types"] == list(REAL_SD15_UNET["down_block_types"])
    assert info.vae["block_out_channels"] == [128, 256, 512, 512] and info.vae["scaling_factor"] == 0.18215
    te = info.text_encoders[0]
    assert (te["hidden_size"], te["num_hidden_layers"], te["num_attention_heads"], te["intermediate_size"], te["vocab_size"]) == (768, 12, 12, 3072, 49408)
    assert 850e6 < info.unet_params < 870e6  # SD1.5's UNet: 859.5M parameters


def test_detects_the_tiny_model_through_the_same_path(tiny_model, tiny_parts):
    info = inspect_base_model(tiny_model)
    assert info.arch == "sd15"
    for key in ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types", "up_block_types"):
        assert list(info.unet[key]) == list(tiny_parts["unet"].config[key]) if isinstance(info.unet[key], list) else info.unet[key] == tiny_parts["unet"].config[key]


@pytest.mark.parametrize(
    "keys,message",
    [
        (["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"], "this is a LoRA/LyCORIS file, not a base model"),
        (["encoder.down.0.block.0.conv1.weight", "decoder.up.0.block.0.conv1.weight"], "this is a VAE file"),
        (["down_blocks.0.resnets.0.conv1.weight"], "lone diffusers UNet file"),
        (["model.diffusion_model.input_blocks.0.0.weight", "cond_stage_model.model.token_embedding.weight"], "SD2.x"),
        (["model.diffusion_model.double_blocks.0.img_attn.qkv.weight"], "SD3/Flux"),
        (["foo.bar"], "no Stable Diffusion UNet"),
    ],
)
def test_what_a_non_sd15_file_is_gets_named(keys, message):
    with pytest.raises(ModelError, match=message):
        classify({k: (1,) for k in keys})


def test_sdxl_is_recognised_and_refused_for_an_sd15_config():
    assert classify({"model.diffusion_model.input_blocks.0.0.weight": (320, 4, 3, 3), "model.diffusion_model.label_emb.0.0.weight": (1280, 2816), "conditioner.embedders.1.model.positional_embedding": (77, 1280)}) == "sdxl"
    info = ModelInfo(arch="sdxl", unet={"cross_attention_dim": 2048}, vae=None, text_encoders=[{}, {}], unet_params=2_567_000_000)
    with pytest.raises(ModelError) as e:
        check_arch(info, "sd15", "/models/pony.safetensors")
    assert "is an SDXL (UNet 2567.0M parameters, cross-attention width 2048, 2 text encoders) checkpoint" in str(e.value)
    assert "base_model=sdxl (or +recipe=pdxl)" in str(e.value)


def test_a_lora_given_as_base_model_fails_early(tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "my_lora.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(p))
    with pytest.raises(ModelError, match="my_lora.safetensors: this is a LoRA"):
        inspect_base_model(p)


def test_unet_only_checkpoint_is_refused(tmp_path, tiny_model):
    from safetensors.torch import load_file, save_file

    sd = {k: v for k, v in load_file(str(tiny_model)).items() if not k.startswith("cond_stage_model.")}
    p = tmp_path / "unet_only.safetensors"
    save_file(sd, str(p))
    with pytest.raises(ModelError, match="has 0 of its 1 text encoder"):
        inspect_base_model(p)


# -- loading ------------------------------------------------------------------------------------------
def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_single_file_and_diffusers_folder_load_the_same_weights(tiny_model, tiny_diffusers, tiny_parts):
    a = load_components(tiny_model, expected_arch="sd15")
    b = load_components(tiny_diffusers, expected_arch="sd15")
    for name in ("unet", "vae"):
        assert_same_weights(getattr(a, name), tiny_parts[name])
        assert_same_weights(getattr(b, name), tiny_parts[name])
    assert_same_weights(a.text_encoders[0], tiny_parts["text_encoder"])
    assert_same_weights(b.text_encoders[0], tiny_parts["text_encoder"])
    assert not any(p.requires_grad for p in a.unet.parameters())


def test_folder_detection_reads_configs(tiny_diffusers):
    assert inspect_base_model(tiny_diffusers).arch == "sd15"
    cfg = json.loads((tiny_diffusers / "unet" / "config.json").read_text())
    assert cfg["cross_attention_dim"] == 32


def test_external_vae_from_a_file_or_a_folder(tmp_path, tiny_model, tiny_diffusers, tiny_parts):
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from lorafw.models.tiny import TINY_VAE

    torch.manual_seed(5)
    other = AutoencoderKL(**TINY_VAE)
    standalone = {vae_to_original(k, 4): v for k, v in other.state_dict().items()}  # like sdxl_vae.safetensors: no prefix
    standalone = {k: (v[:, :, None, None] if ".mid.attn_1." in f".{k}" and v.ndim == 2 else v) for k, v in standalone.items()}
    f = tmp_path / "vae.safetensors"
    save_file({k: v.contiguous() for k, v in standalone.items()}, str(f))
    assert_same_weights(load_vae(f, "sd15"), other)
    c = load_components(tiny_model, vae_path=f, expected_arch="sd15")
    assert_same_weights(c.vae, other)
    assert_same_weights(load_vae(tiny_diffusers, "sd15"), tiny_parts["vae"])
