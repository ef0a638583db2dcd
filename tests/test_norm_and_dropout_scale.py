"""LyCORIS's network_args train_norm and rank_dropout_scale (network.train_norm, network.rank_dropout_scale): what they
change in the adapters, where lorafw refuses them, their import, export and metadata, and that a train_norm file's
norm layers are ones ComfyUI's key map and LyCORIS's loader take."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from lycoris.modules import NormModule
from safetensors.torch import save_file
from test_network import LOCON, LORA, net, perturb

from lorafw.config.spec import NetworkSpec
from lorafw.errors import ConfigError
from lorafw.interop.kohya import export_kohya, network_args_of
from lorafw.models.ldm_layout import UNetLayout, unet_to_original
from lorafw.models.tiny import build_sd15
from lorafw.network.apply import WeightPatcher, module_names, rebuild

NORM = dataclasses.replace(LOCON, train_norm=True)


# -- rank_dropout_scale -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["loha", "lokr"])
@pytest.mark.parametrize("scale", [False, True])
def test_rank_dropout_scale_divides_what_is_kept_by_the_fraction_kept_as_lycoris(algo, scale):
    """LyCORIS (loha.py/lokr.py get_weight): drop = rand(out) > p over the rebuilt ΔW's rows; with rank_dropout_scale
    drop /= drop.mean() (the fraction actually kept, not 1 − p), without it the kept rows are not rescaled."""
    spec = dataclasses.replace(LORA, algo=algo, rank_dropout=0.5, rank_dropout_scale=scale, dim=4,
                               **({"factor": 4} if algo == "lokr" else {}))
    n, _ = net(spec, train_te=False)
    perturb(n)
    m = n.entries[3].module
    assert m.rank_dropout_scale is scale and m.rank_dropout == 0.5
    m.eval()
    full = m.get_weight(m.shape).detach()
    m.train()
    torch.manual_seed(7)
    dropped = m.get_weight(m.shape).detach()
    torch.manual_seed(7)
    keep = (torch.rand(full.shape[0]) > 0.5).float()
    if scale:
        keep = keep / keep.mean()
    torch.testing.assert_close(dropped, full * keep.reshape(-1, *[1] * (full.dim() - 1)))


def test_glora_is_built_with_lycoris_rank_dropout_scale():
    n, _ = net(dataclasses.replace(LORA, algo="glora", rank_dropout=0.25, rank_dropout_scale=True), train_te=False)
    assert all(e.module.rank_dropout_scale for e in n.entries)


# -- train_norm ------------------------------------------------------------------------------------------------------
def test_train_norm_adapts_every_layernorm_and_groupnorm_of_the_adapted_blocks():
    n, parts = net(NORM)
    norms = [e for e in n.entries if e.target.kind == "norm"]
    assert norms and all(isinstance(e.module, NormModule) for e in norms) and all(e.part == "unet" for e in norms)
    modules = dict(build_sd15(0)["unet"].named_modules())
    want = {p for p, m in modules.items() if isinstance(m, (torch.nn.LayerNorm, torch.nn.GroupNorm))
            and (".attentions." in p or ".resnets." in p)}  # Transformer2DModel and ResnetBlock2D (conv_dim set)
    assert {e.path for e in norms} == want
    assert not any(e.target.kind == "norm" for e in net(LOCON)[0].entries)
    lora_blocks_only = [e.path for e in net(dataclasses.replace(NORM, algo="loha", conv_dim=None, conv_alpha=None))[0]
                        .entries if e.target.kind == "norm"]
    assert lora_blocks_only and all(".attentions." in p for p in lora_blocks_only)  # no conv layers: their blocks' only
    sd = n.kohya_state_dict(torch.float32)
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_norm1"
    assert sd[f"{name}.w_norm"].shape == (32,) and sd[f"{name}.b_norm"].shape == (32,)
    assert not sd[f"{name}.w_norm"].any()  # starts as the layer itself
    # the norms train: they have gradients, and the optimizer groups hold them
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32)
    perturb(n)
    parts["unet"](x, t, c).sample.square().mean().backward()
    assert norms[0].module.w_norm.grad is not None and norms[0].module.w_norm.grad.abs().sum() > 0
    grouped = {id(p) for g in n.param_groups(1e-4, 1e-4) for p in g["params"]}
    assert id(norms[0].module.b_norm) in grouped


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_train_norm_names_are_in_comfyuis_key_map(arch, tiny_model, tiny_xl_model):
    """ComfyUI (comfy/lora.py model_lora_keys_unet) maps `lora_unet_` + every original-layout UNet weight (dots →
    underscores), and for SD1.5 also every diffusers name its unet_to_diffusers map knows; load_lora patches
    `w_norm` / `b_norm` as a difference to that weight and its bias. Every norm name lorafw writes must be one."""
    from safetensors import safe_open

    n, parts = net(NORM, arch=arch)
    with safe_open(str(tiny_model if arch == "sd15" else tiny_xl_model), framework="pt") as f:
        weights = {k[len("model.diffusion_model."):-len(".weight")].replace(".", "_") for k in f.keys()
                   if k.startswith("model.diffusion_model.") and k.endswith(".weight")}
    layout = UNetLayout.from_config(dict(parts["unet"].config))
    norms = [e for e in n.entries if e.target.kind == "norm"]
    assert norms
    for e in norms:
        original = unet_to_original(e.path, layout).replace(".", "_")
        assert original in weights, e.file_name
        if arch == "sdxl":  # SDXL files use the original names themselves
            assert e.file_name == "lora_unet_" + original
        else:  # SD1.5: diffusers names, which ComfyUI maps through unet_to_diffusers to the same weight
            assert e.file_name == "lora_unet_" + e.path.replace(".", "_")


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_a_train_norm_file_is_read_whole_by_lycoris_and_patched_as_comfyui_does(algo):
    """LyCORIS's own loader rebuilds each norm from w_norm/b_norm, and W + w·w_norm, b + w·b_norm (ComfyUI's "diff"
    patch, what `lorafw grid` applies) gives the model the adapters ran."""
    spec = dataclasses.replace(NORM, algo=algo)
    n, parts = net(spec)
    perturb(n)
    sd = n.kohya_state_dict(torch.float32)
    modules = module_names(parts["unet"], [parts["text_encoder"]], ("lora_te",))
    for e in n.entries:
        if e.target.kind == "norm":
            n.set_enabled(False)
            rebuilt = rebuild(sd, e.file_name, modules[e.file_name])
            assert isinstance(rebuilt, NormModule)
            assert torch.equal(rebuilt.w_norm, sd[f"{e.file_name}.w_norm"])
            assert torch.equal(rebuilt.b_norm, sd[f"{e.file_name}.b_norm"])
            n.set_enabled(True)
            break
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.randn(1, 77, 32)
    parts["unet"].eval()
    with torch.no_grad():
        ours = parts["unet"](x, t, c).sample
        n.set_enabled(False)
        base = parts["unet"](x, t, c).sample
        only_norms = {k: v for k, v in sd.items() if k.endswith((".w_norm", ".b_norm"))}
        patcher = WeightPatcher(modules, "comfyui")
        patcher.apply(only_norms, 1.0)
        norms_only = parts["unet"](x, t, c).sample
        patcher.apply(sd, 1.0)
        patched = parts["unet"](x, t, c).sample
        patcher.restore()
        assert torch.equal(parts["unet"](x, t, c).sample, base)  # weights and biases restored bit for bit
    assert (norms_only - base).abs().max() > 1e-3  # the norms alone change the model
    torch.testing.assert_close(patched, ours, atol=5e-4, rtol=1e-3)


# -- the keys: refused combinations, import, export ------------------------------------------------------------------
@pytest.mark.parametrize("overrides, message", [
    (["network=lora", "network.rank_dropout_scale=true"], "lorafw's lora drops ranks as kohya's networks/lora.py"),
    (["network=dora", "network.conv_dim=2", "network.conv_alpha=1", "network.rank_dropout_scale=true"],
     "lorafw's locon (DoRA) drops ranks"),
    (["network=ia3", "network.rank_dropout_scale=true"], "IA3 has no rank dropout"),
    (["network=lora", "network.train_norm=true"], "network.train_norm: kohya's networks.lora (network.algo=lora) "
                                                  "trains no norm layers"),
])
def test_combinations_without_the_switch_are_refused(compose_tiny, overrides, message):
    with pytest.raises(ConfigError) as e:
        compose_tiny("sd15_character", *overrides)
    assert message in str(e.value)


def test_lycoris_networks_take_both(compose_tiny):
    spec = compose_tiny("sd15_character", "network=loha", "network.rank_dropout=0.1", "network.rank_dropout_scale=true",
                        "network.train_norm=true")
    assert spec.network.rank_dropout_scale and spec.network.train_norm
    assert compose_tiny("sd15_character", "network=locon", "network.train_norm=true").network.train_norm


def imported(tmp_path, network: dict) -> object:
    import tomli_w

    from lorafw.interop.importer import import_config

    f = tmp_path / "c.toml"
    f.write_text(tomli_w.dumps({"max_train_epochs": 3, "resolution": 512, **network}))
    return import_config(f)


def test_exported_as_lycoris_network_args_and_read_back(compose_tiny, tmp_path):
    spec = compose_tiny("sd15_character", "network=lokr", "network.rank_dropout=0.1", "network.rank_dropout_scale=true",
                        "network.train_norm=true")
    args = network_args_of(spec.network)
    assert "rank_dropout_scale=True" in args and "train_norm=True" in args and "algo=lokr" in args
    cfg, _ = export_kohya(spec, 10)
    net_args = cfg["network_arguments"]
    assert net_args["network_module"] == "lycoris.kohya"
    assert {"rank_dropout_scale=True", "train_norm=True"} <= set(net_args["network_args"])
    values = imported(tmp_path, net_args).values  # sd-scripts' side only (no [lorafw] section)
    assert values["network.rank_dropout_scale"] is True and values["network.train_norm"] is True
    assert values["network.algo"] == "lokr" and values["network.rank_dropout"] == 0.1


@pytest.mark.parametrize("module, algo_args, kept", [
    ("lycoris.kohya", ["algo=loha"], True),
    ("lycoris.kohya", ["algo=lokr"], True),
    ("lycoris.kohya", ["algo=locon"], False),  # lorafw's locon: kohya's always-rescaled rank dropout
    ("networks.lora", [], False),  # kohya's LoRA takes and ignores it
])
def test_import_keeps_rank_dropout_scale_where_the_network_has_it(module, algo_args, kept, tmp_path):
    imp = imported(tmp_path, {"network_module": module, "network_args": [*algo_args, "rank_dropout=0.2",
                                                                         "rank_dropout_scale=True", "train_norm=True"]})
    assert ("network.rank_dropout_scale" in imp.values) is kept
    if not kept:
        assert any(p.key == "network_args.rank_dropout_scale" for p in imp.no_effect)
    assert ("network.train_norm" in imp.values) is (module == "lycoris.kohya")


def test_the_network_metadata_names_them(compose_tiny):
    from lorafw.outputs.metadata import network_module

    spec = compose_tiny("sd15_character", "network=loha", "network.rank_dropout=0.1", "network.rank_dropout_scale=true",
                        "network.train_norm=true")
    module, args = network_module(spec)
    assert module == "lycoris.kohya" and args["rank_dropout_scale"] == "True" and args["train_norm"] == "True"
    assert json.loads(json.dumps(args))  # ss_network_args is JSON


def test_a_saved_train_norm_file_starts_a_new_run(tmp_path):
    from lorafw.network import init_weights as iw

    a, _ = net(NORM)
    perturb(a)
    sd = a.kohya_state_dict(torch.float32)
    save_file(sd, str(tmp_path / "a.safetensors"))
    b, _ = net(NORM)
    layers = iw.by_layer(iw.read(tmp_path / "a.safetensors")[0])
    iw.start_from(b, str(tmp_path / "a.safetensors"), layers, algo="locon", dim_from_weights=False, trains_te=True)
    assert all(torch.equal(b.kohya_state_dict(torch.float32)[k], v) for k, v in sd.items())
    assert isinstance(NetworkSpec().train_norm, bool)
