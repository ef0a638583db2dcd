"""Users' TOML files in and out: the GUI trainer's saved TOML, sd-scripts' config + dataset config,
and `lorafw export` → `lorafw import` giving back the same spec for every shipped recipe."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import tomllib
from pathlib import Path

import pytest

from lorafw.config.compose import compose, compose_dict, recipe_names
from lorafw.config.spec import ImportedSpec
from lorafw.config.validate import spec_from_dict
from lorafw.interop.export import export_run
from lorafw.interop.importer import import_config, write_recipe
from lorafw.config.identity import identity
from lorafw.interop.kohya import export_kohya

GUI_SD15 = """
[[subsets]]
num_repeats = 3
keep_tokens = 1
caption_extension = ".txt"
shuffle_caption = true
flip_aug = false
color_aug = false
random_crop = false
is_reg = false
image_dir = "{data}/3_hsr_kafka"

[noise_args.args]
noise_offset = 0.0

[sample_args.args]
sample_sampler = "euler_a"
sample_every_n_epochs = 1

[logging_args.args]
log_with = "tensorboard"
logging_dir = "{out}/logs"

[general_args.args]
pretrained_model_name_or_path = "{model}"
mixed_precision = "fp16"
seed = 23
clip_skip = 2
xformers = true
max_data_loader_n_workers = 1
persistent_data_loader_workers = true
max_token_length = 225
prior_loss_weight = 1.0
max_train_epochs = 10
cache_latents = true

[general_args.dataset_args]
resolution = 768
batch_size = 2

[network_args.args]
network_dim = 16
network_alpha = 8.0

[optimizer_args.args]
optimizer_type = "AdamW8bit"
lr_scheduler = "cosine_with_restarts"
learning_rate = 0.0005
unet_lr = 0.0005
text_encoder_lr = 0.0001
lr_scheduler_num_cycles = 3
min_snr_gamma = 5.0
loss_type = "l2"
max_grad_norm = 1.0

[saving_args.args]
output_dir = "{out}"
save_precision = "fp16"
save_model_as = "safetensors"
output_name = "hsr_kafka"
save_every_n_epochs = 1

[bucket_args.dataset_args]
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 1024
bucket_reso_steps = 64

[network_args.args.network_args]

[optimizer_args.args.optimizer_args]
weight_decay = "0.1"
betas = "0.9,0.99"
"""

GUI_PDXL_DORA = """
[[subsets]]
num_repeats = 2
image_dir = "{data}/2_style"
caption_extension = ".txt"
is_reg = false

[general_args.args]
pretrained_model_name_or_path = "/models/ponyDiffusionV6XL.safetensors"
vae = "/models/sdxl_vae.safetensors"
sdxl = true
no_half_vae = true
full_bf16 = true
mixed_precision = "bf16"
gradient_checkpointing = true
gradient_accumulation_steps = 1
max_token_length = 225
sdpa = true
max_train_epochs = 4
cache_latents = true
cache_latents_to_disk = true
min_timestep = 0
max_timestep = 1000

[general_args.dataset_args]
resolution = [1024, 1024]
batch_size = 2

[network_args.args]
network_dim = 8
network_alpha = 4.0

[network_args.args.network_args]
algo = "locon"
conv_dim = "4"
conv_alpha = "2"
dora_wd = "True"

[optimizer_args.args]
optimizer_type = "LoraEasyCustomOptimizer.came.CAME"
lr_scheduler = "rex_annealing_warm_restarts_(RAWR)"
lr_scheduler_type = "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts"
learning_rate = 5e-5
unet_lr = 5e-5
text_encoder_lr = 1e-6
warmup_ratio = 0.05
min_snr_gamma = 8
scale_weight_norms = 1.0
color_aug = true

[optimizer_args.args.optimizer_args]
weight_decay = "0.04"

[optimizer_args.args.lr_scheduler_args]
min_lr = 1e-6
gamma = 1.0
d = 0.9

[saving_args.args]
output_dir = "/loras/style"
output_name = "style_dora"
save_precision = "bf16"

[bucket_args.dataset_args]
enable_bucket = true
max_bucket_reso = 2048
bucket_reso_steps = 64
"""

KOHYA_CONFIG = """
[model_arguments]
pretrained_model_name_or_path = "{model}"
v2 = false
v_parameterization = false

[network_arguments]
network_module = "networks.lora"
network_dim = 16
network_alpha = 16
network_train_unet_only = false

[optimizer_arguments]
optimizer_type = "Prodigy"
optimizer_args = ["decouple=True", "weight_decay=0.01", "betas=0.9,0.999", "d_coef=2", "use_bias_correction=True", "safeguard_warmup=True"]
learning_rate = 1.0
unet_lr = 1.0
text_encoder_lr = 1.0
lr_scheduler = "constant_with_warmup"
lr_warmup_steps = 0.05

[training_arguments]
max_train_epochs = 20
train_batch_size = 2
mixed_precision = "bf16"
save_precision = "fp16"
clip_skip = 2
max_token_length = 225
min_snr_gamma = 5.0
seed = 42
cache_latents = true
xformers = false
sdpa = true
huber_c = 0.1
scale_weight_norms = 1.0
dataset_config = "dataset.toml"

[saving_arguments]
output_dir = "{out}"
output_name = "wendy"
save_every_n_epochs = 1
save_model_as = "safetensors"
"""

KOHYA_DATASET = """
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"

[[datasets]]
resolution = "768,768"
batch_size = 2
enable_bucket = true
min_bucket_reso = 256
max_bucket_reso = 1024
bucket_reso_steps = 64

  [[datasets.subsets]]
  image_dir = "{data}/5_wendy"
  num_repeats = 5
  class_tokens = "wendy"

  [[datasets.subsets]]
  image_dir = "{data}/reg"
  num_repeats = 1
  is_reg = true
"""


def write(tmp_path: Path, name: str, text: str, **fmt: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).format(**fmt))
    return p


def imported_spec(path: Path, tmp_path: Path, dataset_config: Path | None = None, lenient: bool = False):
    imp = import_config(path, dataset_config)
    recipe = write_recipe(imp, str(path), tmp_path / f"{path.stem}.yaml", lenient)
    assert recipe is not None, imp.not_honoured
    spec, _ = spec_from_dict(compose_dict(str(recipe), [] if imp.values.get("dataset.folders") or imp.values.get(
        "dataset.root") else ["dataset.root=/d"]), check_paths=False, need_model=False)
    return imp, imp.dialect, spec, recipe


def not_honoured(imp) -> dict:
    return {p.key: p.value for p in imp.not_honoured}


def no_effect(imp) -> set:
    return {p.key for p in imp.no_effect}


def test_the_gui_trainers_sd15_toml(tmp_path, tiny_model):
    src = write(tmp_path, "kafka.toml", GUI_SD15, data=str(tmp_path / "data"), out=str(tmp_path / "out"), model=str(tiny_model))
    imp, kind, s, recipe = imported_spec(src, tmp_path)
    assert kind == "GUI trainer TOML"
    assert (s.base_model.arch, s.base_model.path) == ("sd15", str(tiny_model))
    assert (s.network.algo, s.network.dim, s.network.alpha) == ("lora", 16, 8.0)
    assert (s.optimizer.name, s.optimizer.lr, s.optimizer.unet_lr, s.optimizer.text_encoder_lr) == ("adamw8bit", 5e-4, 5e-4, 1e-4)
    assert (s.optimizer.weight_decay, s.optimizer.betas) == (0.1, (0.9, 0.99))  # from the strings "0.1" and "0.9,0.99"
    assert (s.scheduler.name, s.scheduler.num_cycles) == ("cosine_with_restarts", 3)
    assert (s.train.clip_skip, s.train.max_token_length, s.train.min_snr_gamma, s.train.epochs, s.train.batch_size) == (2, 225, 5.0, 10, 2)
    assert (s.train.mixed_precision, s.train.attention, s.seed, s.train.max_grad_norm) == ("fp16", "xformers", 23, 1.0)
    assert (s.dataset.resolution, s.dataset.min_bucket_reso, s.dataset.max_bucket_reso, s.dataset.bucket_reso_steps) == (768, 256, 1024, 64)
    assert s.dataset.cache_latents and s.dataset.enable_bucket
    (f,) = s.dataset.folders
    assert (f.path, f.repeats, f.keep_tokens, f.shuffle_caption, f.caption_extension) == (str(tmp_path / "data/3_hsr_kafka"), 3, 1, True, ".txt")
    assert (s.output.name, s.output.save_precision, s.output.save_every_n_epochs, s.sample.sampler) == ("hsr_kafka", "fp16", 1, "euler_a")
    assert {"log_with", "logging_dir", "save_model_as", "persistent_data_loader_workers"} <= no_effect(imp)
    assert not imp.not_honoured
    assert s.dataset.workers == 1  # max_data_loader_n_workers = 1
    text = recipe.read_text()
    assert "#   log_with = 'tensorboard'" in text  # listed, not dropped


def test_the_gui_trainers_pdxl_dora_toml(tmp_path):
    src = write(tmp_path, "style.toml", GUI_PDXL_DORA, data=str(tmp_path / "data"))
    imp, _, s, recipe = imported_spec(src, tmp_path, lenient=True)
    assert (s.base_model.arch, s.base_model.vae) == ("sdxl", "/models/sdxl_vae.safetensors")
    assert (s.network.algo, s.network.dora_wd, s.network.conv_dim, s.network.conv_alpha) == ("locon", True, 4, 2.0)
    assert (s.optimizer.name, s.optimizer.lr, s.optimizer.text_encoder_lr, s.optimizer.weight_decay) == ("came", 5e-5, 1e-6, 0.04)
    assert (s.scheduler.name, s.scheduler.warmup_ratio, s.scheduler.min_lr, s.scheduler.d, s.scheduler.gamma) == ("rex", 0.05, 1e-6, 0.9, 1.0)
    assert (s.train.full_bf16, s.train.no_half_vae, s.train.gradient_checkpointing, s.train.mixed_precision) == (True, True, True, "bf16")
    assert (s.dataset.resolution, s.dataset.max_bucket_reso, s.dataset.cache_latents_to_disk, s.train.min_snr_gamma) == (1024, 2048, True, 8.0)
    assert s.output.save_precision == "bf16"
    assert s.train.scale_weight_norms == 1.0
    assert not_honoured(imp) == {"color_aug": True}  # changes training, lorafw lacks it: named
    assert "#   color_aug = true: lorafw has no colour augmentation" in recipe.read_text()  # --lenient says so
    assert {"min_timestep", "max_timestep", "sdpa"} <= no_effect(imp)


def test_an_sd_scripts_config_and_dataset_config(tmp_path, tiny_model):
    write(tmp_path, "dataset.toml", KOHYA_DATASET, data=str(tmp_path / "data"))
    src = write(tmp_path, "wendy.toml", KOHYA_CONFIG, out=str(tmp_path / "out"), model=str(tiny_model))
    imp, kind, s, _ = imported_spec(src, tmp_path, lenient=True)  # the config names its dataset config itself
    assert kind == "sd-scripts TOML + dataset config"
    assert (s.optimizer.name, s.optimizer.lr, s.optimizer.weight_decay, s.optimizer.betas) == ("prodigy", 1.0, 0.01, (0.9, 0.999))
    assert s.optimizer.args == {"decouple": True, "d_coef": 2, "use_bias_correction": True, "safeguard_warmup": True}
    assert (s.scheduler.name, s.scheduler.warmup_ratio, s.network.dim, s.network.alpha, s.train.epochs) == ("constant_with_warmup", 0.05, 16, 16.0, 20)
    assert (s.dataset.resolution, s.dataset.shuffle_caption, s.dataset.keep_tokens) == (768, True, 1)  # "768,768"
    assert [(f.repeats, bool(f.is_reg)) for f in s.dataset.folders] == [(5, False), (1, True)]
    assert set(not_honoured(imp)) == {"subsets[0].class_tokens"} and "huber_c" in no_effect(imp)
    assert s.train.scale_weight_norms == 1.0
    explicit = write(tmp_path, "other.toml", KOHYA_CONFIG.replace('dataset_config = "dataset.toml"', ""), out="o", model=str(tiny_model))
    imp2 = import_config(explicit, tmp_path / "dataset.toml")  # or passed with --dataset-config
    assert imp2.dialect == kind and imp2.values["dataset.folders"] == imp.values["dataset.folders"]


def test_import_command(tmp_path, tiny_model, capsys):
    from lorafw.cli import main

    src = write(tmp_path, "style.toml", GUI_PDXL_DORA, data=str(tmp_path / "data"))
    assert main(["import", str(src), "--out", str(tmp_path / "r.yaml")]) == 2  # color_aug: refused
    out = capsys.readouterr().out
    assert "NOT honoured — nothing written (1):" in out and "color_aug = true: lorafw has no colour augmentation" in out
    assert not (tmp_path / "r.yaml").exists()
    assert main(["import", str(src), "--out", str(tmp_path / "r.yaml"), "--lenient"]) == 0
    out = capsys.readouterr().out
    assert f"→ {tmp_path / 'r.yaml'}" in out and "IGNORED (--lenient) (1):" in out
    assert f"run it: lorafw +recipe={tmp_path / 'r.yaml'}" in out
    assert main(["import", str(tmp_path / "missing.toml")]) == 2


# the Anima recipes need a tiny Anima checkpoint and its text encoder and VAE files (the family's builder): until the
# test has them, test_an_anima_run_exports_as_anima_train_network_arguments_and_imports_back checks them without files
def test_a_rectified_flow_sdxl_run_is_not_exported():
    """sd-scripts has no rectified-flow SDXL trainer: the export says so instead of writing an ε run."""
    from lorafw.errors import LorafwError

    spec = compose("sdxl_rf", ["base_model.path=/m.safetensors", "dataset.root=/d"], check_paths=False)
    with pytest.raises(LorafwError, match="no rectified-flow SDXL trainer"):
        export_kohya(spec, 10, [("/d/1_x", 1, {})])


@pytest.mark.parametrize("recipe", [r for r in recipe_names() if not r.startswith("anima") and r != "sdxl_rf"])
def test_export_then_import_gives_the_same_spec(recipe, tmp_path, tiny_model, tiny_xl_model, tiny_dataset):
    from lorafw.outputs.record import write_config

    xl = recipe.startswith(("pdxl", "illustrious", "noobai"))
    model = tiny_xl_model if xl else tiny_model
    spec = compose(recipe, [f"base_model.path={model}", f"dataset.root={tiny_dataset}", "output.name=x",
                            "sample.prompts=['toy, 1girl --d 3']"])
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, spec)
    (run / "run.json").write_text(json.dumps({"plan": {"total_steps": 200}}))
    cfg, ds, command = export_run(run)
    kohya = tomllib.loads(cfg.read_text())
    assert kohya["model_arguments"]["pretrained_model_name_or_path"] == str(model)
    assert tomllib.loads(ds.read_text())["datasets"][0]["subsets"] == [{"image_dir": str(tiny_dataset / "2_toy"), "num_repeats": 2}]
    assert ("sdxl_train_network.py" if xl else "train_network.py") in command
    assert kohya["model_arguments"]["v_parameterization"] == (recipe == "noobai_vpred")
    imp = import_config(cfg, ds)
    path = write_recipe(imp, str(cfg), tmp_path / "back.yaml")
    assert path is not None and not imp.not_honoured
    back, _ = spec_from_dict(compose_dict(str(path), []), check_paths=False)
    assert computes(back) == computes(spec)
    assert back.imported.source == f"{cfg}" and not back.imported.not_honoured  # the import's own record
    again, _ = export_kohya(back)
    assert not any(k.startswith("imported.") for k in again["lorafw"])  # an export carries no earlier import's record


def computes(spec) -> dict:
    """What a run of `spec` computes: its identity (trainers/common.py), less the import's record, which only says
    where the recipe came from."""
    return identity(dataclasses.replace(spec, imported=ImportedSpec()))


def test_a_data_parallel_run_exports_its_launch_and_comes_back(tmp_path, tiny_model, tiny_dataset):
    from lorafw.outputs.record import write_config

    spec = compose("sd15_character", [f"base_model.path={tiny_model}", f"dataset.root={tiny_dataset}", "output.name=x",
                                      "train.num_processes=4"])
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, spec)
    cfg, ds, command = export_run(run)
    assert command.startswith("accelerate launch --multi_gpu --num_processes 4 train_network.py")
    imp = import_config(cfg, ds)
    path = write_recipe(imp, str(cfg), tmp_path / "back.yaml")
    back, _ = spec_from_dict(compose_dict(str(path), []), check_paths=False)
    assert not imp.not_honoured and back.train.num_processes == 4 and computes(back) == computes(spec)


COLAB_VPRED = """
[model_arguments]
pretrained_model_name_or_path = "/models/NoobAI-XL-Vpred-v1.0.safetensors"
v_parameterization = true

[dataset_arguments]
train_data_dir = "{data}"

[training_arguments]
max_train_epochs = 10
zero_terminal_snr = true
scale_v_pred_loss_like_noise_pred = true
multires_noise_iterations = 6
multires_noise_discount = 0.3
ip_noise_gamma = 0.1
ip_noise_gamma_random_strength = true
loss_type = "smooth_l1"
huber_schedule = "exponential"
huber_c = 0.2
huber_scale = 1.5
debiased_estimation_loss = false
min_timestep = 100
max_timestep = 900
scale_weight_norms = 1.0
"""


def test_the_colabs_v_pred_and_noise_options_are_imported(tmp_path):
    imp, _, s, _ = imported_spec(write(tmp_path, "vpred.toml", COLAB_VPRED, data=str(tmp_path / "data")), tmp_path)
    t = s.train
    assert not imp.not_honoured
    assert (t.prediction_type, t.zero_terminal_snr, t.scale_v_pred_loss_like_noise_pred) == ("v_prediction", True, True)
    assert (t.multires_noise_iterations, t.multires_noise_discount, t.ip_noise_gamma, t.ip_noise_gamma_random_strength) == (6, 0.3, 0.1, True)
    assert (t.loss_type, t.huber_schedule, t.huber_c, t.huber_scale) == ("smooth_l1", "exponential", 0.2, 1.5)
    assert (t.min_timestep, t.max_timestep, t.scale_weight_norms) == (100, 900, 1.0)
    eps = write(tmp_path, "eps.toml", COLAB_VPRED.replace("v_parameterization = true", "v_parameterization = false")
                .replace("scale_v_pred_loss_like_noise_pred = true", ""), data=str(tmp_path / "data"))
    imp, _, s, _ = imported_spec(eps, tmp_path)
    assert s.train.prediction_type == "auto" and "v_parameterization" in no_effect(imp)  # auto reads the checkpoint


@pytest.mark.parametrize("extra", [["network=lokr", "network.factor=4", "network.use_tucker=true"], ["network=loha"],
                                   ["network=ia3"], ["network=glora"], ["network.loraplus_lr_ratio=16", "network.block_dims=[4,8]"],
                                   ["scheduler.type=CosineAnnealingLR", "+scheduler.args.T_max=100"],
                                   ["scheduler.name=linear", "scheduler.warmup_steps=30", "scheduler.warmup_ratio=null"],
                                   ["train.full_fp16=true", "train.mixed_precision=fp16"]])
def test_the_kohya_half_of_an_export_alone_trains_the_same(extra, tmp_path):
    """Without the [lorafw] section (sd-scripts ignores it), the exported arguments import back to every
    setting that changes training; what the chosen options do not read may differ."""
    import tomli_w

    spec, _ = spec_from_dict(compose_dict("conf/recipe/sd15_character.yaml", ["base_model.path=/m.safetensors",
                                                                            "dataset.root=/d", "output.name=x"] + extra),
                             check_paths=False, need_model=False)
    cfg, ds = export_kohya(spec, 200, [("/d/2_x", 2, {})])
    cfg.pop("lorafw")
    (tmp_path / "c.toml").write_text(tomli_w.dumps(cfg))
    (tmp_path / "d.toml").write_text(tomli_w.dumps(ds))
    imp = import_config(tmp_path / "c.toml", tmp_path / "d.toml")
    assert imp.not_honoured == []
    back, _ = spec_from_dict(compose_dict(str(write_recipe(imp, "x", tmp_path / "r.yaml")), []), check_paths=False,
                             need_model=False)
    assert back.network == spec.network and back.train.full_fp16 == spec.train.full_fp16
    assert (back.scheduler.type, dict(back.scheduler.args)) == (spec.scheduler.type, dict(spec.scheduler.args))
    if not spec.scheduler.type:
        assert (back.scheduler.name, back.scheduler.warmup_steps) == (spec.scheduler.name, spec.scheduler.warmup_steps)
    assert dataclasses.replace(back.optimizer, stop_text_encoder_training=None) == spec.optimizer


@pytest.mark.parametrize("extra,resolution", [
    (["dataset.resolution=[512,768]"], [512, 768]),
    (["dataset.resolution=[640,512]", "dataset.enable_bucket=false"], [640, 512]),
    (["dataset.resolution=768", "dataset.random_crop=true"], 768)])
@pytest.mark.parametrize("lorafw_section", [True, False])
def test_w_h_resolution_and_random_crop_export_and_import_back(extra, resolution, lorafw_section, tmp_path):
    """sd-scripts' dataset config takes N or [W, H] (config_util's scalar_or_twodim) and random_crop per subset
    or in [general]; both come back, with or without the [lorafw] section."""
    import tomli_w

    spec, _ = spec_from_dict(compose_dict("conf/recipe/sd15_character.yaml", [
        "base_model.path=/m.safetensors", "output.name=x", "dataset.cache_latents=false",
        "dataset.folders=[{path: /d/2_x, random_crop: true}, {path: /d/1_y}]", *extra]), check_paths=False,
        need_model=False)
    cfg, ds = export_kohya(spec, 200, [("/d/2_x", 2, {"random_crop": True}), ("/d/1_y", 1, {})])
    assert ds["datasets"][0]["resolution"] == resolution
    assert ds["general"]["random_crop"] is spec.dataset.random_crop
    if not lorafw_section:
        cfg.pop("lorafw")
    (tmp_path / "c.toml").write_text(tomli_w.dumps(cfg))
    (tmp_path / "d.toml").write_text(tomli_w.dumps(ds))
    imp = import_config(tmp_path / "c.toml", tmp_path / "d.toml")
    assert imp.not_honoured == []
    back, _ = spec_from_dict(compose_dict(str(write_recipe(imp, "x", tmp_path / "r.yaml")), []), check_paths=False,
                             need_model=False)
    assert (back.dataset.size, back.dataset.random_crop) == (spec.dataset.size, spec.dataset.random_crop)
    assert [f.random_crop for f in back.dataset.folders][0] is True


@pytest.mark.parametrize("asked,resolved,kohya", [("no", None, "no"), ("fp16", None, "fp16"), ("bf16", None, "bf16"),
                                                  ("no", "bf16", "no"), ("auto", "bf16", "bf16"), ("auto", "no", "no"),
                                                  ("auto", None, "fp16")])
def test_export_writes_the_precision_the_run_trains_in(asked, resolved, kohya, tmp_path, tiny_model, tiny_dataset):
    """fp32 (train.mixed_precision=no) was exported as kohya's fp16: the sd-scripts run trained in another precision.
    `auto` has no kohya value: the precision run.json says the run resolved it to, else fp16."""
    from lorafw.outputs.record import write_config

    spec = compose(None, [f"base_model.path={tiny_model}", f"dataset.root={tiny_dataset}", f"train.mixed_precision={asked}"])
    run = tmp_path / "run"
    run.mkdir()
    write_config(run, spec)
    if resolved:
        (run / "run.json").write_text(json.dumps({"device": {"precision": resolved}}))
    cfg, ds, _ = export_run(run)
    assert tomllib.loads(cfg.read_text())["training_arguments"]["mixed_precision"] == kohya
    back, _ = spec_from_dict(compose_dict(str(write_recipe(import_config(cfg, ds), str(cfg), tmp_path / "b.yaml")), []),
                             check_paths=False)
    assert back.train.mixed_precision == asked  # the [lorafw] section keeps what was asked for


@pytest.mark.parametrize("clip_skip,tokens", [(1, 75), (2, 75), (1, 225), (2, 150)])
def test_clip_skip_and_token_length_are_exported_as_sd_scripts_takes_them(clip_skip, tokens, tmp_path):
    """lorafw's 1 and 75 are sd-scripts' defaults, left unset: an explicit clip_skip = 1 runs another code path in
    sd-scripts (which crashes in bf16 on a CPU), and its --max_token_length accepts only 150 and 225."""
    import tomli_w

    spec = compose(None, ["base_model.path=/m.safetensors", "dataset.root=/d", f"train.clip_skip={clip_skip}",
                          f"train.max_token_length={tokens}"], check_paths=False)
    cfg, ds = export_kohya(spec, 10, [("/d/1_x", 1, {})])
    t = cfg["training_arguments"]
    assert t.get("clip_skip") == (clip_skip if clip_skip > 1 else None)
    assert t.get("max_token_length") == (tokens if tokens != 75 else None)
    cfg.pop("lorafw")  # the kohya half alone imports back to the same values
    (tmp_path / "c.toml").write_text(tomli_w.dumps(cfg))
    (tmp_path / "d.toml").write_text(tomli_w.dumps(ds))
    back, _ = spec_from_dict(compose_dict(str(write_recipe(import_config(tmp_path / "c.toml", tmp_path / "d.toml"), "x",
                                                           tmp_path / "r.yaml")), []), check_paths=False, need_model=False)
    assert (back.train.clip_skip, back.train.max_token_length) == (clip_skip, tokens)


@pytest.mark.parametrize("interp, honoured", [("lanczos", True), ("area", False), ("bicubic", False)])
def test_resize_interpolation_lanczos_is_what_lorafw_does(interp, honoured, tmp_path):
    """lorafw resizes with PIL's Lanczos: kohya's resize_interpolation="lanczos" imports silently, others are named,
    and the exporter writes it so an exported sd-scripts run resizes as lorafw did (its default shrinks with area)."""
    text = KOHYA_CONFIG.replace("[training_arguments]\n", f'[training_arguments]\nresize_interpolation = "{interp}"\n')
    text = text.replace('dataset_config = "dataset.toml"', "")
    src = write(tmp_path, "c.toml", text, model="/m.safetensors", out="o")
    imp = import_config(src, None)
    assert ("resize_interpolation" in not_honoured(imp)) is (not honoured)
    spec = compose(None, ["base_model.path=/m.safetensors", "dataset.root=/d"], check_paths=False)
    cfg, _ = export_kohya(spec, 10, [("/d/1_x", 1, {})])
    assert cfg["training_arguments"]["resize_interpolation"] == "lanczos"


def test_every_kohya_name_of_the_schema_is_exported():
    """Adding a kohya option is one key(): with every key set, the export names each key's kohya argument (the objective's
    and any later key's in [training_arguments]) except what NOT_EXPORTED leaves out."""
    from lorafw.interop.kohya import ANIMA_ONLY, KEYS, NOT_EXPORTED

    spec = compose(None, ["base_model.path=/m.safetensors", "base_model.vae=/v.safetensors", "dataset.root=/d",
                          "dataset.reg_root=/r", "dataset.keep_tokens_separator=|||", "dataset.workers=2",
                          "train.min_snr_gamma=5", "train.clip_skip=2", "train.max_token_length=225", "train.compile=true",
                          "train.ip_noise_gamma=0.1", "train.adaptive_noise_scale=0.01", "train.noise_offset=0.05",
                          "train.multires_noise_iterations=6", "train.min_timestep=10", "train.max_timestep=900",
                          "train.scale_weight_norms=1.0", "train.v_pred_like_loss=0.1", "train.zero_terminal_snr=false",
                          "output.comment=hi", "sample.prompt_file=/p.txt", "scheduler=cosine_restarts",
                          "scheduler.num_cycles=2", "network.init_weights=/w.safetensors",
                          "network.dim_from_weights=true", "train.max_steps=500", "output.save_every_n_steps=50",
                          "output.save_last_n_steps=100", "output.save_last_n_epochs=2"], check_paths=False)
    cfg, ds = export_kohya(spec, 10, [("/d/1_x", 1, {})])
    written = {k for section, body in cfg.items() if section != "lorafw" for k in body}
    written |= set(ds["general"]) | set(ds["datasets"][0])
    expected = {k.kohya[0] for p, k in KEYS.items() if p not in NOT_EXPORTED and p != "scheduler.warmup_ratio"}
    assert expected - written == {KEYS[p].kohya[0] for p in ANIMA_ONLY}  # train_network.py has no such arguments
    assert cfg["training_arguments"]["ip_noise_gamma"] == 0.1 and ds["datasets"][0]["batch_size"] == spec.train.batch_size
    anima, _ = spec_from_dict(compose_dict("conf/recipe/anima_character.yaml", ANIMA + [
        "base_model.llm_adapter=/a.safetensors", "network.train_llm_adapter=true", "optimizer.llm_adapter_lr=5e-5"]),
        check_paths=False, need_model=False)
    cfg, _ = export_kohya(anima, 10, [])
    written = {k for section, body in cfg.items() if section != "lorafw" for k in body}
    assert {KEYS[p].kohya[0] for p in ANIMA_ONLY} <= written
    assert "network_reg_lrs=.*llm_adapter.*=5e-05" in cfg["network_arguments"]["network_args"]  # NOT_EXPORTED's why


ANIMA = ["base_model.path=/m/anima.safetensors", "dataset.root=/d", "output.name=x",
         "base_model.text_encoder=/m/qwen_3_06b_base.safetensors", "base_model.vae=/m/qwen_image_vae.safetensors"]


@pytest.mark.parametrize("extra", [[], ["network.train_llm_adapter=true", "optimizer.llm_adapter_lr=5e-5"],
                                   ["train.timestep_sampling=shift", "train.discrete_flow_shift=3.0",
                                    "train.weighting_scheme=logit_normal", "train.logit_std=0.5"],
                                   ["base_model.llm_adapter=/m/adapter.safetensors", "network.rank_dropout=0.1"]])
def test_an_anima_run_exports_as_anima_train_network_arguments_and_imports_back(extra, tmp_path):
    """The kohya half alone (sd-scripts ignores [lorafw]) is an anima_train_network.py run that imports back to the
    same objective, network, learning rates and files; the LLM adapter's rate travels as network_reg_lrs, the one
    place anima_train_network.py reads it."""
    import tomli_w

    from lorafw.interop.kohya import script_of

    spec, _ = spec_from_dict(compose_dict("conf/recipe/anima_character.yaml", ANIMA + extra), check_paths=False,
                             need_model=False)
    cfg, ds = export_kohya(spec, 200, [("/d/10_x", 10, {})])
    assert script_of(spec) == "anima_train_network.py" and cfg["network_arguments"]["network_module"] == "networks.lora_anima"
    assert "v_parameterization" not in cfg["model_arguments"] and "clip_skip" not in cfg["training_arguments"]
    assert "llm_adapter_lr" not in cfg["optimizer_arguments"] | cfg["training_arguments"]
    cfg.pop("lorafw")
    (tmp_path / "c.toml").write_text(tomli_w.dumps(cfg))
    (tmp_path / "d.toml").write_text(tomli_w.dumps(ds))
    imp = import_config(tmp_path / "c.toml", tmp_path / "d.toml")
    assert imp.not_honoured == [] and imp.groups["base_model"] == "anima"
    back, _ = spec_from_dict(compose_dict(str(write_recipe(imp, "x", tmp_path / "r.yaml")), []), check_paths=False,
                             need_model=False)
    assert back.base_model == spec.base_model
    assert back.network == spec.network
    assert dataclasses.replace(back.optimizer, stop_text_encoder_training=None) == spec.optimizer
    flow = ("timestep_sampling", "sigmoid_scale", "discrete_flow_shift", "weighting_scheme", "logit_mean", "logit_std",
            "mode_scale", "mixed_precision", "gradient_checkpointing", "epochs", "batch_size")
    assert {k: getattr(back.train, k) for k in flow} == {k: getattr(spec.train, k) for k in flow}
    assert (back.dataset.cache_text_encoder_outputs, back.dataset.resolution) == (True, 1024)


def test_an_anima_run_with_a_network_sd_scripts_cannot_train_on_anima_is_not_exported():
    from lorafw.errors import LorafwError

    spec, _ = spec_from_dict(compose_dict("conf/recipe/anima_character.yaml", ANIMA + ["network=loha"]),
                             check_paths=False, need_model=False)
    with pytest.raises(LorafwError, match="networks.lora_anima, which has no loha"):
        export_kohya(spec, 200, [])


def test_an_sd_export_writes_no_flow_keys():
    spec, _ = spec_from_dict(compose_dict("conf/recipe/sd15_character.yaml", ["base_model.path=/m.safetensors",
                                                                              "dataset.root=/d"]), check_paths=False)
    cfg, _ = export_kohya(spec, 200, [])
    assert not {"timestep_sampling", "discrete_flow_shift", "qwen3", "network_reg_lrs"} & set(cfg["training_arguments"])
    assert "train_llm_adapter" not in str(cfg["network_arguments"])
