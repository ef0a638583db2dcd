"""`lorafw plan --vram GB`: the memory estimate's arithmetic, its layer tables against real adapters, and the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest

from conftest import lorafw_main_without_torch, make_folder
from lorafw.config.compose import compose_dict
from lorafw.config.spec import NetworkSpec, OptimizerSpec
from lorafw.config.validate import spec_from_dict
from lorafw.planning import vram
from lorafw.planning.vram import GiB, Bucket, adapter_tensors, estimate, optimizer_state_bytes, suggest

ROOT = Path(__file__).resolve().parent.parent
LORA = NetworkSpec("lora", 4, 2, False, 0.0)
LOCON = NetworkSpec("locon", 4, 2, False, 0.0, 2, 1)
DORA = NetworkSpec("locon", 4, 2, True, 0.0, 2, 1)
LOHA = NetworkSpec("loha", 4, 2, False, 0.0, 2, 1)
IA3 = NetworkSpec("ia3", 4, 2, False, 0.0)
GLORA = NetworkSpec("glora", 4, 2, False, 0.0)


def spec_for(tmp_path: Path, recipe: str, *extra: str):
    if not (tmp_path / "3_kafka").is_dir():
        make_folder(tmp_path, "3_kafka", [(64, 64)] * 4, ["kafka"])
    spec, _ = spec_from_dict(compose_dict(recipe, [f"dataset.root={tmp_path}", "base_model.path=-", *extra]), need_model=False)
    return spec


def with_train(spec, **kw):
    return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **kw))


def with_data(spec, **kw):
    return dataclasses.replace(spec, dataset=dataclasses.replace(spec.dataset, **kw))


# -- the layer tables: the formula against the real injection -------------------------------------
def _tiny(arch: str):
    from lorafw.models.tiny import build_sd15, build_sdxl

    parts = build_sd15(seed=0) if arch == "sd15" else build_sdxl(seed=0)
    tes = [parts[k] for k in ("text_encoder", "text_encoder_2") if k in parts]
    return parts["unet"], tes, (["lora_te"] if arch == "sd15" else ["lora_te1", "lora_te2"])


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("net", [LORA, LOCON, DORA, LOHA, IA3, GLORA], ids=["lora", "locon", "locon+dora", "loha", "ia3", "glora"])
@pytest.mark.parametrize("train_te", [True, False])
def test_adapter_count_is_exact_against_real_injection(arch, net, train_te):
    """The table made from the (unadapted) modules predicts every tensor LyCORIS creates, shape by shape."""
    from lorafw.network.adapter import Network
    from lorafw.network.targets import TE_CONTAINERS

    unet, tes, prefixes = _tiny(arch)
    table = {"unet": vram.layer_table(unet, vram.UNET_CONTAINERS)}
    for te, p in zip(tes, prefixes):
        table[p.removeprefix("lora_")] = vram.layer_table(te, TE_CONTAINERS)
    network = Network(net, unet, tes, prefixes, train_te, lambda p: p)
    real = sorted(tuple(p.shape) for p in network.parameters(""))
    predicted = sorted(a.shape for a in adapter_tensors(table, net, train_te) for _ in range(a.count))
    assert predicted == real
    assert network.n_parameters() == sum(p.numel() for p in network.parameters(""))


def _tools():
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import vram_anima
        import vram_calibrate
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return vram_calibrate, vram_anima


def test_shipped_tables_are_the_real_architectures():
    """lorafw/planning/vram_calibration.json holds the real SD1.5/SDXL counts: rebuilt here on the meta device."""
    vc, _ = _tools()
    cal = vram.load_calibration()
    for arch in ("sd15", "sdxl"):
        parts, _ = vc.lorafw_parts(arch)
        tes = [k for k in ("text_encoder", "text_encoder_2") if k in parts]
        got = cal["archs"][arch]
        assert got["params"] == {"unet": vc.count(parts["unet"]), "vae": vc.count(parts["vae"]),
                                 "text_encoders": [vc.count(parts[k]) for k in tes]}
        assert got["targets"]["unet"] == vram.layer_table(parts["unet"], vram.UNET_CONTAINERS)
    assert 850e6 < cal["archs"]["sd15"]["params"]["unet"] < 870e6 and 2.5e9 < cal["archs"]["sdxl"]["params"]["unet"] < 2.6e9


def test_real_adapter_sizes():
    """Known sizes: SD1.5 LoRA dim 16 (UNet + CLIP-L) is ~18 MB in fp16 as kohya writes it (~9.2M parameters)."""
    cal = vram.load_calibration()
    n = sum(math.prod(a.shape) * a.count
            for a in adapter_tensors(cal["archs"]["sd15"]["targets"], NetworkSpec("lora", 16, 8, False, 0.0), True))
    assert 8.5e6 < n < 10e6


def test_shipped_anima_tables_are_the_real_architecture():
    """Anima's counts and layer tables: its three files' real shapes rebuilt on the meta device through lorafw's
    own loading code (files.describe_dit, dit.build, text.qwen3_config, codec.vae_config)."""
    vc, va = _tools()
    parts, info = va.parts()
    got = vram.load_calibration()["archs"]["anima"]
    assert (info.blocks, info.channels, info.heads) == (28, 2048, 16)
    assert got["params"] == {"unet": vc.count(parts["unet"]), "vae": vc.count(parts["vae"]),
                             "text_encoders": [vc.count(parts["text_encoder"])]}
    assert got["targets"] == json.loads(json.dumps(va.tables(parts)))
    assert got["family"] == json.loads(json.dumps(va.family()))
    assert 1.9e9 < got["params_detail"]["dit"] < 2.0e9 and 0.55e9 < got["params"]["text_encoders"][0] < 0.65e9


def test_anima_layer_tables():
    """The family's targets (lorafw.archs.anima.TARGETS): the 10 Linear layers of each of the 28 DiT blocks (self- and
    cross-attention q/k/v/out, the MLP's two), the LLM adapter's 6 blocks, Qwen3's 28 layers (attention 4, MLP 3)."""
    t = vram.load_calibration()["archs"]["anima"]["targets"]
    assert sorted(t["unet"]) == sorted([["Attention", "linear", 2048, 2048, 1, 28 * 6],  # q, k, v, out; cross q, out
                                        ["Attention", "linear", 1024, 2048, 1, 28 * 2],  # cross k, v (the context)
                                        ["FeedForward", "linear", 2048, 8192, 1, 28],
                                        ["FeedForward", "linear", 8192, 2048, 1, 28]])
    assert sum(r[5] for r in t["unet"]) == 280
    assert sum(r[5] for r in t["llm_adapter"]) == 6 * 10
    assert sum(r[5] for r in t["te"]) == 28 * 7


@pytest.mark.parametrize("net", [LORA, DORA, LOHA], ids=["lora", "dora", "loha"])
@pytest.mark.parametrize("train_te,train_llm_adapter", [(False, False), (True, False), (False, True), (True, True)])
def test_anima_adapter_count_is_exact_against_real_injection(net, train_te, train_llm_adapter):
    """The tiny Anima (lorafw.archs.anima.tiny) with its family's targets: the table predicts every tensor."""
    import torch

    from lorafw.archs.anima import TARGETS, tiny
    from lorafw.network.adapter import Network
    from lorafw.network.targets import kohya_name

    vc, va = _tools()
    parts = {k: vc.materialise(m, torch.float32) for k, m in va.parts(tiny.TINY)[0].items()}  # DoRA reads the weights
    table = va.tables(parts)
    fam = vram.Family.of({"family": va.family()})
    net = dataclasses.replace(net, train_llm_adapter=train_llm_adapter)
    network = Network(net, parts["unet"], [parts["text_encoder"]], ["lora_te"], train_te, lambda p: p, arch="anima",
                      targets=TARGETS, te_names=[lambda p: kohya_name("lora_te", p)])
    real = sorted(tuple(p.shape) for p in network.parameters(""))
    predicted = sorted(a.shape for a in adapter_tensors(table, net, train_te, True, fam.containers, train_llm_adapter)
                       for _ in range(a.count))
    assert predicted == real


# -- optimizer state -------------------------------------------------------------------------------------
def opt(name: str, **args) -> OptimizerSpec:
    return OptimizerSpec(name, lr=1e-4, unet_lr=1e-4, text_encoder_lr=1e-4, weight_decay=0.0, betas=(0.9, 0.999), args=args)


def test_optimizer_state_per_library():
    big, small = (16, 1280), (16, 64)  # 20480 and 1024 values
    assert optimizer_state_bytes(big, opt("adamw")) == 2 * 4 * 20480
    assert optimizer_state_bytes(big, opt("adamw8bit")) == 2 * 20480 + 2 * 4 * 80  # uint8 + absmax per 256
    assert optimizer_state_bytes(small, opt("adamw8bit")) == 2 * 4 * 1024  # under min_8bit_size: fp32
    assert optimizer_state_bytes(big, opt("came")) == 4 * (20480 + 2 * (16 + 1280))  # factored
    assert optimizer_state_bytes((1280,), opt("came")) == 4 * 2 * 1280
    assert optimizer_state_bytes(big, opt("prodigy")) == 4 * 4 * 20480
    assert optimizer_state_bytes(big, opt("prodigy"), zero_init=True) == 4 * (3 * 20480 + 1)


def test_optimizer_state_matches_the_libraries():
    """The formulas against the state each optimizer really allocates in its first step."""
    import torch

    from lorafw.optim.optimizers import build_optimizer

    shapes = [(8, 320), (1280, 8), (8, 4, 3, 3), (320, 8, 1, 1), (320,)]
    for o in (opt("adamw"), dataclasses.replace(opt("came", eps=[1e-30, 1e-16]), betas=(0.9, 0.999, 0.9999)), opt("prodigy")):
        params = [torch.nn.Parameter(torch.randn(s)) for s in shapes] + [torch.nn.Parameter(torch.zeros(1280, 8))]
        optim = build_optimizer(o, [{"params": params, "lr": o.lr}])
        for p in params:
            p.grad = torch.randn_like(p)
        optim.step()
        for i, p in enumerate(params):
            real = sum(v.numel() * v.element_size() for k, v in optim.state[p].items() if torch.is_tensor(v) and k not in ("step", "RMS"))  # scalars
            assert real == optimizer_state_bytes(tuple(p.shape), o, zero_init=i == len(shapes)), (o.name, p.shape)


# -- the estimate ----------------------------------------------------------------------------------------
def test_components_add_up(tmp_path):
    e = estimate(spec_for(tmp_path, "pdxl"))
    c = e.components
    resident = sum(v for k, v in c.items() if not k.endswith("activations"))
    assert e.phases["training step"] == resident + c["unet_activations"] + c["text_encoder_activations"]
    assert e.peak_allocated == max(e.phases.values()) == e.phases[e.peak_phase]
    assert e.peak == int(e.peak_allocated * (1 + vram.FRAGMENTATION) + vram.CUDA_FIXED)
    assert e.bucket == (1024, 1024) and e.batch_size == 2
    cal = vram.load_calibration()["archs"]["sdxl"]
    assert c["unet_weights"] == 2 * cal["params"]["unet"] and c["text_encoder_weights"] == 2 * sum(cal["params"]["text_encoders"])
    assert c["adapters"] == c["adapter_gradients"] == 2 * e.adapter_parameters  # full_bf16
    assert c["fp32_masters"] == 4 * e.adapter_parameters


def test_checkpointing_lowers_activations(tmp_path):
    base = spec_for(tmp_path, "sd15_character", "dataset.resolution=768")
    off, on = estimate(with_train(base, gradient_checkpointing=False)), estimate(with_train(base, gradient_checkpointing=True))
    assert on.components["unet_activations"] < off.components["unet_activations"] / 2
    assert on.unet_activations_other == off.components["unet_activations"]
    assert on.components["text_encoder_activations"] < off.components["text_encoder_activations"]
    assert on.peak < off.peak
    two = estimate(with_train(base, batch_size=4))
    assert two.components["unet_activations"] > 1.9 * off.components["unet_activations"]


def test_without_a_dataset_the_estimate_is_one_w_by_h_bucket(tmp_path):
    wide = estimate(spec_for(tmp_path, "sd15_character", "dataset.resolution=[512,768]"))
    square = estimate(spec_for(tmp_path, "sd15_character", "dataset.resolution=512"))
    assert (wide.bucket, square.bucket) == ((512, 768), (512, 512))
    assert wide.components["unet_activations"] > square.components["unet_activations"]


def test_caching_drops_the_vae_and_text_encoders(tmp_path):
    base = spec_for(tmp_path, "sd15_character", "dataset.resolution=512")
    cached, raw = estimate(base), estimate(with_data(base, cache_latents=False))
    assert "vae_weights" not in cached.components and "latent caching" in cached.phases
    assert raw.components["vae_weights"] > 0 and "latent caching" not in raw.phases
    frozen = dataclasses.replace(base, optimizer=dataclasses.replace(base.optimizer, text_encoder_lr=0.0))
    te_cached = with_data(frozen, cache_text_encoder_outputs=True, shuffle_caption=False)
    e = estimate(te_cached)
    assert "text_encoder_weights" not in e.components and "text_encoder_activations" not in e.components
    assert "text_encoder_activations" not in estimate(frozen).components  # frozen: no backward through it


def test_caching_phase_counts_the_images_encoded_at_once(tmp_path):
    spec = with_data(spec_for(tmp_path, "pdxl"), vae_batch_size=8)
    one = estimate(spec, [Bucket(1024, 1024, 1)])
    eight = estimate(spec, [Bucket(1024, 1024, 30)])
    assert (one.caching_images, eight.caching_images) == (1, 8)
    assert estimate(spec_for(tmp_path, "pdxl"), [Bucket(1024, 1024, 30)]).caching_images == 1  # default: kohya's 1
    per_image = (eight.phases["latent caching"] - one.phases["latent caching"]) / 7
    assert 2.0 * GiB < per_image < 3.5 * GiB  # fp32 VAE (no_half_vae) at 1024²: ~2560 bytes per pixel
    assert estimate(spec, [Bucket(512, 512, 4), Bucket(1024, 1024, 2)]).bucket == (1024, 1024)


def test_optimizer_and_precision_choices(tmp_path):
    base = spec_for(tmp_path, "sd15_character", "optimizer=adamw", "train.mixed_precision=bf16")
    adamw = estimate(base).components["optimizer_state"]
    eight = estimate(dataclasses.replace(base, optimizer=dataclasses.replace(base.optimizer, name="adamw8bit"))).components
    assert eight["optimizer_state"] < adamw / 2
    full = estimate(with_train(base, full_bf16=True)).components
    assert full["adapters"] * 2 == estimate(base).components["adapters"] and "fp32_masters" in full
    fp32 = estimate(with_train(base, mixed_precision="no"))
    assert fp32.components["unet_weights"] == 2 * estimate(base).components["unet_weights"]


# -- suggestions -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ["pdxl", "pdxl_dora", "sd15_character"])
@pytest.mark.parametrize("budget", [8, 12, 24])
def test_suggestions_fit_and_are_sorted(tmp_path, recipe, budget):
    s = suggest(spec_for(tmp_path, recipe), budget, [Bucket(1024, 1024, 1)])
    assert s.fits_now == (s.current.estimate.peak <= budget * GiB)
    for o in s.options:
        assert o.fits and o.estimate.peak <= budget * GiB
    keys = [(o.changes_training, -round(o.speed, 4)) for o in s.options]
    assert keys == sorted(keys)
    if s.fits_now:
        assert s.options and s.options[0].speed >= 1.0
    if not s.options:
        assert s.smallest.estimate.peak > budget * GiB
    for o in s.if_latents_on_disk:
        assert o.estimate.peak_after_caching <= budget * GiB and "latent caching" in o.estimate.phases
    for o in s.options + s.if_latents_on_disk:  # every suggestion is a command line that validates
        spec_from_dict(compose_dict(recipe, [f"dataset.root={tmp_path}", "base_model.path=-", *o.overrides]), need_model=False)


def test_when_caching_latents_is_the_peak(tmp_path):
    """pdxl at 1024² with vae_batch_size=8: the fp32 VAE encoding 8 images at once is the peak."""
    spec = with_data(spec_for(tmp_path, "pdxl"), vae_batch_size=8)
    s = suggest(spec, 12, [Bucket(1024, 1024, 20)])
    e = s.current.estimate
    assert e.peak_phase == "latent caching" and e.caching_images == 8 and not s.fits_now
    assert e.peak_after_caching < 12 * GiB < e.peak
    assert s.options and s.options[0].overrides == ["dataset.vae_batch_size=1"]  # same speed, fits
    assert "peak while caching latents" in vram.render(s)
    hopeless = suggest(spec, 4, [Bucket(1024, 1024, 20)])  # nothing fits: what fits once latents are on disk
    assert not hopeless.options and "nothing fits in 4 GiB" in vram.render(hopeless)


def test_pdxl_as_the_recipe_says_fits_12_gib(tmp_path):
    """The guide's promise, by the estimate: the VAE caches alone, one image at a time (kohya's default)."""
    s = suggest(spec_for(tmp_path, "pdxl"), 12, [Bucket(1024, 1024, 20)])
    assert s.current.estimate.peak_phase != "latent caching" and s.fits_now


def test_more_memory_buys_speed(tmp_path):
    spec = spec_for(tmp_path, "pdxl")
    small, big = suggest(spec, 12, [Bucket(1024, 1024, 1)]), suggest(spec, 80, [Bucket(1024, 1024, 1)])
    assert big.options[0].speed > 1.0 and "train.gradient_checkpointing=false" in big.options[0].overrides
    if small.options:
        assert small.options[0].speed <= big.options[0].speed


def test_recipe_estimates(tmp_path):
    """The recipes the issue names: checkpointing lowers each peak, and the pieces add up. (The figures
    themselves are printed by `lorafw plan --vram` and recorded in benchmarks/RESULTS.md, not here.)"""
    for recipe, res in (("sd15_character", 768), ("pdxl", 1024), ("pdxl_dora", 1024)):
        spec = spec_for(tmp_path, recipe, f"dataset.resolution={res}", "train.batch_size=2")
        on, off = (estimate(with_train(spec, gradient_checkpointing=c), [Bucket(res, res, 1)]) for c in (True, False))
        assert on.peak < off.peak and on.components["unet_activations"] < off.components["unet_activations"]
        for e in (on, off):
            assert e.components["unet_weights"] < e.peak_allocated <= e.peak
            assert e.phases["training step"] == sum(v for k, v in e.components.items())


# -- Anima ------------------------------------------------------------------------------------------------
def anima_spec(tmp_path: Path, *extra: str):
    """What sd-scripts' Anima guide trains: LoRA dim 8, bf16, checkpointing, latents and Qwen3 outputs cached."""
    return spec_for(tmp_path, None, "base_model.arch=anima", "dataset.resolution=1024", "train.mixed_precision=bf16",
                    "train.gradient_checkpointing=true", "network.dim=8", "network.alpha=4", "optimizer.text_encoder_lr=0",
                    "dataset.cache_text_encoder_outputs=true", "dataset.shuffle_caption=false", *extra)


DIT_LORA_8 = 28 * 8 * (6 * (2048 + 2048) + 2 * (1024 + 2048) + 2 * (2048 + 8192))  # rank × (in + out) per layer


def test_anima_adapter_bytes_dim_8(tmp_path):
    e = estimate(anima_spec(tmp_path, "train.full_bf16=true", "optimizer=adamw"))
    assert e.adapter_parameters == DIT_LORA_8 == 11_468_800
    c = e.components
    assert c["adapters"] == c["adapter_gradients"] == 2 * DIT_LORA_8 and c["fp32_masters"] == 4 * DIT_LORA_8
    assert c["optimizer_state"] == 2 * 4 * DIT_LORA_8 + 4 * 0  # AdamW: two fp32 moments
    fp32 = estimate(anima_spec(tmp_path, "optimizer=adamw")).components
    assert fp32["adapters"] == 4 * DIT_LORA_8 and "fp32_masters" not in fp32
    cal = vram.load_calibration()["archs"]["anima"]
    llm = estimate(anima_spec(tmp_path, "network.train_llm_adapter=true"))
    extra = sum(8 * (r[2] + r[3]) * r[5] for r in cal["targets"]["llm_adapter"])
    assert llm.adapter_parameters == DIT_LORA_8 + extra and extra == 6 * 8 * (8 * 2048 + 2 * 5120)
    assert any("train_llm_adapter" in n for n in llm.notes)
    off = estimate(anima_spec(tmp_path, "network.train_llm_adapter=true", "optimizer.llm_adapter_lr=0"))
    assert off.adapter_parameters == DIT_LORA_8  # lr 0: those adapters do not train


def test_anima_estimate_from_the_calibration(tmp_path):
    """Weights from the real counts; activations from the DiT's fit at (h/16)·(w/16) tokens, text 512 tokens."""
    cal = vram.load_calibration()["archs"]["anima"]
    spec = anima_spec(tmp_path, "train.batch_size=2")
    e = estimate(spec, [Bucket(1024, 1024, 1), Bucket(832, 1216, 1)])
    c = e.components
    assert c["unet_weights"] == 2 * cal["params"]["unet"] and 3.8 * GiB < c["unet_weights"] < 4.0 * GiB
    assert "text_encoder_weights" not in c and "vae_weights" not in c
    fit = cal["activations"]["lora"]["checkpointing"]
    assert e.bucket == (1024, 1024) and c["unet_activations"] == int(vram._per_image(fit, 2, 64 * 64))
    assert e.unet_activations_other == int(vram._per_image(cal["activations"]["lora"]["no_checkpointing"], 2, 64 * 64))
    assert e.unet_activations_other > 2 * c["unet_activations"]
    half = estimate(spec, [Bucket(512, 512, 1)])
    assert half.components["unet_activations"] == int(vram._per_image(fit, 2, 32 * 32))
    assert e.phases["latent caching"] == 2 * cal["params"]["vae"] + int(vram._per_image(cal["vae_encode"]["half"], 1, 1024 * 1024))
    assert e.label("unet_weights") == "DiT + LLM adapter weights" and e.label("unet_activations") == "DiT activations"
    s = suggest(spec, 24, [Bucket(1024, 1024, 1)])
    text = vram.render(s)
    assert "DiT + LLM adapter weights (bf16)" in text and "the real Anima DiT" in s.note and "DiT tokens" in s.note


def test_anima_text_encoder_cached_or_not(tmp_path):
    """Qwen3-0.6B: absent when its outputs are cached; its weights when frozen; its saved activations at 512 tokens
    (whatever train.max_token_length says) and its 196 layers' adapters when it trains."""
    cal = vram.load_calibration()["archs"]["anima"]
    cached = estimate(anima_spec(tmp_path))
    frozen = estimate(anima_spec(tmp_path, "dataset.cache_text_encoder_outputs=false"))
    trained = estimate(anima_spec(tmp_path, "dataset.cache_text_encoder_outputs=false", "optimizer.text_encoder_lr=1e-5"))
    assert "text_encoder_weights" not in cached.components
    assert frozen.components["text_encoder_weights"] == 2 * cal["params"]["text_encoders"][0]
    assert "text_encoder_activations" not in frozen.components
    te_fit = cal["text_encoder_activations"]["checkpointing"]
    assert trained.components["text_encoder_activations"] == int(vram._per_image(te_fit, 1, 512)) > 0
    longer = estimate(anima_spec(tmp_path, "dataset.cache_text_encoder_outputs=false", "optimizer.text_encoder_lr=1e-5",
                                 "train.max_token_length=150"))
    assert longer.components["text_encoder_activations"] == trained.components["text_encoder_activations"]
    te_params = sum(8 * (r[2] + r[3]) * r[5] for r in cal["targets"]["te"])
    assert trained.adapter_parameters == DIT_LORA_8 + te_params
    assert cached.peak < frozen.peak < trained.peak


@pytest.mark.parametrize("budget", [8, 12, 24])
def test_anima_suggestions(tmp_path, budget):
    spec = anima_spec(tmp_path, "dataset.cache_text_encoder_outputs=false", "train.gradient_checkpointing=false",
                      "train.batch_size=2")
    s = suggest(spec, budget, [Bucket(1024, 1024, 1)])
    assert s.fits_now == (s.current.estimate.peak <= budget * GiB)
    for o in s.options:
        assert o.fits and o.estimate.peak <= budget * GiB
        spec_from_dict(compose_dict(None, [f"dataset.root={tmp_path}", "base_model.path=-", "base_model.arch=anima",
                                           "dataset.resolution=1024", "train.mixed_precision=bf16",
                                           "train.gradient_checkpointing=false", "network.dim=8", "network.alpha=4",
                                           "optimizer.text_encoder_lr=0", "dataset.shuffle_caption=false",
                                           "train.batch_size=2", *o.overrides]), need_model=False)
    keys = [(o.changes_training, -round(o.speed, 4)) for o in s.options]
    assert keys == sorted(keys)
    if budget == 8:  # 4 GiB of DiT weights and 1024² activations: checkpointing and a smaller batch are needed
        assert not s.fits_now
    if budget == 24:
        assert s.options


# -- the command line ------------------------------------------------------------------------------------
def test_plan_vram_command_imports_no_torch(tmp_path):
    make_folder(tmp_path, "3_kafka", [(64, 64)] * 4, ["kafka"])
    out = lorafw_main_without_torch("plan", "--vram", "12", "+recipe=pdxl", f"dataset.root={tmp_path}")
    assert "GPU memory, estimated" in out and "how: activations:" in out and "not yet checked against a GPU" in out
    assert "budget 12 GiB" in out and ("fastest settings that fit 12 GiB" in out or "nothing fits in 12 GiB" in out)
    data = json.loads(lorafw_main_without_torch("plan", "--json", "--vram=8", "+recipe=sd15_character", f"dataset.root={tmp_path}"))
    assert data["T"] == 12 and data["vram"]["budget_gib"] == 8 and "calibration" in data["vram"]
    assert data["vram"]["estimate"]["bucket"] == [768, 768]


def test_plan_vram_anima(tmp_path):
    make_folder(tmp_path, "3_kafka", [(64, 64)] * 4, ["kafka"])
    out = lorafw_main_without_torch("plan", "--vram", "24", "base_model.arch=anima", "dataset.resolution=1024",
                                    "train.gradient_checkpointing=true", f"dataset.root={tmp_path}")
    assert "GPU memory, estimated" in out and "DiT + LLM adapter weights" in out and "DiT activations" in out
    assert "the real Anima DiT" in out and "budget 24 GiB" in out


def test_plan_vram_bad_value(tmp_path, capsys):
    from lorafw.cli import main

    make_folder(tmp_path, "3_kafka", [(64, 64)] * 2, ["kafka"])
    assert main(["plan", "--vram", "lots", "+recipe=pdxl", f"dataset.root={tmp_path}"]) == 2
    assert "argument --vram: needs the card's memory in GB" in capsys.readouterr().err
    assert main(["plan", f"dataset.root={tmp_path}", "--vram"]) == 2
