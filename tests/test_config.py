"""Composition, validation and the spec: bad input fails early with messages naming key, value and fix."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from lorafw.config.compose import (
    apply_overrides,
    check_all,
    compose,
    compose_dict,
    conf_dir,
    expand_sweep,
    load_spec,
)
from lorafw.config.spec import NetworkSpec, RunSpec
from lorafw.config.typed import from_dict
from lorafw.config.validate import spec_from_dict
from lorafw.errors import ConfigError

# The message lists the section's keys in declaration order: the schema's own, so a new key needs no edit here.
NETWORK_KEYS = "(valid keys: " + ", ".join(f.name for f in dataclasses.fields(NetworkSpec)) + ")"

PATHS = ["base_model.path=/m.safetensors", "dataset.root=/d"]


def problems_of(overrides, recipe="sd15_character", check_paths=False) -> list[str]:
    with pytest.raises(ConfigError) as e:
        spec_from_dict(compose_dict(recipe, overrides), check_paths=check_paths)
    return e.value.problems


def groups() -> dict[str, list[str]]:
    return {g.name: sorted(p.stem for p in g.glob("*.yaml")) for g in conf_dir().iterdir() if g.is_dir() and g.name != "recipe"}


def test_config_groups_have_the_required_options():
    g = groups()
    assert set(g["base_model"]) >= {"nai", "pdxl", "sd15", "sdxl"}
    assert set(g["network"]) >= {"lora", "locon", "dora"}
    assert set(g["optimizer"]) >= {"adamw", "adamw8bit", "prodigy", "came"}
    assert set(g["scheduler"]) >= {"cosine_restarts", "constant_with_warmup", "rex"}
    assert set(g["dataset"]) >= {"default", "concepts"}


@pytest.mark.parametrize("group,option", [(g, o) for g, opts in groups().items() for o in opts])
def test_every_option_of_every_group_composes_and_validates(group, option):
    extra = ["dataset.folders=[{path: /d/outfit1, repeats: 5, trigger: zetadef}]"] if option == "concepts" else []
    if option == "anima":  # the family keeps its text encoder and VAE in files of their own
        extra = ["base_model.text_encoder=/m/qwen_3_06b_base.safetensors", "base_model.vae=/m/qwen_image_vae.safetensors"]
    cfg = compose_dict(None, PATHS + [f"{group}={option}"] + extra)
    spec, _ = spec_from_dict(cfg, check_paths=False)
    assert isinstance(spec, RunSpec)


def test_unknown_key_in_override_suggests_the_nearest():
    with pytest.raises(ConfigError) as e:
        compose_dict("sd15_character", PATHS + ["optimizer.lrr=1e-4"])
    assert "optimizer.lrr: unknown key; did you mean optimizer.lr?" in str(e.value)


def test_unknown_key_forced_in_is_still_caught_with_a_suggestion():
    probs = problems_of(PATHS + ["+network.dimm=8"])
    assert probs == [
        "network.dimm: unknown key; did you mean network.dim? "
        + NETWORK_KEYS
    ]


def test_unknown_option_and_recipe_suggest_the_nearest():
    with pytest.raises(ConfigError) as e:
        compose_dict(None, PATHS + ["optimizer=adamx"])
    assert "optimizer=adamx: no such optimizer option; did you mean optimizer=adamw?" in str(e.value)
    with pytest.raises(ConfigError) as e:
        compose_dict("sd15_characte", PATHS)
    assert "did you mean +recipe=sd15_character?" in str(e.value)


@pytest.mark.parametrize(
    "override,expected",
    [
        ("optimizer.lr=-1", "optimizer.lr: must be > 0, got -1"),
        ("network.dim=0", "network.dim: must be at least 1, got 0"),
        ("optimizer.name=adam", "optimizer.name: unknown optimizer 'adam'; choose one of: adamw, adamw8bit, paged_adamw8bit, "
         "lion, lion8bit, paged_lion8bit, sgd_nesterov, sgd_nesterov8bit, dadaptation, dadapt_adam, dadapt_lion, prodigy, "
         "adafactor, came, schedulefree_adamw, schedulefree_radam, or give any optimizer class as module.Class"),
        ("train.mixed_precision=fp8", "train.mixed_precision: 'fp8' is not allowed; choose one of: auto, no, fp16, bf16"),
        ("train.max_token_length=100", "train.max_token_length: 100 is not allowed; choose one of: 75, 150, 225"),
        ("network.dim=abc", "network.dim: expected an integer, got 'abc' (str)"),
        ("optimizer.betas=[0.9]", "optimizer.betas: adamw8bit takes 2 betas, got [0.9]"),
        ("+optimizer.args.foo=1", "optimizer.args.foo: not an argument of adamw8bit"),
        ("network.conv_dim=4", "network.conv_dim: set (4) but network.algo=lora has no convolution adapters"),
        ("dataset.resolution=32", "dataset.resolution: each side must be at least 64, got 32"),
        ("dataset.resolution=[512,640,768]",
         "dataset.resolution: give N or W,H (e.g. 512 or [512, 768]), got [512, 640, 768]"),
        ("dataset.resolution=abc", "dataset.resolution: expected an integer or a list, got 'abc' (str)"),
        ("dataset.bucket_reso_steps=32",
         "dataset.bucket_reso_steps: SD1.5 needs a multiple of 64 (the VAE's 8x and the UNet's three 2x "
         "downsamplings), got 32; sd-scripts' train_network.py refuses it too (verify_bucket_reso_steps(64))"),
        ("dataset.random_crop=true",
         "dataset.random_crop: a random crop is a new window every step, so its latent cannot be encoded once, as "
         "dataset.cache_latents=true does (sd-scripts refuses the pair too: is_latent_cacheable); set "
         "dataset.cache_latents=false"),
        ("train.device=gpu", "train.device: 'gpu' is not a device; use auto, cpu, cuda or cuda:N"),
        ("dataset.caption_extension=txt", "dataset.caption_extension: must start with '.'"),
        ("train.full_bf16=true", "train.full_bf16: needs train.mixed_precision=bf16, got auto"),
        ("output.name=a/b", "output.name: 'a/b' is not a usable file name"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(override, expected):
    probs = problems_of(PATHS + [override])
    assert any(p.startswith(expected) for p in probs), probs


@pytest.mark.parametrize("value,size", [("512", (512, 512)), ("[512,650]", (512, 650)), ("'512,650'", (512, 650)),
                                        ("'768'", (768, 768)), ("[640]", (640, 640)), ("[1024,768]", (1024, 768))])
def test_resolution_is_n_or_w_h_as_kohyas(value, size):
    spec, _ = spec_from_dict(compose_dict("sd15_character", PATHS + [f"dataset.resolution={value}"]), check_paths=False)
    assert spec.dataset.size == size


@pytest.mark.parametrize("arch,steps,ok", [
    ("sd15", 64, True), ("sd15", 128, True), ("sd15", 32, False), ("sd15", 1, False), ("sdxl", 32, True),
    ("sdxl", 96, True), ("sdxl", 16, False), ("anima", 16, True), ("anima", 48, True), ("anima", 8, False)])
def test_bucket_reso_steps_follows_sd_scripts_per_family(arch, steps, ok):
    """sd-scripts' verify_bucket_reso_steps(64 / 32 / 16) in train_network.py, sdxl_train_network.py and
    anima_train_network.py; like there, only with buckets on (without them the value is unused)."""
    extra = ["base_model.vae=/v", "base_model.text_encoder=/t"] if arch == "anima" else []
    args = PATHS + extra + [f"base_model.arch={arch}", f"dataset.bucket_reso_steps={steps}"]
    if ok:
        spec_from_dict(compose_dict(None, args), check_paths=False)
    else:
        script = {"sd15": "train_network.py", "sdxl": "sdxl_train_network.py", "anima": "anima_train_network.py"}[arch]
        (msg,) = problems_of(args, recipe=None)
        assert msg.startswith("dataset.bucket_reso_steps: ")
        assert f"got {steps}; sd-scripts' {script} refuses it too" in msg
    spec_from_dict(compose_dict(None, args + ["dataset.enable_bucket=false"]), check_paths=False)


def test_without_buckets_the_size_is_exact_and_only_a_dit_needs_whole_patches():
    no_buckets = PATHS + ["dataset.enable_bucket=false", "dataset.resolution=[512,650]"]
    spec, _ = spec_from_dict(compose_dict(None, no_buckets), check_paths=False)  # a UNet takes any size, as in kohya
    assert spec.dataset.size == (512, 650)
    anima = no_buckets + ["base_model.arch=anima", "base_model.vae=/v", "base_model.text_encoder=/t"]
    assert problems_of(anima, recipe=None) == [
        "dataset.resolution: without buckets every image is trained at exactly 512x650; Anima needs sides that are "
        "multiples of 16 (the VAE's 8x and the DiT's 2x2 patches): set dataset.resolution=[512, 640] or "
        "dataset.enable_bucket=true (buckets need only the area)"]


def test_bucket_sides_are_checked_against_both_sides_of_w_h():
    base = PATHS + ["dataset.resolution=[512,1024]"]
    assert problems_of(base + ["dataset.min_bucket_reso=576"]) == [
        "dataset.min_bucket_reso: 576 is above dataset.resolution's shorter side (512,1024); lower it or raise the "
        "resolution"]
    assert problems_of(base + ["dataset.max_bucket_reso=960"]) == [
        "dataset.max_bucket_reso: 960 is below dataset.resolution's longer side (512,1024); raise it or lower the "
        "resolution"]


def test_random_crop_with_cached_latents_names_every_key_that_turns_it_on():
    folders = 'dataset.folders=[{path: /a, random_crop: true}, {path: /b}, {path: /c, random_crop: false}]'
    (msg,) = problems_of(["base_model.path=/m.safetensors", folders, "dataset.random_crop=true",
                          "dataset.cache_latents=true"])
    assert msg.startswith("dataset.random_crop / dataset.folders[0].random_crop: a random crop is a new window")
    assert "dataset.cache_latents=true" in msg
    assert msg.endswith("set dataset.cache_latents=false (each step then encodes its crop with the VAE) or "
                        "random_crop=false")
    spec_from_dict(compose_dict("sd15_character", ["base_model.path=/m.safetensors", folders,
                                                   "dataset.cache_latents=false"]), check_paths=False)


def test_every_problem_is_reported_at_once():
    probs = problems_of(PATHS + ["network.dim=0", "optimizer.lr=-1", "train.epochs=0"])
    assert len(probs) >= 3


def test_missing_base_model_path_is_named():
    with pytest.raises(ConfigError) as e:
        spec_from_dict(compose_dict("sd15_character", ["dataset.root=/d"]), check_paths=False)
    assert "base_model.path: required but not set (pass base_model.path=...)" in e.value.problems


def test_missing_folders_and_models_fail_before_loading(tmp_path):
    probs = problems_of([f"base_model.path={tmp_path / 'nope.safetensors'}", f"dataset.root={tmp_path / 'nodata'}"], check_paths=True)
    assert any("base_model.path:" in p and "does not exist" in p for p in probs)
    assert any("dataset.root:" in p and "does not exist" in p for p in probs)


def test_pickle_checkpoints_are_refused(tmp_path):
    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(b"not really")
    (tmp_path / "d").mkdir()
    probs = problems_of([f"base_model.path={ckpt}", f"dataset.root={tmp_path / 'd'}"], check_paths=True)
    assert any("pickle checkpoint" in p and ".safetensors" in p for p in probs)


def test_validation_imports_no_torch():
    code = (
        "import sys; from lorafw.config.compose import compose_dict; from lorafw.config.validate import spec_from_dict;"
        "spec_from_dict(compose_dict('sd15_character', ['base_model.path=/m', 'dataset.root=/d']), check_paths=False);"
        "import lorafw.cli, lorafw.data.folders, lorafw.data.dataset;"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_spec_override_revalidates():
    spec, _ = spec_from_dict(compose_dict("sd15_character", PATHS), check_paths=False)
    new = apply_overrides(spec, ["train.epochs=3", "network.dim=32"], check_paths=False)
    assert (new.train.epochs, new.network.dim, spec.train.epochs) == (3, 32, 10)
    with pytest.raises(ConfigError, match="did you mean train.epochs"):
        apply_overrides(spec, ["train.epoch=3"], check_paths=False)
    with pytest.raises(ConfigError, match="network.dim: must be at least 1"):
        apply_overrides(spec, ["network.dim=0"], check_paths=False)


def test_spec_round_trips_through_its_dict():
    spec, _ = spec_from_dict(compose_dict("sd15_prodigy", PATHS), check_paths=False)
    again, _ = spec_from_dict(spec.to_dict(), check_paths=False)
    assert again == spec


def test_saved_config_loads_back(tmp_path, tiny_model, tiny_dataset):
    from lorafw.outputs.record import write_config

    spec = compose("sd15_character", [f"base_model.path={tiny_model}", f"dataset.root={tiny_dataset}"])
    write_config(tmp_path, spec)
    assert load_spec(tmp_path) == spec
    assert load_spec(tmp_path, ["seed=7"]).seed == 7


def test_sweep_expansion_and_checking():
    jobs = expand_sweep(["+recipe=sd15_character", "optimizer.lr=1e-4,5e-4", "network.dim=8,16"] + PATHS)
    assert len(jobs) == 4
    assert ["+recipe=sd15_character", "optimizer.lr=0.0001", "network.dim=8"] + PATHS in jobs
    check_all(jobs, check_paths=False)
    bad = expand_sweep(["+recipe=sd15_character", "network.dim=8,0"] + PATHS)
    with pytest.raises(ConfigError) as e:
        check_all(bad, check_paths=False)
    assert len(e.value.problems) == 1 and "network.dim=0" in e.value.problems[0]


def test_typed_converter_collects_every_problem():
    from lorafw.config.spec import NetworkSpec

    probs: list[str] = []
    assert from_dict(NetworkSpec, {"algo": "lorra", "dim": 1.5, "dora_wd": "yes", "dropout": 0, "alph": 3}, "network", probs) is None
    assert probs == [
        "network.alph: unknown key; did you mean network.alpha? " + NETWORK_KEYS,
        "network.algo: 'lorra' is not allowed; choose one of: lora, locon, loha, lokr, ia3, glora",
        "network.dim: expected an integer, got 1.5 (float)",
        "network.dora_wd: expected true or false, got 'yes' (str)",
    ]
    probs = []
    spec = from_dict(NetworkSpec, {"algo": "lora", "dim": 8.0, "alpha": 4, "dora_wd": False, "dropout": 0}, "network", probs)
    assert probs == [] and spec.dim == 8 and isinstance(spec.alpha, float) and spec.conv_dim is None
    probs = []
    from_dict(NetworkSpec, {"algo": "lora", "dim": True, "alpha": None, "dora_wd": False, "dropout": 0}, "network", probs)
    assert probs == ["network.dim: expected an integer, got True (bool)", "network.alpha: required, got null; expected a number"]


def test_conf_dir_is_the_repository_conf_in_a_checkout():
    assert conf_dir() == Path(__file__).resolve().parents[1] / "conf"


def test_an_unparsable_override_says_how_to_quote_it():
    with pytest.raises(ConfigError) as e:
        expand_sweep(["+recipe=sd15_character", "output.dir=/tmp/a=b"])
    assert e.value.problems == ["output.dir=/tmp/a=b: cannot be read as key=value; quote a value holding '=', ',', "
                                "spaces or brackets, e.g. output.dir='...'"]
    with pytest.raises(ConfigError, match="output.dir=/tmp/a=b: cannot be read"):
        compose_dict("sd15_character", ["output.dir=/tmp/a=b"])
    assert compose_dict("sd15_character", ["output.dir='/tmp/a=b'"])["output"]["dir"] == "/tmp/a=b"


def test_samples_default_to_the_training_w_h_cut_to_multiples_of_8():
    """sd-scripts' sample_image_inference cuts a sample's sides to multiples of 8 (the pipelines need it)."""
    from lorafw.config.prompts import parse_line

    spec, _ = spec_from_dict(compose_dict("sd15_character", PATHS + ["dataset.resolution=[512,650]"]),
                             check_paths=False)
    default, given = (parse_line(line, spec.sample, spec.dataset.size) for line in ("a", "a --w 768 --h 512"))
    assert ((default.width, default.height), (given.width, given.height)) == ((512, 648), (768, 512))
