"""SDXL (Pony Diffusion V6 XL architecture) on a tiny model: loading, conditioning, files, memory options."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import tiny_overrides
from lorafw.config.compose import compose
from lorafw.data.buckets import Placement, size_conditioning
from lorafw.errors import ConfigError
from lorafw.models.load import inspect_base_model, load_components
from lorafw.run import resolve_outputs
from lorafw.trainers.trainer import Trainer, prepare


def xl_spec(model, data, out, recipe="pdxl", *extra):
    return compose(recipe, tiny_overrides(model, data, out) + list(extra))


def trainer_for(spec) -> Trainer:
    spec = resolve_outputs(spec)
    return prepare(spec, spec.output.dir)


def same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    keys = {k for k in sa if not k.endswith("position_ids")}
    return keys == {k for k in sb if not k.endswith("position_ids")} and all(torch.equal(sa[k], sb[k]) for k in keys)


def test_single_file_and_folder_load_all_four_parts(tiny_xl_model, tiny_xl_diffusers, tiny_xl_parts):
    for path in (tiny_xl_model, tiny_xl_diffusers):
        c = load_components(path, expected_arch="sdxl")
        assert c.arch == "sdxl" and len(c.text_encoders) == 2 and len(c.tokenizers) == 2
        assert same(c.unet, tiny_xl_parts["unet"]) and same(c.vae, tiny_xl_parts["vae"])
        assert same(c.text_encoders[0], tiny_xl_parts["text_encoder"]) and same(c.text_encoders[1], tiny_xl_parts["text_encoder_2"])
        assert c.tokenizers[1].pad_token_id == 0 and c.vae.config.scaling_factor == 0.13025
    assert inspect_base_model(tiny_xl_model).describe().startswith("SDXL (")


def test_size_conditioning():
    pl = Placement(bucket=(192, 64), resized=(200, 64), crop=(4, 0))
    assert size_conditioning((600, 192), pl, False) == (192, 600, 0, 4, 64, 192)
    assert size_conditioning((600, 192), pl, True) == (192, 600, 0, 4, 64, 192)  # centred: the mirror is the same
    pl = Placement(bucket=(64, 64), resized=(100, 64), crop=(10, 0))
    assert size_conditioning((100, 64), pl, True)[3] == 100 - 64 - 10


def test_text_encoding_matches_the_sdxl_pipeline(tiny_xl_parts):
    from diffusers import StableDiffusionXLPipeline

    from lorafw.models.load import noise_scheduler
    from lorafw.models.text import encode_sdxl, tokenize
    from lorafw.models.tokenizer import clip_tokenizer

    p = tiny_xl_parts
    pipe = StableDiffusionXLPipeline(vae=p["vae"], text_encoder=p["text_encoder"], text_encoder_2=p["text_encoder_2"],
                                     tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer("!"), unet=p["unet"],
                                     scheduler=noise_scheduler())
    prompt = "shapes_demo, red circle, white background"
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, device=torch.device("cpu"), do_classifier_free_guidance=False)
        ids1, ids2 = tokenize(clip_tokenizer(), [prompt], 75), tokenize(clip_tokenizer("!"), [prompt], 75)
        ours, our_pooled = encode_sdxl(p["text_encoder"], p["text_encoder_2"], ids1, ids2)
        torch.testing.assert_close(ours, embeds, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(our_pooled, pooled, atol=1e-5, rtol=1e-5)
        long, long_pooled = encode_sdxl(p["text_encoder"], p["text_encoder_2"], tokenize(clip_tokenizer(), [prompt], 225),
                                        tokenize(clip_tokenizer("!"), [prompt], 225))
    assert long.shape == (1, 227, 64) and torch.allclose(long_pooled, pooled, atol=1e-5)  # pooled from the first window


@pytest.mark.parametrize("net,epochs,factor", [("lora", 16, 0.985), ("locon", 8, 0.6)])
def test_loss_falls(tiny_xl_model, tiny_dataset, tmp_path, net, epochs, factor):
    # The tiny UNet's output is dominated by its ResNets, so attention-only LoRA moves the loss little and the
    # trajectory at lr 1e-2 depends on float rounding. Measured over seeds 0-2 and three CPU kernel paths
    # (ATEN_CPU_CAPABILITY native/avx2/default): LoRA 16 epochs ×0.924…×0.955 (8 epochs was ×0.954…×0.973, too
    # close to a threshold); LoCon 8 epochs ×0.35. Untrained weights give ×1.000.
    tr = trainer_for(xl_spec(tiny_xl_model, tiny_dataset, tmp_path / "r", "pdxl", f"network={net}", f"train.epochs={epochs}",
                             "optimizer=adamw", "optimizer.lr=1e-2", "optimizer.text_encoder_lr=5e-3", "scheduler=constant",
                             "train.mixed_precision=no", "train.full_bf16=false", "network.conv_dim=8", "network.conv_alpha=8")
                     if net == "locon" else
                     xl_spec(tiny_xl_model, tiny_dataset, tmp_path / "r", "pdxl", f"train.epochs={epochs}", "optimizer=adamw",
                             "optimizer.lr=1e-2", "optimizer.text_encoder_lr=5e-3", "scheduler=constant", "train.mixed_precision=no",
                             "train.full_bf16=false"))
    tr.setup()
    before = tr.fixed_loss()
    tr.train()
    after = tr.fixed_loss()
    assert after < factor * before, (before, after)


@pytest.fixture(scope="module")
def xl_trained(tmp_path_factory, tiny_xl_model, tiny_dataset):
    out = tmp_path_factory.mktemp("xl") / "run"
    tr = trainer_for(xl_spec(tiny_xl_model, tiny_dataset, out, "pdxl", "train.epochs=2", "output.save_precision=fp32",
                             "train.mixed_precision=no", "train.full_bf16=false", "optimizer.lr=1e-2", "optimizer.text_encoder_lr=1e-2"))
    return tr, tr.run()


def test_file_loaded_by_the_sdxl_pipeline_reproduces_the_model(xl_trained):
    from diffusers import StableDiffusionXLPipeline
    from peft.tuners.lora import LoraLayer

    from lorafw.models.load import noise_scheduler
    from lorafw.models.tiny import build_sdxl
    from lorafw.models.tokenizer import clip_tokenizer

    tr, result = xl_trained
    base, fresh = build_sdxl(0), build_sdxl(0)
    pipe = StableDiffusionXLPipeline(vae=fresh["vae"], text_encoder=fresh["text_encoder"], text_encoder_2=fresh["text_encoder_2"],
                                     tokenizer=clip_tokenizer(), tokenizer_2=clip_tokenizer("!"), unet=fresh["unet"],
                                     scheduler=noise_scheduler())
    logging.getLogger("transformers").setLevel(logging.ERROR)
    pipe.load_lora_weights(str(result.lora_files[-1]))
    counts = [sum(isinstance(m, LoraLayer) for m in mod.modules()) for mod in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)]
    assert counts == [sum(e.part == part for e in tr.state.network.entries) for part in ("unet", "te1", "te2")]
    torch.manual_seed(0)
    x, t, ctx = torch.randn(2, 4, 8, 8), torch.tensor([100, 800]), torch.randn(2, 77, 64)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)}
    ids = torch.randint(0, 49406, (2, 77))
    for m in (tr.models.denoiser, *tr.models.text_encoders):
        m.eval()
    with torch.no_grad():
        ours = tr.models.denoiser(x, t, ctx, added_cond_kwargs=added).sample
        assert (ours - base["unet"](x, t, ctx, added_cond_kwargs=added).sample).abs().max() > 1e-4
        torch.testing.assert_close(pipe.unet(x, t, ctx, added_cond_kwargs=added).sample, ours, atol=1e-5, rtol=1e-5)
        for i, (mine, theirs) in enumerate(zip(tr.models.text_encoders, (pipe.text_encoder, pipe.text_encoder_2))):
            a = mine(ids, output_hidden_states=True).hidden_states[-2]
            b = theirs(ids, output_hidden_states=True).hidden_states[-2]
            torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


def test_key_names_and_metadata_say_sdxl(xl_trained):
    _, result = xl_trained
    with safe_open(str(result.lora_files[-1]), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    # the tiny UNet has one ResNet per level: its attention blocks are input_blocks 3 and 5 (real SDXL: 4, 5, 7, 8)
    assert any(k.startswith("lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q") for k in keys)
    assert any(k.startswith("lora_unet_input_blocks_5_1_transformer_blocks_1_attn2_to_k") for k in keys)  # depth 2
    assert any(k.startswith("lora_unet_output_blocks_0_1_transformer_blocks_1_ff_net_2") for k in keys)
    assert any(k.startswith("lora_unet_middle_block_1_transformer_blocks_1_") for k in keys)
    assert not any("down_blocks" in k for k in keys)  # original-layout names, as the reference trainer writes
    assert any(k.startswith("lora_te1_text_model_encoder_layers_0_") for k in keys)
    assert any(k.startswith("lora_te2_text_model_encoder_layers_2_mlp_fc2") for k in keys)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["ss_optimizer"].startswith("came_pytorch.CAME(") and meta["ss_lr_scheduler"] == "rex"
    from test_metadata import missing_kohya_keys

    # every key kohya writes; modelspec.encoder_layer only with clip_skip, which lorafw ignores on SDXL
    assert missing_kohya_keys(meta) == {"modelspec.encoder_layer"} and meta["ss_clip_skip"] == "None"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"


@pytest.mark.parametrize("net", ["locon", "dora"])
def test_locon_and_dora_reapplied_with_lycoris(tiny_xl_model, tiny_dataset, tmp_path, net):
    import lycoris
    from lycoris import create_lycoris_from_weights

    from lorafw.models.tiny import build_sdxl

    recipe = "pdxl_dora" if net == "dora" else "pdxl"
    extra = ["network=locon", "network.conv_dim=2", "network.conv_alpha=1"] if net == "locon" else []
    tr = trainer_for(xl_spec(tiny_xl_model, tiny_dataset, tmp_path / net, recipe, *extra, "optimizer.lr=1e-2",
                             "output.save_precision=fp32", "train.mixed_precision=no", "train.full_bf16=false",
                             "optimizer.text_encoder_lr=0"))
    sd = load_file(str(tr.run().lora_files[-1]))
    assert any(k.endswith(".dora_scale") for k in sd) == (net == "dora")
    base = build_sdxl(0)["unet"]
    # LyCORIS names diffusers modules; the file uses the original layout's names (checked on their own above)
    path_of = {e.file_name: e.path for e in tr.state.network.entries}
    renamed = {}
    for k, v in sd.items():
        name, rest = k.split(".", 1)
        renamed["lycoris_" + path_of[name].replace(".", "_") + "." + rest] = v
    lycoris.wrapper.LycorisNetwork.LORA_PREFIX = "lycoris"
    network, _ = create_lycoris_from_weights(1.0, None, base, weights_sd=renamed)
    network.apply_to()
    assert len(network.loras) == len(tr.state.network.entries)
    torch.manual_seed(0)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([300]), torch.randn(1, 77, 64)
    added = {"text_embeds": torch.randn(1, 32), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
    tr.models.denoiser.eval()
    with torch.no_grad():
        theirs, ours = base(x, t, ctx, added_cond_kwargs=added).sample, tr.models.denoiser(x, t, ctx, added_cond_kwargs=added).sample
    # LyCORIS merges each conv adapter into the weight, lorafw runs it beside the layer: the same sum in another
    # order, through other conv kernels (oneDNN picks them per CPU: 2.7e-4 of an output ~0.3 on an AMD Zen 4)
    torch.testing.assert_close(theirs, ours, atol=1e-3 * ours.abs().max().item(), rtol=1e-4)


def test_an_sdxl_recipe_on_an_sd15_checkpoint_fails_early(tiny_model, tiny_xl_model, tiny_dataset, tmp_path):
    with pytest.raises(ConfigError, match=r"is an SD1.5 \(UNet .*\) checkpoint, but the config trains SDXL .*base_model=sd15"):
        xl_spec(tiny_model, tiny_dataset, tmp_path / "a", "pdxl")
    with pytest.raises(ConfigError, match=r"is an SDXL \(UNet .*2 text encoders\) checkpoint, but the config trains SD1.5"):
        compose("sd15_character", tiny_overrides(tiny_xl_model, tiny_dataset, tmp_path / "b"))
    assert not (tmp_path / "a").exists()


def test_the_pdxl_recipe_runs_with_its_memory_settings(tiny_xl_model, tiny_dataset, tmp_path):
    tr = trainer_for(xl_spec(tiny_xl_model, tiny_dataset, tmp_path / "r", "pdxl", f"dataset.cache_dir={tmp_path / 'cache'}"))
    result = tr.run()
    assert tr.dev.precision == "bf16" and tr.spec.train.full_bf16 and tr.state.masters is not None
    assert {p.dtype for p in tr.state.trainable} == {torch.bfloat16}  # adapters and their gradients in bf16
    assert {p.dtype for p in tr.models.denoiser.parameters() if not p.requires_grad} == {torch.bfloat16}
    assert tr.models.vae.dtype == torch.float32  # no_half_vae
    assert tr.models.denoiser.is_gradient_checkpointing
    assert any((tmp_path / "cache").rglob("*.safetensors"))  # latents cached to disk
    assert type(tr.models.denoiser.down_blocks[1].attentions[0].transformer_blocks[0].attn1.processor).__name__ == "AttnProcessor2_0"  # SDPA
    assert all(torch.isfinite(torch.tensor(result.loss_history)))
    sd = load_file(str(result.lora_files[-1]))
    assert sd["lora_unet_input_blocks_3_1_proj_in.alpha"].item() == 4 and sd["lora_unet_input_blocks_3_1_proj_in.lora_down.weight"].shape[0] == 8


def test_gradient_checkpointing_does_not_change_the_numbers(tiny_xl_model, tiny_dataset, tmp_path):
    losses = []
    for ckpt in (False, True):
        tr = trainer_for(xl_spec(tiny_xl_model, tiny_dataset, tmp_path / str(ckpt), "pdxl", f"train.gradient_checkpointing={ckpt}",
                                 "train.mixed_precision=no", "train.full_bf16=false"))
        losses.append(tr.run().loss_history)
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)


def test_frozen_text_encoders_are_cached_with_the_same_result(tiny_xl_model, tiny_dataset, tmp_path):
    common = ["optimizer.text_encoder_lr=0", "train.mixed_precision=no", "train.full_bf16=false", "output.save_precision=fp32"]
    a = trainer_for(xl_spec(tiny_xl_model, tiny_dataset, tmp_path / "a", "pdxl", *common))
    b = trainer_for(xl_spec(tiny_xl_model, tiny_dataset, tmp_path / "b", "pdxl", *common, "dataset.cache_text_encoder_outputs=true"))
    fa, fb = load_file(str(a.run().lora_files[-1])), load_file(str(b.run().lora_files[-1]))
    assert set(b.caches.text[0]) == {"encoder_hidden_states", "text_embeds"}
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)


def test_caption_dropout_trains_on_the_cached_empty_caption(tiny_xl_model, tiny_dataset, tmp_path):
    """caption_dropout_rate with cached text-encoder outputs: a dropped caption takes the cached "" states, so the
    run gives the same file as encoding every step (the draws are the same; only where the states come from differs)."""
    common = ["optimizer.text_encoder_lr=0", "train.mixed_precision=no", "train.full_bf16=false", "output.save_precision=fp32",
              "dataset.caption_dropout_rate=0.5"]
    a = trainer_for(xl_spec(tiny_xl_model, tiny_dataset, tmp_path / "a", "pdxl", *common))
    b = trainer_for(xl_spec(tiny_xl_model, tiny_dataset, tmp_path / "b", "pdxl", *common, "dataset.cache_text_encoder_outputs=true"))
    fa, fb = load_file(str(a.run().lora_files[-1])), load_file(str(b.run().lora_files[-1]))
    assert -1 in b.caches.text  # batch.EMPTY
    assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa)
    c = trainer_for(xl_spec(tiny_xl_model, tiny_dataset, tmp_path / "c", "pdxl", *common[:-1], "dataset.cache_text_encoder_outputs=true"))
    fc = load_file(str(c.run().lora_files[-1]))  # without dropout: another file (the dropout did change training)
    assert any(not torch.equal(fa[k], fc[k]) for k in fa)


def test_xformers_is_a_clear_choice(tiny_xl_model, tiny_dataset, tmp_path):
    from lorafw.errors import LorafwError

    try:
        import xformers  # noqa: F401

        pytest.skip("xformers is installed here; the error path needs it missing")
    except ImportError:
        pass
    tr = trainer_for(xl_spec(tiny_xl_model, tiny_dataset, tmp_path / "r", "pdxl", "train.attention=xformers"))
    with pytest.raises(LorafwError, match="train.attention=xformers: .*use train.attention=sdpa"):
        tr.run()


def test_full_bf16_updates_still_move_bf16_weights():
    from lorafw.optim.bf16 import MasterWeights, stochastic_round_bf16

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    plain = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    masters = MasterWeights([{"params": [w], "lr": 1e-5}])
    opt = torch.optim.AdamW(masters.groups, lr=1e-5, weight_decay=0)
    opt_plain = torch.optim.AdamW([plain], lr=1e-5, weight_decay=0)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        for p in (w, plain):
            p.grad = torch.ones_like(p)
        masters.pull_grads()
        opt.step()
        masters.push(gen)
        opt_plain.step()
    assert torch.equal(plain, torch.ones_like(plain))  # plain bf16: 200 updates of 1e-5 rounded away
    assert (w != 1).any()  # stochastic rounding: some weights moved ...
    assert w.float().mean().item() == pytest.approx(1 - 200 * 1e-5, abs=3e-4)  # ... and by the right amount on average
    x = torch.full((100_000,), 1.0 + 2**-9)  # a quarter of the way to the next bf16 value
    r = stochastic_round_bf16(x, torch.Generator().manual_seed(1)).float()
    assert set(r.unique().tolist()) == {1.0, 1.0 + 2**-7} and (r > 1).float().mean().item() == pytest.approx(0.25, abs=0.01)
