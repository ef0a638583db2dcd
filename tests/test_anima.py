"""Anima (lorafw/archs/anima): the tiny model in the layouts users download (ComfyUI's split files), recognised from
its header, loaded into diffusers' Cosmos DiT + Anima conditioner, Qwen3 and the Qwen-Image VAE, with sd-scripts'
text states, latents, LoRA names and sampler; and trained through the CLI."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lorafw.archs.anima import ARCH, tiny
from lorafw.archs.anima import dit as dit_mod
from lorafw.archs.anima.codec import from_comfyui, to_comfyui
from lorafw.archs.anima.files import role
from lorafw.config.prompts import SamplePrompt
from lorafw.config.spec import NetworkSpec
from lorafw.errors import ConfigError, ModelError
from lorafw.models.header import read_header
from lorafw.network.adapter import Network
from lorafw.network.apply import WeightPatcher, module_names
from lorafw.network.targets import text_encoder_names


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tiny.AnimaFiles:
    return tiny.write(tmp_path_factory.mktemp("anima"))


def spec_for(f: tiny.AnimaFiles, **base: object) -> SimpleNamespace:
    bm = dict(path=str(f.dit), text_encoder=str(f.text_encoder), vae=str(f.vae), llm_adapter=None) | base
    return SimpleNamespace(base_model=SimpleNamespace(**bm), train=SimpleNamespace(discrete_flow_shift=1.0))


def load(f: tiny.AnimaFiles, **base: object):
    spec = spec_for(f, **base)
    return ARCH.load(spec, ARCH.inspect(spec.base_model.path), None)


@pytest.fixture(scope="module")
def models(files):
    return load(files)


# -- recognising the files ---------------------------------------------------------------------------------------

def test_inspect_describes_the_dit_from_its_header(files):
    info = ARCH.inspect(str(files.dit))
    assert (info.blocks, info.channels, info.heads, info.patch, info.in_channels) == (2, 64, 4, 2, 16)
    assert (info.text_dim, info.adapter, info.adapter_layers, info.prefix) == (64, True, 2, "net.")
    assert info.prediction.prediction == "flow" and "rectified-flow" in info.prediction.source
    assert info.describe() == "Anima (2 blocks × 64, 4 heads, LLM adapter 2 layers)"
    full = tiny.FULL  # the real sizes give Anima's real description (from the shapes alone)
    assert (full.blocks, full.channels, full.heads) == (28, 2048, 16)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_the_dit_is_read_without_net_prefix(files, models, tmp_path, prefix):
    """ComfyUI and sd-scripts read the DiT without `net.` too (and inside a full ComfyUI checkpoint)."""
    state = {prefix + k.removeprefix("net."): v for k, v in load_file(str(files.dit)).items()}
    path = tmp_path / "dit.safetensors"
    save_file(state, str(path))
    info = ARCH.inspect(str(path))
    assert info.prefix == prefix and info.blocks == 2 and info.adapter
    ours, theirs = load(files, path=str(path)).denoiser.state_dict(), models.denoiser.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def cond_for(m, captions):
    return ARCH.conditioning(ARCH.encode_text(m, captions, None), None, [], [])


def fake(path: Path, keys: list[str]) -> Path:
    save_file({k: torch.zeros(1) for k in keys}, str(path))
    return path


@pytest.mark.parametrize("which, says", [
    ("text_encoder", "is the Qwen3 text encoder, not the Anima DiT; put it in base_model.text_encoder"),
    ("vae", "is the Qwen-Image VAE, not the Anima DiT; put it in base_model.vae"),
])
def test_a_side_file_given_as_the_dit_is_named_with_its_key(files, which, says):
    with pytest.raises(ModelError, match=re.escape(says)):
        ARCH.inspect(str(getattr(files, which)))


def test_other_checkpoints_given_as_the_dit_are_named(tmp_path, tiny_model):
    with pytest.raises(ModelError, match=r"is an SD1\.5 checkpoint, not the Anima DiT, which the SD1\.5 family trains: "
                                         r"use base_model=sd15 \(or \+recipe=sd15_character\)"):
        ARCH.inspect(str(tiny_model))
    sdxl = fake(tmp_path / "xl.safetensors", ["model.diffusion_model.input_blocks.0.0.weight",
                                              "model.diffusion_model.label_emb.0.0.weight"])
    with pytest.raises(ModelError, match=r"is an SDXL checkpoint.*use base_model=sdxl \(or \+recipe=pdxl\)"):
        ARCH.inspect(str(sdxl))
    lora = fake(tmp_path / "lora.safetensors", ["lora_unet_blocks_0_self_attn_q_proj.lora_down.weight"])
    with pytest.raises(ModelError, match="is a LoRA/LyCORIS file.*base model it was made for"):
        ARCH.inspect(str(lora))
    sd_vae = fake(tmp_path / "sdvae.safetensors", ["encoder.down.0.block.0.conv1.weight"])
    with pytest.raises(ModelError, match="is a Stable Diffusion VAE"):
        ARCH.inspect(str(sd_vae))
    other = fake(tmp_path / "other.safetensors", ["weight"])
    with pytest.raises(ModelError, match="is not the Anima DiT: it holds none of Anima's tensors .*Anima needs the DiT "
                                         "in base_model.path"):
        ARCH.inspect(str(other))
    with pytest.raises(ModelError, match="is a folder"):
        ARCH.inspect(str(tmp_path))
    with pytest.raises(ModelError, match="does not exist"):
        ARCH.inspect(str(tmp_path / "missing.safetensors"))
    (tmp_path / "old.ckpt").write_bytes(b"x")
    with pytest.raises(ModelError, match="Anima's files are .safetensors"):
        ARCH.inspect(str(tmp_path / "old.ckpt"))


def test_a_cosmos_dit_for_other_latents_is_refused(files, tmp_path):
    state = load_file(str(files.dit))
    state["net.x_embedder.proj.1.weight"] = torch.zeros(64, 4 * 5)  # 4-channel latents + mask
    state["net.final_layer.linear.weight"] = torch.zeros(4 * 4 * 4, 64)  # patch 2 × 2, 4 channels: not 16
    save_file(state, str(tmp_path / "cosmos.safetensors"))
    with pytest.raises(ModelError, match="a Cosmos DiT for 4-channel latents"):
        ARCH.inspect(str(tmp_path / "cosmos.safetensors"))


def test_each_side_file_is_checked_for_its_role(files, tmp_path):
    with pytest.raises(ModelError, match=r"base_model.text_encoder=.* is the Qwen-Image VAE, not the Qwen3 text "
                                         r"encoder; put it in base_model.vae"):
        load(files, text_encoder=str(files.vae))
    with pytest.raises(ModelError, match=r"base_model.vae=.* is the Anima DiT, not the Qwen-Image VAE; put it in "
                                         r"base_model.path"):
        load(files, vae=str(files.dit))
    with pytest.raises(ModelError, match=r"base_model.llm_adapter=.* is the Qwen3 text encoder, not Anima's LLM "
                                         r"adapter"):
        load(files, llm_adapter=str(files.text_encoder))


def test_missing_side_files_are_named_with_what_to_give(files):
    with pytest.raises(ConfigError) as e:
        load(files, text_encoder=None, vae=None)
    text = str(e.value)
    assert "base_model.text_encoder: Anima needs its Qwen3-0.6B text encoder" in text
    assert "qwen_3_06b_base.safetensors" in text
    assert "base_model.vae: Anima needs the Qwen-Image VAE" in text and "qwen_image_vae.safetensors" in text


def test_a_dit_without_adapter_needs_the_adapter_file(files, models, tmp_path):
    state = load_file(str(files.dit))
    dit_only = {k: v for k, v in state.items() if not k.startswith("net.llm_adapter.")}
    adapter = {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.llm_adapter.")}
    save_file(dit_only, str(tmp_path / "dit.safetensors"))
    save_file(adapter, str(tmp_path / "adapter.safetensors"))
    info = ARCH.inspect(str(tmp_path / "dit.safetensors"))
    assert not info.adapter and "no LLM adapter" in info.describe()
    assert role(read_header(tmp_path / "adapter.safetensors")) == "llm_adapter"
    with pytest.raises(ConfigError, match="base_model.llm_adapter: .* is a DiT without the LLM adapter"):
        load(files, path=str(tmp_path / "dit.safetensors"))
    m = load(files, path=str(tmp_path / "dit.safetensors"), llm_adapter=str(tmp_path / "adapter.safetensors"))
    ours, theirs = m.denoiser.state_dict(), models.denoiser.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


# -- loading -------------------------------------------------------------------------------------------------------

def test_bf16_files_load_in_their_dtype_and_train_in_the_runs(tmp_path, models):
    """Anima ships bf16: the DiT and Qwen3 load as the file's tensors, with no fp32 copy of the 2B model (the
    trainer's cast_frozen gives them the run's dtype); the VAE is fp32 for encoding."""
    from lorafw.trainers.setup import cast_frozen

    f = tiny.write(tmp_path, dtype=torch.bfloat16)
    m = load(f)
    for part in (m.denoiser, *m.text_encoders):
        assert {p.dtype for p in part.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in m.vae.parameters()} == {torch.float32}
    assert read_header(f.dit).tensors["net.blocks.0.mlp.layer1.weight"].dtype == "BF16"
    cast_frozen(SimpleNamespace(device=torch.device("cpu"), wdtype=torch.float32), m.denoiser)  # a fp32 run
    assert {p.dtype for p in m.denoiser.parameters()} == {torch.float32}


def test_every_tensor_of_the_dit_file_lands_in_the_denoiser(files, models):
    """Each tensor of the file (but the RoPE tables diffusers computes) is one of the denoiser's, unchanged, and
    the denoiser has no tensor the file lacks."""
    state = load_file(str(files.dit))
    dit, adapter = dit_mod.split_file(state, "net.")
    rope = {k for k in dit if k in dit_mod.ROPE_BUFFERS}
    assert rope == set(dit_mod.ROPE_BUFFERS)
    converted = dit_mod.to_diffusers({k: v for k, v in dit.items() if k not in rope})
    own = models.denoiser.dit.state_dict()
    assert set(converted) == set(own)
    assert all(torch.equal(own[k], v) for k, v in converted.items())
    own_adapter = models.denoiser.llm_adapter.state_dict()
    assert set(adapter) == set(own_adapter) and all(torch.equal(own_adapter[k], v) for k, v in adapter.items())
    assert models.denoiser.dit.config.num_layers == 2 and models.denoiser.dit.config.in_channels == 17
    assert all(not p.requires_grad for p in models.denoiser.parameters())
    assert {p.dtype for p in models.denoiser.parameters()} == {torch.float32}


def test_the_original_names_are_the_inverse_of_diffusers_converter():
    """to_original (which the tiny file and the LoRA names use) and diffusers' Cosmos-2 table agree on every tensor
    of a DiT with every kind of layer."""
    from diffusers import CosmosTransformer3DModel

    names = list(CosmosTransformer3DModel(num_attention_heads=2, attention_head_dim=12, num_layers=2,
                                          text_embed_dim=16, adaln_lora_dim=4, concat_padding_mask=False,
                                          in_channels=17, extra_pos_embed_type=None).state_dict())
    originals = {dit_mod.to_original(k): torch.zeros(1) for k in names}
    assert len(originals) == len(names)
    assert set(dit_mod.to_diffusers(originals)) == set(names)
    assert "blocks.1.adaln_modulation_cross_attn.2.weight" in originals and "final_layer.linear.weight" in originals


def test_the_vae_layout_round_trips_through_diffusers_converter(files):
    from diffusers import AutoencoderKLQwenImage

    names = list(AutoencoderKLQwenImage(base_dim=8).state_dict())
    comfy = {to_comfyui(k): torch.zeros(1) for k in names}
    assert set(from_comfyui(comfy)) == set(names)
    assert {"encoder.downsamples.0.residual.0.gamma", "decoder.upsamples.3.resample.1.weight", "conv1.weight",
            "decoder.head.2.weight", "encoder.middle.1.to_qkv.weight"} <= set(comfy)
    assert set(read_header(files.vae).tensors) == set(comfy)


def test_qwen3_is_read_from_comfyuis_single_file(files, models):
    te = models.text_encoders[0]
    state = load_file(str(files.text_encoder))
    assert all(k.startswith("model.") for k in state)
    own = te.state_dict()
    assert {k.removeprefix("model.") for k in state} == set(own)
    assert all(torch.equal(own[k.removeprefix("model.")], v) for k, v in state.items())
    assert te.config.num_hidden_layers == 2 and te.config.head_dim == 16 and te.config.num_key_value_heads == 2


def test_qwen3_and_the_vae_load_from_folders_too(files, models, tmp_path):
    """A transformers Qwen3 folder (config.json + weights, as sd-scripts reads one) and a diffusers VAE folder give
    the same parts as ComfyUI's single files."""
    from diffusers import AutoencoderKLQwenImage
    from transformers import Qwen3ForCausalLM

    te = models.text_encoders[0]
    lm = Qwen3ForCausalLM(te.config)
    lm.model.load_state_dict(te.state_dict())
    lm.save_pretrained(tmp_path / "qwen3")
    vae = AutoencoderKLQwenImage(**dict(models.vae.vae.config))
    vae.load_state_dict(models.vae.vae.state_dict())
    vae.save_pretrained(tmp_path / "model" / "vae")
    m = load(files, text_encoder=str(tmp_path / "qwen3"), vae=str(tmp_path / "model"))
    for ours, theirs in ((m.text_encoders[0], te), (m.vae, models.vae)):
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ModelError, match="base_model.text_encoder=.* is a folder without config.json"):
        load(files, text_encoder=str(tmp_path))


# -- text, latents, denoiser ---------------------------------------------------------------------------------------

def test_text_states_are_sd_scripts(models):
    """Qwen3's last hidden state over 512 tokens with the padding zeroed, its mask, T5's ids and mask (512 each)."""
    text = ARCH.encode_text(models, ["1girl, solo, red hair", ""], None)
    assert set(text) == {"prompt_embeds", "attn_mask", "t5_input_ids", "t5_attn_mask"}
    assert text["prompt_embeds"].shape == (2, 512, 64)
    assert all(text[k].shape == (2, 512) and not text[k].is_floating_point()
               for k in ("attn_mask", "t5_input_ids", "t5_attn_mask"))
    qwen, t5 = models.tokenizers
    n = len(qwen("1girl, solo, red hair")["input_ids"])
    assert text["attn_mask"][0].sum() == n and text["attn_mask"][1].sum() == 0
    states = text["prompt_embeds"]
    assert states[0, :n].abs().sum(-1).min() > 0 and states[0, n:].abs().max() == 0 and states[1].abs().max() == 0
    ids = t5("1girl, solo, red hair")["input_ids"]
    assert text["t5_input_ids"][0, :len(ids)].tolist() == ids and ids[-1] == 1  # </s>
    assert text["t5_input_ids"][1, 0] == 1 and text["t5_attn_mask"][1].sum() == 1  # "" is </s> alone


def test_conditioning_keeps_ids_integer(models):
    text = ARCH.encode_text(models, ["a"], None)
    text = {k: v.float() for k, v in text.items()}  # a cache or cast made them floating
    cond = ARCH.conditioning(text, None, [0], [False])
    assert cond["t5_input_ids"].dtype == torch.long


def test_denoise_returns_the_velocity_shape_and_feeds_rounded_sigma(models):
    cond = cond_for(models, ["a", "b"])
    x = torch.randn(2, 16, 6, 10)
    v = ARCH.denoise(models, x, torch.tensor([0.25, 0.75]), cond)
    assert v.shape == x.shape and torch.isfinite(v).all()

    seen = {}

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))

        def forward(self, x, t, **cond):
            seen["t"] = t
            return x

    sigma = torch.tensor([0.1234567, 0.987654])
    ARCH.denoise(replace(models, denoiser=Recorder()), x, sigma, cond)
    assert seen["t"].dtype == torch.bfloat16  # sd-scripts: (σ·1000) in the weight dtype, then / 1000
    assert torch.equal(seen["t"], (sigma * 1000).to(torch.bfloat16) / 1000)


def test_the_codec_normalises_the_mode_per_channel(models):
    codec = models.vae
    torch.manual_seed(0)
    px = torch.rand(2, 3, 48, 64) * 2 - 1
    dist = codec.encode(px).latent_dist
    mode = codec.vae.encode(px.unsqueeze(2)).latent_dist.mode().squeeze(2)
    mean = torch.tensor(codec.vae.config.latents_mean).view(1, 16, 1, 1)
    std = torch.tensor(codec.vae.config.latents_std).view(1, 16, 1, 1)
    assert dist.mean.shape == (2, 16, 6, 8) and dist.std.abs().max() == 0
    torch.testing.assert_close(dist.mean, (mode - mean) / std)
    assert torch.equal(dist.sample(), dist.mean)
    assert codec.config.scaling_factor == 1.0 and codec.dtype == torch.float32
    decoded = codec.decode(dist.mean).sample
    assert decoded.shape == px.shape
    torch.testing.assert_close(decoded, codec.vae.decode((dist.mean * std + mean).unsqueeze(2)).sample.squeeze(2))


# -- adapters --------------------------------------------------------------------------------------------------------

def network(m, train_te=False, train_llm_adapter=False, algo="lora", unet_lr=1.0):
    spec = NetworkSpec(algo=algo, dim=4, alpha=2.0, train_llm_adapter=train_llm_adapter)
    return Network(spec, m.denoiser, m.text_encoders, list(ARCH.te_prefixes), train_te,
                   ARCH.denoiser_namer(m.denoiser), arch=ARCH.name, train_unet=unet_lr > 0, targets=ARCH.targets,
                   te_names=text_encoder_names(ARCH, m.text_encoders))


DIT_LAYERS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_output_proj", "cross_attn_q_proj",
              "cross_attn_k_proj", "cross_attn_v_proj", "cross_attn_output_proj", "mlp_layer1", "mlp_layer2")
ADAPTER_LAYERS = tuple(f"{a}_{p}_proj" for a in ("self_attn", "cross_attn") for p in "qkvo") + ("mlp_0", "mlp_2")
QWEN3_LAYERS = tuple(f"self_attn_{p}_proj" for p in "qkvo") + tuple(f"mlp_{p}_proj" for p in ("gate", "up", "down"))


def test_adapters_go_where_sd_scripts_puts_them_under_its_names(files):
    """10 Linear layers per DiT block (the AdaLN modulation, embedders and final layer left out), the LLM
    adapter's 10 per block with train_llm_adapter, Qwen3's 7 per layer: named as networks/lora_anima.py names them."""
    m = load(files)
    net = network(m, train_te=True, train_llm_adapter=True)
    names = {e.part: set() for e in net.entries}
    for e in net.entries:
        names[e.part].add(e.file_name)
    assert names["unet"] == {f"lora_unet_blocks_{b}_{n}" for b in (0, 1) for n in DIT_LAYERS}
    assert names["llm_adapter"] == {f"lora_unet_llm_adapter_blocks_{b}_{n}" for b in (0, 1) for n in ADAPTER_LAYERS}
    assert names["te"] == {f"lora_te_layers_{b}_{n}" for b in (0, 1) for n in QWEN3_LAYERS}
    assert "lora_te_layers_0_mlp_gate_proj" in names["te"]
    # without train_llm_adapter the adapter has none; the names come from the file's Cosmos names
    assert {e.part for e in network(load(files)).entries} == {"unet"}
    file_modules = {k.removeprefix("net.").rsplit(".", 1)[0] for k in read_header(files.dit).tensors}
    assert {n.removeprefix("lora_unet_") for n in names["unet"] | names["llm_adapter"]} <= {
        f.replace(".", "_") for f in file_modules}


def test_the_llm_adapter_trains_at_its_own_learning_rate(files):
    m = load(files)
    net = network(m, train_llm_adapter=True)
    groups = {g["name"]: g for g in net.param_groups(1e-4, 0.0, 5e-5)}
    assert set(groups) == {"unet", "llm_adapter"} and groups["llm_adapter"]["lr"] == 5e-5
    n_adapter = sum(p.numel() for e in net.entries if e.part == "llm_adapter" for p in e.module.parameters())
    assert sum(p.numel() for p in groups["llm_adapter"]["params"]) == n_adapter
    assert {g["name"]: g["lr"] for g in net.param_groups(1e-4, 0.0, None)} == {"unet": 1e-4, "llm_adapter": 1e-4}


@pytest.mark.parametrize("algo", ["lora", "loha"])
def test_a_saved_lora_applied_to_a_fresh_model_gives_the_trained_output(files, algo):
    """Adapters on the DiT, the LLM adapter and Qwen3 with random weights; their file, patched into a freshly loaded
    model the way the UIs apply it (network/apply.py), gives the same velocity."""
    m = load(files)
    net = network(m, train_te=True, train_llm_adapter=True, algo=algo)
    torch.manual_seed(1)
    with torch.no_grad():
        for e in net.entries:
            for p in e.module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(1, 16, 4, 6), torch.tensor([0.6])
    with torch.no_grad():
        trained = ARCH.denoise(m, x, t, cond_for(m, ["1girl, red hair"]))
    lora = net.kohya_state_dict(torch.float32)
    fresh = load(files)
    names = module_names(fresh.denoiser, fresh.text_encoders, ARCH.te_prefixes, ARCH.denoiser_namer(fresh.denoiser),
                         text_encoder_names(ARCH, fresh.text_encoders))
    patcher = WeightPatcher(names)
    with torch.no_grad():
        base = ARCH.denoise(fresh, x, t, cond_for(fresh, ["1girl, red hair"]))
        assert patcher.apply(lora, 1.0) == len(net.entries)
        patched = ARCH.denoise(fresh, x, t, cond_for(fresh, ["1girl, red hair"]))
    assert (trained - base).abs().max() > 1e-3  # the adapters changed the output
    torch.testing.assert_close(patched, trained, atol=1e-4, rtol=1e-4)


def test_gradient_checkpointing_gives_the_same_gradients(files):
    m = load(files)
    net = network(m, train_llm_adapter=True)
    cond = cond_for(m, ["a"])
    x, t = torch.randn(1, 16, 4, 4), torch.tensor([0.5])

    def grads():
        for e in net.entries:
            for p in e.module.parameters():
                p.grad = None
        ARCH.denoise(m, x, t, cond).square().mean().backward()
        return [p.grad.clone() for e in net.entries for p in e.module.parameters()]

    plain = grads()
    m.denoiser.enable_gradient_checkpointing()
    assert m.denoiser.dit.gradient_checkpointing and m.denoiser.llm_adapter.gradient_checkpointing
    checkpointed = grads()
    assert any(g.abs().sum() > 0 for g in plain)
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b)


def test_compile_regions_are_the_repeated_blocks(files, monkeypatch):
    m = load(files)
    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(type(self).__name__))
    m.denoiser.compile_repeated_blocks(backend="eager")
    assert compiled.count("CosmosTransformerBlock") == 2 and compiled.count("AnimaTextConditionerBlock") == 2


# -- samples -------------------------------------------------------------------------------------------------------

def test_sampling_is_deterministic_per_seed(models):
    r = ARCH.renderer(models, None, torch.device("cpu"))
    p = SamplePrompt("1girl, red hair", "lowres", width=72, height=64, seed=3, steps=3, cfg_scale=4.0)
    a, b = np.asarray(r.render(p, "euler_a")), np.asarray(r.render(p, "ddim"))  # any sampler name: flow Euler
    assert a.shape == (64, 64, 3) and a.dtype == np.uint8  # 72 rounded down to a multiple of 16
    assert np.array_equal(a, b) and a.std() > 0
    c = np.asarray(r.render(replace(p, seed=4), "euler"))
    assert not np.array_equal(a, c)
    no_cfg = np.asarray(r.render(replace(p, cfg_scale=1.0), "euler"))  # one pass, no negative prompt
    assert not np.array_equal(a, no_cfg)


def test_sampling_follows_sd_scripts_euler_steps(models, monkeypatch):
    """The velocities the sampler asks for are at sd-scripts' shifted σ, and x moves by (σ_next − σ)·v."""
    r = ARCH.renderer(models, None, torch.device("cpu"))
    seen = []
    real = models.denoiser.velocity

    def spy(x, t, ctx):
        v = real(x, t, ctx)
        seen.append((x.clone(), t.clone(), v.clone()))
        return v

    monkeypatch.setattr(models.denoiser, "velocity", spy)
    monkeypatch.setattr(r, "decode", lambda z: z)
    p = SamplePrompt("a", "", width=64, height=64, seed=0, steps=2, cfg_scale=1.0)
    out = r.render(p, "euler")
    s = torch.linspace(1, 0, 3)
    s = 3.0 * s / (1 + 2.0 * s)
    assert [float(t) for _, t, _ in seen] == pytest.approx(s[:2].tolist())
    noise = torch.randn((1, 16, 1, 8, 8), generator=torch.manual_seed(0)).squeeze(2)
    assert torch.equal(seen[0][0], noise)
    torch.testing.assert_close(seen[1][0], noise + (s[1] - s[0]) * seen[0][2])
    torch.testing.assert_close(out, seen[1][0] + (s[2] - s[1]) * seen[1][2])


# -- the family through the trainer ------------------------------------------------------------------------------------

def test_the_family_is_complete_and_writes_sd_scripts_metadata():
    from lorafw.families import ATTRIBUTES, METHODS

    assert all(callable(getattr(ARCH, m)) for m in METHODS) and all(hasattr(ARCH, a) for a in ATTRIBUTES)
    assert (ARCH.name, ARCH.label, ARCH.predictions, ARCH.te_prefixes) == ("anima", "Anima", ("flow",), ("lora_te",))
    assert ARCH.base_model_version == "anima"
    assert ARCH.modelspec_architecture == "anima-preview/lora"
    assert ARCH.modelspec_implementation == "https://huggingface.co/circlestone-labs/Anima"


def test_the_registry_takes_the_family_and_detects_its_files(files, tiny_model, monkeypatch):
    """Registered as pyproject.toml registers it: families.get accepts it, `auto` finds it for the DiT and still
    finds SD1.5 for an SD1.5 checkpoint."""
    from importlib.metadata import EntryPoint

    from lorafw import families

    eps = dict(families._entry_points())
    eps["anima"] = EntryPoint("anima", "lorafw.archs.anima:ARCH", families.ENTRY_POINT_GROUP)
    monkeypatch.setattr(families, "_entry_points", lambda: eps)
    assert families.get("anima") is ARCH
    assert families.detect(files.dit) == "anima"
    assert families.detect(tiny_model) == "sd15"
    junk = tiny_model.parent / "junk.safetensors"  # no family's: each one's reason, SD1.5's and SDXL's shared
    save_file({"foo.weight": torch.zeros(2)}, str(junk))
    with pytest.raises(ModelError) as e:
        families.detect(junk)
    msg = str(e.value)
    assert "no registered model family recognises this file" in msg and "- anima: " in msg
    assert "- sd15, sdxl: " in msg and "no model.diffusion_model" in msg


def install_entry_point(site: Path) -> Path:
    """The `anima` entry point as an installed lorafw would register it (pyproject.toml), for a subprocess."""
    info = site / "lorafw_anima-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lorafw-anima\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[lorafw.architectures]\nanima = lorafw.archs.anima:ARCH\n")
    return site


@pytest.mark.slow
def test_anima_trains_through_the_cli(tmp_path, tiny_dataset, files):
    """Two epochs with samples on the tiny Anima, its file under sd-scripts' names and metadata; killed after step 3
    and resumed, the same file bit for bit."""
    from conftest import tiny_overrides
    from test_plugin_arch import cli

    site = install_entry_point(tmp_path / "site")
    out = tmp_path / "run"
    args = ["+recipe=anima_character", *tiny_overrides(files.dit, tiny_dataset, out),
            f"base_model.text_encoder={files.text_encoder}", f"base_model.vae={files.vae}",
            "network.train_llm_adapter=true", "optimizer.llm_adapter_lr=5e-3", "train.epochs=2",
            "optimizer=adamw", "optimizer.lr=1e-2", "sample.every_n_epochs=1", "sample.steps=3",
            "validation.split=0.25", "output.save_precision=fp32", "train.mixed_precision=no"]
    p = cli(site, *args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["arch"] == "anima" and record["status"] == "finished"
    assert record["objective"]["prediction_type"] == "flow"
    from safetensors import safe_open

    with safe_open(str(out / "toy-02.safetensors"), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    layers = {k.split(".")[0] for k in keys}
    assert {n for n in layers if not n.startswith("lora_unet_llm_adapter_")} == {
        f"lora_unet_blocks_{b}_{n}" for b in (0, 1) for n in DIT_LAYERS}
    assert {n for n in layers if n.startswith("lora_unet_llm_adapter_")} == {
        f"lora_unet_llm_adapter_blocks_{b}_{n}" for b in (0, 1) for n in ADAPTER_LAYERS}
    assert meta["ss_base_model_version"] == "anima" and meta["modelspec.architecture"] == "anima-preview/lora"
    assert sorted(q.name for q in (out / "samples").glob("*.png")) == ["toy-01_00.png", "toy-02_00.png"]
    p = cli(site, "grid", str(out), cwd=tmp_path)  # epoch × weight grid, the recommendation, the report
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-3000:]
    assert (out / "grids" / "prompt-00.png").is_file() and (out / "report.html").is_file()
    assert "recommended: epoch" in p.stdout + p.stderr

    again = tmp_path / "again"
    p = cli(site, *args, f"output.dir={again}", "output.save_state_every_n_steps=2", cwd=tmp_path,
            env={"LORAFW_FAULT": "kill_at_step:3"})
    assert p.returncode == -9 and not (again / "toy-02.safetensors").exists()
    p = cli(site, "resume", str(again), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = load_file(str(out / "toy-02.safetensors")), load_file(str(again / "toy-02.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("net", ["lora", "locon", "loha", "lokr", "dora"])
def test_every_module_of_a_trained_file_is_one_comfyui_loads(files, tiny_dataset, tmp_path, net):
    """The anima_character recipe, with the LLM adapter and Qwen3 trained too, in each algorithm: every module of the
    file it writes is one ComfyUI's key map (lorafw/interop/comfy_keys.py, its comfy/lora.py restated) reaches on
    these three files — nothing "lora key not loaded"."""
    from safetensors import safe_open

    from conftest import tiny_overrides
    from lorafw.config.compose import compose
    from lorafw.interop.comfy_keys import not_loaded
    from lorafw.run import resolve_outputs
    from lorafw.trainers.trainer import prepare

    spec = compose("anima_character", tiny_overrides(files.dit, tiny_dataset, tmp_path / "o") + [
        f"network={net}", f"base_model.text_encoder={files.text_encoder}", f"base_model.vae={files.vae}",
        "network.train_llm_adapter=true", "optimizer=adamw", "optimizer.text_encoder_lr=1e-4",
        "dataset.cache_text_encoder_outputs=false", "train.mixed_precision=no", "train.gradient_checkpointing=false"])
    spec = resolve_outputs(spec)
    out = prepare(spec, spec.output.dir).run().lora_files[-1]
    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
    dit_names, te_names = (list(safe_open(str(p), "pt").keys()) for p in (files.dit, files.text_encoder))
    assert any(k.startswith("lora_unet_llm_adapter_") for k in keys) and any(k.startswith("lora_te_") for k in keys)
    assert not_loaded(keys, dit_names, te_names) == []


def test_a_frozen_adapters_output_is_cached_with_the_text_and_trains_the_same(files, tiny_dataset, tmp_path, monkeypatch):
    """Without network.train_llm_adapter the adapter's output (the DiT's context) depends on the caption alone: it is
    cached in place of the Qwen3 states, and training gives the losses of running the adapter at every step."""
    from conftest import tiny_overrides
    from lorafw.config.compose import compose
    from lorafw.run import resolve_outputs
    from lorafw.trainers.trainer import prepare

    def run(name: str):
        spec = compose("anima_character", tiny_overrides(files.dit, tiny_dataset, tmp_path / name) + [
            f"base_model.text_encoder={files.text_encoder}", f"base_model.vae={files.vae}", "optimizer=adamw",
            "optimizer.lr=1e-2", "train.mixed_precision=no", "train.gradient_checkpointing=false", "train.epochs=2"])
        spec = resolve_outputs(spec)
        tr = prepare(spec, spec.output.dir)
        return tr, tr.run()

    cached, a = run("cached")
    assert set(cached.caches.text[0]) == {"context"} and cached.caches.text[0]["context"].shape[-2] == 512
    import lorafw.archs.anima.load as load_module

    original = load_module.load

    def adapter_every_step(*args, **kwargs):  # the adapter runs inside the denoiser at every step, as sd-scripts does
        models = original(*args, **kwargs)
        models.denoiser.context_is_text = False
        return models

    monkeypatch.setattr(load_module, "load", adapter_every_step)
    every_step, b = run("every_step")
    assert "prompt_embeds" in every_step.caches.text[0]
    torch.testing.assert_close(torch.tensor(a.loss_history), torch.tensor(b.loss_history), rtol=1e-4, atol=1e-6)
