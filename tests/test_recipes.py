"""Each shipped recipe resolves to exactly the values RECIPES.md lists (written out here, independently)."""

from __future__ import annotations

import pytest

from lorafw.config.compose import compose_dict, recipe_names
from lorafw.config.validate import spec_from_dict

PATHS = ["base_model.path=/models/x.safetensors", "dataset.root=/data/x"]

SD15_CHARACTER = {
    "base_model.arch": "sd15",
    "dataset.resolution": 768,
    "dataset.enable_bucket": True,
    "dataset.min_bucket_reso": 256,
    "dataset.max_bucket_reso": 1024,
    "dataset.bucket_reso_steps": 64,
    "dataset.shuffle_caption": True,
    "dataset.keep_tokens": 1,
    "dataset.cache_latents": True,
    "train.batch_size": 2,
    "train.epochs": 10,
    "optimizer.unet_lr": 5e-4,
    "optimizer.text_encoder_lr": 1e-4,
    "scheduler.name": "cosine_with_restarts",
    "scheduler.num_cycles": 3,
    "scheduler.warmup_ratio": 0.0,
    "train.loss_type": "l2",
    "train.min_snr_gamma": 5.0,
    "network.algo": "lora",
    "network.dim": 16,
    "network.alpha": 8,
    "network.dora_wd": False,
    "optimizer.name": "adamw8bit",
    "optimizer.weight_decay": 0.1,
    "optimizer.betas": [0.9, 0.99],
    "train.clip_skip": 2,
    "train.max_token_length": 225,
    "train.mixed_precision": "auto",
    "output.save_every_n_epochs": 1,
}

SD15_PRODIGY = {
    **SD15_CHARACTER,
    "optimizer.name": "prodigy",
    "optimizer.lr": 1.0,
    "optimizer.unet_lr": 1.0,
    "optimizer.text_encoder_lr": 1.0,
    "optimizer.weight_decay": 0.01,
    "optimizer.betas": [0.9, 0.999],
    "optimizer.args": {"decouple": True, "d_coef": 2, "use_bias_correction": True, "safeguard_warmup": True},
    "network.dim": 16,
    "network.alpha": 16,
    "scheduler.name": "constant_with_warmup",
    "scheduler.warmup_ratio": 0.05,
    "scheduler.num_cycles": None,
    "train.epochs": 20,
}

PDXL = {
    "base_model.arch": "sdxl",
    "train.mixed_precision": "bf16",
    "train.full_bf16": True,
    "train.no_half_vae": True,
    "dataset.resolution": 1024,
    "dataset.enable_bucket": True,
    "dataset.max_bucket_reso": 2048,
    "dataset.bucket_reso_steps": 64,
    "train.gradient_checkpointing": True,
    "train.gradient_accumulation_steps": 1,
    "train.attention": "sdpa",
    "dataset.cache_latents": True,
    "dataset.cache_latents_to_disk": True,
    "train.batch_size": 2,
    "train.max_token_length": 225,
    "network.algo": "lora",
    "network.dim": 8,
    "network.alpha": 4,
    "optimizer.name": "came",
    "optimizer.weight_decay": 0.04,
    "scheduler.name": "rex",
    "scheduler.warmup_ratio": 0.05,
    "scheduler.min_lr": 1e-6,
    "scheduler.d": 0.9,
    "optimizer.lr": 1e-4,
    "optimizer.unet_lr": 1e-4,
    "optimizer.text_encoder_lr": 1e-6,
    "train.loss_type": "l2",
    "train.min_snr_gamma": 5.0,
}

PDXL_DORA = {
    **PDXL,
    "network.algo": "locon",
    "network.dora_wd": True,
    "network.dim": 8,
    "network.alpha": 4,
    "network.conv_dim": 4,
    "network.conv_alpha": 2,
    "optimizer.lr": 5e-5,
    "optimizer.unet_lr": 5e-5,
    "optimizer.text_encoder_lr": 1e-6,
}

ILLUSTRIOUS = {**PDXL, "train.prediction_type": "auto", "train.zero_terminal_snr": None,
               "train.scale_v_pred_loss_like_noise_pred": False}

NOOBAI_VPRED = {**PDXL, "train.prediction_type": "v_prediction", "train.zero_terminal_snr": True,
                "train.scale_v_pred_loss_like_noise_pred": True}

# PDXL on a rectified-flow SDXL: the makers' σ draw (docs/models.md: bluvoll/sd-scripts' logit-normal −0.2/1.5, shift
# 2.5 for ChenkinRF), min-SNR off (a DDPM weight), noise offset 0, sampled at shift 3
SDXL_RF = {**PDXL, "train.prediction_type": "flow", "train.timestep_sampling": "sigma", "train.weighting_scheme": "logit_normal",
           "train.logit_mean": -0.2, "train.logit_std": 1.5, "train.discrete_flow_shift": 2.5, "train.min_snr_gamma": None,
           "train.noise_offset": 0.0, "sample.flow_shift": 3.0}

# Anima: sd-scripts' recommended settings (docs/anima_train_network.md's example command), not in RECIPES.md
ANIMA_FILES = ["base_model.text_encoder=/models/qwen_3_06b_base.safetensors", "base_model.vae=/models/qwen_image_vae.safetensors"]
ANIMA_CHARACTER = {
    "base_model.arch": "anima",
    "base_model.text_encoder": "/models/qwen_3_06b_base.safetensors",
    "base_model.vae": "/models/qwen_image_vae.safetensors",
    "base_model.llm_adapter": None,
    "network.algo": "lora",
    "network.dim": 8,
    "network.alpha": 1,
    "network.dora_wd": False,
    "network.train_llm_adapter": False,
    "optimizer.name": "adamw8bit",
    "optimizer.lr": 1e-4,
    "optimizer.unet_lr": 1e-4,
    "optimizer.text_encoder_lr": 0,
    "optimizer.llm_adapter_lr": None,
    "optimizer.weight_decay": 0.01,
    "optimizer.betas": [0.9, 0.999],
    "scheduler.name": "constant",
    "scheduler.warmup_ratio": None,
    "train.prediction_type": "flow",
    "train.timestep_sampling": "sigmoid",
    "train.sigmoid_scale": 1.0,
    "train.discrete_flow_shift": 1.0,
    "train.weighting_scheme": "uniform",
    "train.loss_type": "l2",
    "train.min_snr_gamma": None,
    "train.mixed_precision": "bf16",
    "train.gradient_checkpointing": True,
    "train.epochs": 10,
    "train.batch_size": 2,
    "dataset.resolution": 1024,
    "dataset.enable_bucket": True,
    "dataset.min_bucket_reso": 512,
    "dataset.max_bucket_reso": 2048,
    "dataset.bucket_reso_steps": 64,
    "dataset.shuffle_caption": False,
    "dataset.cache_latents": True,
    "dataset.cache_text_encoder_outputs": True,
    "output.save_every_n_epochs": 1,
    "sample.flow_shift": None,
}
ANIMA_STYLE = {**ANIMA_CHARACTER, "train.epochs": 20}

EXPECTED = {"sd15_character": SD15_CHARACTER, "sd15_prodigy": SD15_PRODIGY, "pdxl": PDXL, "pdxl_dora": PDXL_DORA,
            "illustrious": ILLUSTRIOUS, "noobai_vpred": NOOBAI_VPRED, "anima_character": ANIMA_CHARACTER,
            "anima_style": ANIMA_STYLE, "sdxl_rf": SDXL_RF}
EXTRA = {"anima_character": ANIMA_FILES, "anima_style": ANIMA_FILES}  # files a recipe's family needs besides PATHS


def get(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def test_every_shipped_recipe_is_checked_here():
    assert sorted(recipe_names()) == sorted(EXPECTED)


@pytest.mark.parametrize("recipe", sorted(EXPECTED))
def test_recipe_values(recipe):
    cfg = compose_dict(recipe, PATHS + EXTRA.get(recipe, []))
    wrong = {k: (get(cfg, k), v) for k, v in EXPECTED[recipe].items() if get(cfg, k) != v}
    assert not wrong, f"{recipe}: (got, RECIPES.md) {wrong}"


@pytest.mark.parametrize("recipe", ["sd15_character", "sd15_prodigy"])
def test_sd15_recipes_validate_without_notes(recipe):
    spec, notes = spec_from_dict(compose_dict(recipe, PATHS), check_paths=False)
    assert notes == []
    assert spec.optimizer.unet_lr == EXPECTED[recipe]["optimizer.unet_lr"]


def test_lr_override_moves_unet_lr_but_not_the_recipes_text_encoder_lr():
    cfg = compose_dict("sd15_character", PATHS + ["optimizer.lr=3e-4"])
    assert cfg["optimizer"]["unet_lr"] == 3e-4 and cfg["optimizer"]["text_encoder_lr"] == 1e-4
    cfg = compose_dict("sd15_prodigy", PATHS + ["optimizer.lr=0.5"])
    assert cfg["optimizer"]["unet_lr"] == 0.5 and cfg["optimizer"]["text_encoder_lr"] == 0.5  # "same lr for both"


def test_constant_with_warmup_brings_the_guides_warmup():
    cfg = compose_dict("sd15_character", PATHS + ["scheduler=constant_with_warmup"])
    assert cfg["scheduler"]["warmup_ratio"] == 0.05
    _, notes = spec_from_dict(cfg, check_paths=False)
    assert notes == ["scheduler.num_cycles=3 is not used by scheduler constant_with_warmup"]


def test_recipe_then_group_override_order():
    cfg = compose_dict("sd15_character", PATHS + ["optimizer=adamw"])
    assert cfg["optimizer"]["name"] == "adamw"
    assert cfg["optimizer"]["betas"] == [0.9, 0.99]  # the recipe's values still apply on top


@pytest.mark.parametrize("recipe,group,algo,dora", [("sd15_character", "network=locon", "locon", False),
                                                    ("sd15_character", "network=dora", "locon", True),
                                                    ("pdxl_dora", "network=lora", "lora", False)])
def test_a_network_chosen_on_top_of_a_recipe_takes_effect(recipe, group, algo, dora):
    cfg = compose_dict(recipe, PATHS + [group])
    assert (cfg["network"]["algo"], cfg["network"]["dora_wd"]) == (algo, dora)
    if recipe.startswith("sd15"):
        spec, notes = spec_from_dict(cfg, check_paths=False)
        assert spec.network.conv_dim == 16 and notes == []


@pytest.mark.parametrize("base,prediction,ztsnr", [("illustrious", "auto", None), ("noobai_eps", "epsilon", None),
                                                   ("noobai_vpred", "v_prediction", True)])
def test_illustrious_and_noobai_bases(base, prediction, ztsnr):
    cfg = compose_dict(None, PATHS + [f"base_model={base}"])
    assert cfg["base_model"]["arch"] == "sdxl"
    assert (cfg["train"]["prediction_type"], cfg["train"]["zero_terminal_snr"]) == (prediction, ztsnr)
    spec, _ = spec_from_dict(cfg, check_paths=False)
    assert spec.train.prediction_type == prediction


@pytest.mark.parametrize("recipe", ["illustrious", "noobai_vpred"])
def test_new_sdxl_recipes_print_their_objective_with_cfg_job(recipe):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "lorafw", f"+recipe={recipe}", *PATHS, "--cfg", "job"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "arch: sdxl" in text and "min_snr_gamma: 5.0" in text
    if recipe == "noobai_vpred":
        for line in ("prediction_type: v_prediction", "zero_terminal_snr: true", "scale_v_pred_loss_like_noise_pred: true"):
            assert line in text, line
    else:
        assert "prediction_type: auto" in text


@pytest.mark.parametrize("recipe", ["anima_character", "anima_style"])
def test_anima_recipes_validate_without_notes(recipe):
    """The values check out (captions are not shuffled, so their encodings can be cached). The family itself is
    checked once it is registered; until then the registry's refusal is the only problem."""
    from lorafw.errors import ConfigError
    from lorafw.families import available

    cfg = compose_dict(recipe, PATHS + ANIMA_FILES)
    spec, notes = spec_from_dict(cfg, check_paths=False, need_model=False)
    assert notes == [] and spec.optimizer.text_encoder_lr == 0 and spec.dataset.cache_text_encoder_outputs
    if "anima" in available():
        spec_from_dict(cfg, check_paths=False)
    else:
        with pytest.raises(ConfigError) as e:
            spec_from_dict(cfg, check_paths=False)
        assert e.value.problems == [f"base_model.arch: no architecture is registered as 'anima'; available: "
                                    f"{', '.join(available())}"]


def test_an_anima_run_names_its_text_encoder_and_vae():
    """Anima's DiT file holds neither: a run without them is refused naming both, before anything loads."""
    from lorafw.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        spec_from_dict(compose_dict("anima_character", PATHS), check_paths=False)
    named = [p for p in e.value.problems if p.startswith(("base_model.text_encoder:", "base_model.vae:"))]
    assert len(named) == 2 and "qwen_3_06b_base.safetensors" in named[0] and "qwen_image_vae" in named[1], named
    spec_from_dict(compose_dict("anima_character", PATHS), check_paths=False, need_model=False)  # plan / lint: not needed


def test_anima_files_must_exist(tmp_path):
    from lorafw.errors import ConfigError

    (tmp_path / "data").mkdir()
    with pytest.raises(ConfigError) as e:
        spec_from_dict(compose_dict("anima_character", [f"base_model.path={tmp_path}/dit.safetensors",
                                                        f"dataset.root={tmp_path}/data"] + ANIMA_FILES))
    text = "\n".join(e.value.problems)
    assert "base_model.text_encoder: /models/qwen_3_06b_base.safetensors does not exist" in text
    assert "base_model.vae: /models/qwen_image_vae.safetensors does not exist" in text
