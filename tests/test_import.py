"""`lorafw import` in every dialect: each setting honoured, without effect, or named as not honoured.

Fixtures (tests/fixtures/import/) are our own files in each dialect's shape; the Colab's form options are
restated below as the config its notebook writes for them (`colab_xl`), so every option is imported.
"""

from __future__ import annotations

import json
import shutil
import typing
from pathlib import Path

import pytest

from lorafw.config.compose import compose_dict
from lorafw.config.schema import SAME, kohya_keys, kohya_names
from lorafw.config.spec import NetworkSpec, RunSpec
from lorafw.config.validate import spec_from_dict
from lorafw.interop.argstrings import Problem, items_of, literal_args, network_args
from lorafw.interop.classify import NEUTRAL, coerce, optimizer_aliases
from lorafw.interop.dialects import detect, from_gui_json
from lorafw.interop.importer import import_config, load_source, report, write_recipe
from lorafw.config.catalog import SCHEDULERS

FIX = Path(__file__).parent / "fixtures" / "import"
NAMES = kohya_names(RunSpec)
ALGOS = typing.get_args(typing.get_type_hints(NetworkSpec)["algo"])


def lacks(p: Problem) -> bool:
    """Whether a refused setting is one lorafw truly lacks (never a setting it has, dropped)."""
    top = p.key.split(".")[0].split("[")[0]
    if "lorafw refuses it" in p.why or "refused above" in p.why:  # a value outside what lorafw's own validation allows
        return True
    if top == "optimizer_type":
        return str(p.value).lower() not in optimizer_aliases()
    if top in ("lr_scheduler", "lr_scheduler_type"):
        return str(p.value).lower() not in SCHEDULERS
    if p.key == "network_args.algo" or top == "network_module":
        return p.value not in ALGOS
    if top in ("optimizer_args", "network_args", "lr_scheduler_args"):
        return "not an argument" in p.why or "no such setting" in p.why or "not a setting" in p.why
    return top not in NAMES or "warmup in steps" in p.why


def spec_of(imp, tmp_path: Path):
    recipe = write_recipe(imp, "test", tmp_path / "r.yaml", lenient=True)
    extra = [] if imp.values.get("dataset.folders") or imp.values.get("dataset.root") else ["dataset.root=/d"]
    if "base_model.path" not in imp.values:
        extra.append("base_model.path=/m.safetensors")
    spec, _ = spec_from_dict(compose_dict(str(recipe), extra), check_paths=False, need_model=False)
    return spec


def accounted(imp, args: dict) -> set[str]:
    """Source keys that the result neither imported, nor called without effect, nor refused."""
    seen = {o.split(" ")[0].split(".")[0].split("[")[0] for o in imp.imported_from.values()}
    seen |= {p.key.split(".")[0].split("[")[0] for p in imp.no_effect + imp.not_honoured}
    return {k for k, v in args.items() if v not in ([], "", None)} - seen - {"dataset_config"}


# -- argument strings -----------------------------------------------------------------------------------
def test_optimizer_args_are_parsed_as_sd_scripts_parses_them():
    probs: list[Problem] = []
    got = literal_args(["betas=[0.9,0.99]", "eps=1e-8", "decouple=True", "d0=None", "name='x'", "b2=0.9,0.99"],
                       "optimizer_args", probs)
    assert got == {"betas": [0.9, 0.99], "eps": 1e-8, "decouple": True, "d0": None, "name": "x", "b2": (0.9, 0.99)}
    assert probs == []
    bad = literal_args(["betas=[0.9", "mode=fast", "a=b=c", "novalue"], "optimizer_args", probs)
    assert bad == {} and [p.key for p in probs] == ["optimizer_args.betas", "optimizer_args.mode", "optimizer_args", "optimizer_args"]
    assert all(isinstance(p.why, str) and p.why for p in probs)


def test_the_three_shapes_of_an_argument_list():
    assert items_of('"weight_decay=0.1" "betas=0.9,0.99"') == ["weight_decay=0.1", "betas=0.9,0.99"]  # the GUI's string
    assert items_of({"decouple": "true", "betas": "0.9,0.99"}, optimizer=True) == ["decouple=True", "betas=0.9,0.99"]
    assert items_of({"block_dims": [2, 4], "preset": ""}) == ["block_dims=2,4"]  # GUI trainer: lists joined, empty preset left out
    probs: list[Problem] = []
    assert network_args(["conv_dim=4", "algo=lokr", "preset=attn-mlp"], probs) == {"conv_dim": "4", "algo": "lokr", "preset": "attn-mlp"}


# -- the Colab ----------------------------------------------------------------------------------------------
def colab_pair(tmp_path: Path, **edit) -> Path:
    """The XL Colab's pair in a folder, with `section.key=value` edits (None removes a key)."""
    import tomllib

    import tomli_w

    folder = tmp_path / "colab"
    folder.mkdir(exist_ok=True)
    doc = tomllib.loads((FIX / "colab_xl_training_config.toml").read_text())
    for dotted, value in edit.items():
        section, key = dotted.split("__")
        if value is None:
            doc[section].pop(key, None)
        else:
            doc[section][key] = value
    (folder / "training_config.toml").write_text(tomli_w.dumps(doc))
    shutil.copy(FIX / "colab_xl_dataset_config.toml", folder / "dataset_config.toml")
    return folder / "training_config.toml"


def test_the_colab_xl_defaults_carry_every_training_value(tmp_path):
    imp = import_config(colab_pair(tmp_path))
    assert imp.dialect == "Colab XL + dataset config" and imp.groups["base_model"] == "sdxl"  # never sd15
    assert imp.not_honoured == []
    assert not accounted(imp, load_source(tmp_path / "colab" / "training_config.toml").args)
    s = spec_of(imp, tmp_path)
    assert (s.optimizer.name, s.optimizer.weight_decay, s.optimizer.betas) == ("adamw8bit", 0.1, (0.9, 0.99))  # no traceback
    assert (s.optimizer.unet_lr, s.optimizer.text_encoder_lr, s.network.dim, s.network.alpha) == (3e-4, 6e-5, 8, 4.0)
    assert (s.scheduler.name, s.scheduler.num_cycles, s.train.min_snr_gamma, s.train.epochs) == ("cosine_with_restarts", 3, 8.0, 10)
    assert (s.train.batch_size, s.train.max_token_length, s.train.mixed_precision, s.train.no_half_vae) == (4, 225, "fp16", True)
    assert (s.dataset.resolution, s.dataset.keep_tokens, s.dataset.shuffle_caption, s.dataset.max_bucket_reso) == (1024, 1, True, 4096)
    assert [(f.path, f.repeats) for f in s.dataset.folders] == [("/content/drive/MyDrive/Loras/kafka/dataset", 2)]
    assert {"min_timestep", "max_timestep", "lowram", "log_prefix"} <= {p.key for p in imp.no_effect}
    assert s.output.save_last_n_epochs == 10  # kohya's retention, honoured


COLAB_OPTIMIZERS = {  # the form's optimizer → what the notebook writes (recommended values on)
    "AdamW8bit": ("AdamW8bit", ["weight_decay=0.1", "betas=[0.9,0.99]"]),
    "Prodigy": ("Prodigy", ["decouple=True", "weight_decay=0.01", "betas=[0.9,0.999]", "d_coef=2",
                            "use_bias_correction=True", "safeguard_warmup=True"]),
    "DAdaptation": ("DAdaptation", None), "DadaptAdam": ("DadaptAdam", None), "DadaptLion": ("DadaptLion", None),
    "AdamW": ("AdamW", None), "Lion": ("Lion", None), "SGDNesterov": ("SGDNesterov", None),
    "SGDNesterov8bit": ("SGDNesterov8bit", None),
    "AdaFactor": ("AdaFactor", ["scale_parameter=False", "relative_step=False", "warmup_init=False"]),
    "Came": ("LoraEasyCustomOptimizer.came.CAME", ["weight_decay=0.04"]),
}


@pytest.mark.parametrize("option", sorted(COLAB_OPTIMIZERS))
def test_each_colab_optimizer(option, tmp_path):
    kind, args = COLAB_OPTIMIZERS[option]
    edit = {}
    if option.lower().startswith(("dadapt", "prodigy")):  # the notebook's recommended values: one lr of 0.5 for both
        edit = {"optimizer_arguments__unet_lr": 0.5, "optimizer_arguments__text_encoder_lr": 0.5}
    imp = import_config(colab_pair(tmp_path, optimizer_arguments__optimizer_type=kind,
                                   optimizer_arguments__optimizer_args=args, **edit))
    assert imp.not_honoured == []  # every optimizer the Colab offers is lorafw's (issue 17's Done-when)
    if True:
        s = spec_of(imp, tmp_path)
        assert s.optimizer.name == optimizer_aliases()[kind.lower()]
        if option == "Prodigy":
            assert s.optimizer.args == {"decouple": True, "d_coef": 2, "use_bias_correction": True, "safeguard_warmup": True}


@pytest.mark.parametrize("option", ["constant", "cosine", "cosine_with_restarts", "constant_with_warmup", "linear",
                                    "polynomial", "rex"])
def test_each_colab_scheduler(option, tmp_path):
    edit: dict = {"optimizer_arguments__lr_scheduler": option, "optimizer_arguments__lr_warmup_steps": None,
                  "optimizer_arguments__lr_scheduler_num_cycles": None}
    if option == "cosine_with_restarts":
        edit["optimizer_arguments__lr_scheduler_num_cycles"] = 3
    if option == "polynomial":
        edit["optimizer_arguments__lr_scheduler_power"] = 3
    if option not in ("cosine", "constant", "rex"):
        edit["optimizer_arguments__lr_warmup_steps"] = 0.05  # a ratio: honoured wherever the scheduler has warmup
    if option == "rex":  # the notebook: lr_scheduler=cosine + the REX class, steps from its own count
        edit.update(optimizer_arguments__lr_scheduler="cosine", optimizer_arguments__lr_scheduler_type=
                    "LoraEasyCustomOptimizer.RexAnnealingWarmRestarts.RexAnnealingWarmRestarts",
                    optimizer_arguments__lr_scheduler_args=["min_lr=1e-9", "gamma=0.9", "d=0.9",
                                                            "first_cycle_max_steps=333", "warmup_steps=16"],
                    optimizer_arguments__lr_scheduler_num_cycles=3)
    imp = import_config(colab_pair(tmp_path, **edit))
    assert imp.not_honoured == []  # every scheduler the Colab offers is lorafw's
    s = spec_of(imp, tmp_path)
    assert s.scheduler.name == option
    if option == "constant_with_warmup":
        assert s.scheduler.warmup_ratio == 0.05
    if option == "polynomial":
        assert s.scheduler.power == 3
    if option == "rex":  # the class's per-cycle warmup (16 of 333) is lorafw's run-wide warmup_steps
        assert (s.scheduler.min_lr, s.scheduler.gamma, s.scheduler.d, s.scheduler.warmup_steps) == (1e-9, 0.9, 0.9, 16 * 3)
        assert s.scheduler.num_cycles == 3 and s.scheduler.warmup_ratio is None
        assert "lr_scheduler_args.first_cycle_max_steps" in {p.key for p in imp.no_effect}


@pytest.mark.parametrize("option", ["LoRA", "LoCon", "vpred", "xformers", "full bf16", "mixed bf16", "float"])
def test_other_colab_options(option, tmp_path):
    edit = {
        "LoRA": {}, "LoCon": {"network_arguments__network_args": ["conv_dim=16", "conv_alpha=8"]},
        "vpred": {"training_arguments__v_parameterization": True, "training_arguments__zero_terminal_snr": True,
                  "training_arguments__scale_v_pred_loss_like_noise_pred": True},
        "xformers": {"training_arguments__xformers": True, "training_arguments__sdpa": False},
        "full bf16": {"training_arguments__mixed_precision": "bf16", "training_arguments__full_fp16": False,
                      "training_arguments__full_bf16": True},
        "mixed bf16": {"training_arguments__mixed_precision": "bf16", "training_arguments__full_fp16": False},
        "float": {"training_arguments__mixed_precision": "no", "training_arguments__full_fp16": False},
    }[option]
    imp = import_config(colab_pair(tmp_path, **edit))
    assert imp.not_honoured == []
    s = spec_of(imp, tmp_path)
    if option == "LoCon":
        assert (s.network.algo, s.network.conv_dim, s.network.conv_alpha) == ("locon", 16, 8.0)
    if option == "xformers":
        assert s.train.attention == "xformers"
    if option == "full bf16":
        assert (s.train.mixed_precision, s.train.full_bf16) == ("bf16", True)
        assert "full_fp16" not in {p.key for p in imp.not_honoured}
    if option == "float":
        assert s.train.mixed_precision == "no"
    if option == "vpred":
        assert (s.train.prediction_type, s.train.zero_terminal_snr, s.train.scale_v_pred_loss_like_noise_pred) == (
            "v_prediction", True, True)


# -- the bmaltais GUI's JSON ------------------------------------------------------------------------------
def test_a_gui_json_imports_faithfully(tmp_path):
    imp = import_config(FIX / "gui_sdxl_standard.json")
    assert imp.dialect == "bmaltais GUI JSON" and imp.groups["base_model"] == "sdxl"
    assert imp.not_honoured == []
    assert not accounted(imp, from_gui_json(json.loads((FIX / "gui_sdxl_standard.json").read_text())).args)
    s = spec_of(imp, tmp_path)
    assert (s.train.epochs, s.seed, s.train.max_grad_norm, s.train.full_bf16, s.train.attention) == (12, 1234, 0.5, True, "sdpa")
    assert (s.scheduler.name, s.scheduler.warmup_ratio, s.train.noise_offset) == ("constant_with_warmup", 0.08, 0.0357)
    assert (s.optimizer.name, s.optimizer.weight_decay, s.optimizer.betas) == ("adamw8bit", 0.1, (0.9, 0.99))
    assert (s.optimizer.lr, s.optimizer.unet_lr, s.optimizer.text_encoder_lr) == (1e-4, 1e-4, 5e-5)
    assert (s.dataset.resolution, s.dataset.keep_tokens, s.dataset.bucket_no_upscale, s.train.max_token_length) == (1024, 1, True, 225)
    assert (s.network.algo, s.network.dim, s.network.alpha, s.output.save_precision) == ("lora", 32, 16.0, "bf16")
    why = {p.key: p.why for p in imp.no_effect}
    assert "noise_offset_type" not in why and why["multires_noise_discount"].startswith("noise_offset_type = Original")
    assert why["conv_dim"] == "not used by LoRA_type = Standard"


def test_a_gui_json_lokr_imports_with_every_lycoris_argument(tmp_path, capsys):
    from lorafw.cli import main

    imp = import_config(FIX / "gui_sd15_lokr_prodigy.json")
    refused = {p.key: p.value for p in imp.not_honoured}
    assert all(lacks(p) for p in imp.not_honoured), imp.not_honoured
    if "lokr" not in ALGOS:
        assert refused["network_args.algo"] == "lokr"  # LoKr never becomes LoRA
    else:
        v = imp.values
        assert (v["network.algo"], v["network.conv_dim"], v["network.rank_dropout"], v["network.module_dropout"]) == ("lokr", 64, 0.1, 0.1)
        assert v["train.multires_noise_iterations"] == 8 and v["train.multires_noise_discount"] == 0.2
        assert v["optimizer.args.d_coef"] == 2 and v["optimizer.args.safeguard_warmup"] is True
    assert imp.groups["base_model"] == "sd15" and "optimizer_args.decouple" not in refused
    out = tmp_path / "r.yaml"
    assert main(["import", str(FIX / "gui_sd15_lokr_prodigy.json"), "--out", str(out), "--json"]) == (2 if refused else 0)
    rep = json.loads(capsys.readouterr().out)
    assert set(rep) >= {"recipe", "dialect", "imported", "no_effect", "not_honoured"}
    assert {r["key"] for r in rep["not_honoured"]} == set(refused)
    assert (rep["recipe"] is None and not out.exists()) if refused else (rep["recipe"] == str(out) and out.is_file())
    if not refused:
        assert spec_of(imp, tmp_path).network.algo == "lokr"


def test_flux_is_refused_by_name(capsys):
    from lorafw.cli import main

    imp = import_config(FIX / "gui_flux.json")
    refused = {p.key: p.why for p in imp.not_honoured}
    assert "FLUX" in refused["flux1_checkbox"] and "not an architecture lorafw trains" in refused["LoRA_type"]
    assert main(["import", str(FIX / "gui_flux.json")]) == 2
    assert "LoRA_type = 'Flux1'" in capsys.readouterr().out


def test_presets_never_exit_0_with_a_training_setting_dropped(tmp_path):
    """Every fixture: what the file says is imported, said to have no effect, or refused; nothing else."""
    for f in sorted(FIX.glob("gui_*.json")):
        imp = import_config(f)
        assert not accounted(imp, from_gui_json(json.loads(f.read_text())).args), f


# -- sd-scripts TOML ----------------------------------------------------------------------------------------
def test_a_key_left_out_means_kohyas_default(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[a]\npretrained_model_name_or_path = "/nowhere/x.safetensors"\nmax_train_epochs = 3\n'
                 'train_data_dir = "/d"\nresolution = "512"\n')
    imp = import_config(f)
    assert imp.not_honoured == [] and imp.groups["base_model"] == "auto"  # the checkpoint will say
    s = spec_of(imp, tmp_path)
    assert (s.network.dim, s.network.alpha, s.optimizer.lr, s.train.mixed_precision) == (4, 1.0, 2e-6, "no")
    assert (s.dataset.caption_extension, s.dataset.enable_bucket, s.dataset.cache_latents) == (".caption", False, False)
    assert s.base_model.arch == "auto"


def test_every_declared_kohya_default_is_stated_when_the_file_leaves_the_key_out(tmp_path):
    declared = {p: k for p, k in kohya_keys(RunSpec).items() if k.kohya_default is not SAME}
    assert {"network.dim", "optimizer.lr", "train.mixed_precision", "dataset.enable_bucket"} <= set(declared)
    f = tmp_path / "c.toml"
    f.write_text("max_train_epochs = 3\n")
    imp = import_config(f)
    s = spec_of(imp, tmp_path)
    for path, k in declared.items():
        value = s
        for part in path.split("."):
            value = getattr(value, part)
        assert value == coerce(k.kohya_default, k.type), path
        assert imp.imported_from[path] == f"{k.kohya[0]} (kohya's default)"


def test_neutral_values_only_for_kohyas_off_values(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('max_train_epochs = 3\nresolution = 512\nmin_timestep = 0\nmax_timestep = 1000\nv2 = false\n')
    assert not import_config(f).not_honoured
    f.write_text('max_train_epochs = 3\nresolution = 512\nmin_timestep = 100\nv2 = true\n')
    refused = {p.key for p in import_config(f).not_honoured}
    assert "v2" in refused and ("min_timestep" in refused or "min_timestep" in NAMES)
    assert kohya_keys(RunSpec)["train.min_timestep"].kohya_off == NEUTRAL["min_timestep"] == (0,)  # declared on the key


def test_the_recipe_records_what_the_import_left_behind(tmp_path):
    """The recipe's `imported` section: --lenient's refusals, the settings without effect and the notes, as data the
    run keeps; a value that looks like an interpolation comes back as it was written."""
    f = tmp_path / "c.toml"
    f.write_text('max_train_epochs = 3\nresolution = 512\nfancy = "${x} and ???"\nlog_with = "tensorboard"\n')
    imp = import_config(f)
    s = spec_of(imp, tmp_path)
    (refused,) = s.imported.not_honoured
    assert (refused.setting, json.loads(refused.value), refused.why) == ("fancy", "${x} and ???", "lorafw has no such setting")
    assert [(x.setting, json.loads(x.value)) for x in s.imported.no_effect if x.setting == "log_with"] == [
        ("log_with", "tensorboard")]
    assert s.imported.source == "test" and s.imported.notes == tuple(imp.notes)
    assert write_recipe(imp, "test", tmp_path / "refused.yaml") is None  # without --lenient nothing is written


def test_a_malformed_value_is_named_not_a_traceback(tmp_path, capsys):
    from lorafw.cli import main

    f = tmp_path / "c.toml"
    f.write_text('max_train_epochs = 3\nresolution = 512\noptimizer_args = ["betas=[0.9"]\nnetwork_dim = "x"\n')
    assert main(["import", str(f), "--out", str(tmp_path / "r.yaml")]) == 2
    out = capsys.readouterr().out
    assert "optimizer_args.betas = '[0.9'" in out and "network_dim = 'x': malformed" in out
    (tmp_path / "bad.json").write_text("{")
    assert main(["import", str(tmp_path / "bad.json")]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_detection_from_content():
    assert detect({"LoRA_type": "Standard"}, True) == "bmaltais GUI JSON"
    assert detect({"subsets": [], "general_args": {"args": {}}}, False) == "GUI trainer TOML"
    assert detect({"network_arguments": {}, "training_arguments": {"lowram": True}, "saving_arguments": {}}, False) == "Colab XL"
    assert detect({"additional_network_arguments": {}, "dreambooth_arguments": {}}, False) == "Colab"
    assert detect({"model_arguments": {"pretrained_model_name_or_path": "x"}}, False) == "sd-scripts TOML"


# -- base_model=auto ----------------------------------------------------------------------------------------
def test_auto_arch_comes_from_the_checkpoint(tmp_path, tiny_xl_model, tiny_dataset):
    from lorafw.config.validate import resolve_arch

    f = tmp_path / "c.toml"
    f.write_text(f'pretrained_model_name_or_path = "{tiny_xl_model}"\nmax_train_epochs = 1\nresolution = 64\n')
    assert import_config(f).groups["base_model"] == "sdxl"  # read from its tensors at import time
    spec, _ = spec_from_dict(compose_dict(None, ["base_model=auto", f"base_model.path={tiny_xl_model}",
                                                 f"dataset.root={tiny_dataset}"]))
    assert spec.base_model.arch == "sdxl"
    unresolved, _ = spec_from_dict(compose_dict(None, ["base_model=auto", f"base_model.path={tiny_xl_model}",
                                                       f"dataset.root={tiny_dataset}"]), check_paths=False)
    assert unresolved.base_model.arch == "auto" and resolve_arch(unresolved).base_model.arch == "sdxl"


def test_report_shape_on_success(tmp_path):
    imp = import_config(FIX / "gui_sdxl_standard.json")
    rep = report(imp, write_recipe(imp, "x", tmp_path / "r.yaml"))
    assert rep["recipe"] == str(tmp_path / "r.yaml") and rep["not_honoured"] == [] and rep["imported"]["train.epochs"] == 12
    json.dumps(rep)


# -- settings the objective / networks / gpu issues added ---------------------------------------------------
def _toml(tmp_path: Path, body: str):
    f = tmp_path / "c.toml"
    f.write_text('[a]\npretrained_model_name_or_path = "/nowhere/x.safetensors"\nmax_train_epochs = 3\n'
                 'train_data_dir = "/d"\nresolution = "512"\n' + body)
    return import_config(f)


def test_a_scheduler_class_becomes_scheduler_type_with_its_args(tmp_path):
    imp = _toml(tmp_path, 'lr_scheduler = "cosine"\nlr_scheduler_type = "CosineAnnealingLR"\n'
                          'lr_scheduler_args = ["T_max=1000", "eta_min=0e-0"]\nlr_scheduler_num_cycles = 4\n')
    assert imp.not_honoured == []
    v = imp.values
    assert v["scheduler.type"] == "CosineAnnealingLR" and v["scheduler.args.T_max"] == 1000 and v["scheduler.args.eta_min"] == 0.0
    assert "scheduler.num_cycles" not in v and "scheduler.name" not in v  # sd-scripts passes only lr_scheduler_args
    assert {"lr_scheduler", "lr_scheduler_num_cycles"} <= {p.key for p in imp.no_effect}
    spec = spec_of(imp, tmp_path)
    assert spec.scheduler.type == "CosineAnnealingLR" and dict(spec.scheduler.args) == {"T_max": 1000, "eta_min": 0.0}
    # a warmup with a scheduler class: sd-scripts itself stops ("does not require num_warmup_steps")
    warm = _toml(tmp_path, 'lr_scheduler_type = "torch.optim.lr_scheduler.StepLR"\nlr_scheduler_args = ["step_size=10"]\n'
                           'lr_warmup_steps = 50\n')
    assert [p.key for p in warm.not_honoured] == ["lr_warmup_steps"] and all(lacks(p) for p in warm.not_honoured)


def test_an_optimizer_class_path_becomes_optimizer_name(tmp_path):
    imp = _toml(tmp_path, 'optimizer_type = "torch.optim.NAdam"\noptimizer_args = ["momentum_decay=0.004", "eps=1e-8"]\n')
    assert imp.not_honoured == []
    assert imp.values["optimizer.name"] == "torch.optim.NAdam"
    assert imp.values["optimizer.args.momentum_decay"] == 0.004 and imp.values["optimizer.args.eps"] == 1e-8
    assert spec_of(imp, tmp_path).optimizer.name == "torch.optim.NAdam"
    missing = _toml(tmp_path, 'optimizer_type = "no_such_package_xyz.Ranger"\n')  # lorafw could not build it here
    assert [p.key for p in missing.not_honoured] == ["optimizer_type"] and "not installed" in missing.not_honoured[0].why
    bad = _toml(tmp_path, 'optimizer_type = "NoSuchOptimizer"\n')
    assert [p.key for p in bad.not_honoured] == ["optimizer_type"] and lacks(bad.not_honoured[0])


def test_new_objective_and_precision_keys_are_honoured(tmp_path):
    imp = _toml(tmp_path, 'v_parameterization = true\nzero_terminal_snr = true\nmin_timestep = 100\nmax_timestep = 900\n'
                          'ip_noise_gamma = 0.05\nloss_type = "huber"\nhuber_c = 0.2\ndebiased_estimation_loss = true\n'
                          'scale_weight_norms = 1.0\nfull_fp16 = true\nmixed_precision = "fp16"\n'
                          'multires_noise_iterations = 6\nmultires_noise_discount = 0.3\n')
    assert imp.not_honoured == [], imp.not_honoured
    v = imp.values
    assert (v["train.prediction_type"], v["train.zero_terminal_snr"], v["train.min_timestep"], v["train.max_timestep"]) == (
        "v_prediction", True, 100, 900)
    assert (v["train.ip_noise_gamma"], v["train.loss_type"], v["train.huber_c"], v["train.full_fp16"]) == (0.05, "huber", 0.2, True)
    assert v["train.debiased_estimation_loss"] is True and v["train.scale_weight_norms"] == 1.0
    assert v["train.multires_noise_iterations"] == 6


def test_lycoris_use_cp_is_use_tucker_and_stop_te_has_no_effect_in_lora_training(tmp_path):
    imp = _toml(tmp_path, 'network_module = "lycoris.kohya"\nnetwork_dim = 8\nnetwork_alpha = 4\n'
                          'network_args = ["algo=lokr", "use_cp=True", "factor=8"]\nstop_text_encoder_training = 200\n')
    assert imp.not_honoured == [], imp.not_honoured
    assert imp.values["network.use_tucker"] is True and imp.values["network.factor"] == 8
    assert imp.imported_from["network.use_tucker"] == "network_args.use_tucker"
    # sd-scripts reads stop_text_encoder_training only in train_db.py; a LoRA run never stops the text encoder
    assert "stop_text_encoder_training" in {p.key for p in imp.no_effect}
    assert "optimizer.stop_text_encoder_training" not in imp.values


def test_ia3_dropout_has_no_effect_as_in_lycoris(tmp_path):
    """LyCORIS' IA3Module.forward applies module_dropout only: network_dropout and rank_dropout do nothing."""
    imp = _toml(tmp_path, 'network_module = "lycoris.kohya"\nnetwork_args = ["algo=ia3", "rank_dropout=0.2", '
                          '"module_dropout=0.1"]\nnetwork_dropout = 0.3\n')
    assert imp.not_honoured == [], imp.not_honoured
    assert {"network_dropout", "network_args.rank_dropout"} <= {p.key for p in imp.no_effect}
    s = spec_of(imp, tmp_path)
    assert (s.network.algo, s.network.dropout, s.network.rank_dropout, s.network.module_dropout) == ("ia3", 0.0, 0.0, 0.1)


def test_a_value_lorafw_validation_refuses_lands_on_the_setting_that_caused_it(tmp_path):
    imp = _toml(tmp_path, 'network_module = "lycoris.kohya"\nnetwork_args = ["algo=loha", "train_on_input=true"]\n')
    assert [p.key for p in imp.not_honoured] == ["network_args.train_on_input"] and "IA3" in imp.not_honoured[0].why


# -- Anima: sd-scripts' anima_train_network.py ------------------------------------------------------------------
def anima_toml(tmp_path: Path, *lines: str, network_args: str = "") -> Path:
    """The fixture's Anima config with `lines` added to its [training_arguments] (a key given again replaces it)."""
    import tomllib

    doc = tomllib.loads((FIX / "anima_config.toml").read_text())
    for line in lines:
        doc["training_arguments"].update(tomllib.loads(line))
    if network_args:
        doc["network_arguments"]["network_args"] = [network_args]
    doc["dataset_arguments"]["dataset_config"] = str(FIX / "anima_dataset.toml")
    import tomli_w

    (tmp_path / "anima.toml").write_text(tomli_w.dumps(doc))
    return tmp_path / "anima.toml"


def test_an_anima_toml_imports_every_setting_as_sd_scripts_trains_it(tmp_path):
    """sd-scripts' recommended Anima run: every key honoured or without effect; the Qwen3/VAE paths, the flow keys,
    the LLM adapter's adapters and their learning rate (network_reg_lrs) land on lorafw's keys."""
    import tomllib

    imp = import_config(FIX / "anima_config.toml")
    assert imp.not_honoured == [] and imp.groups["base_model"] == "anima"
    assert "network_module = networks.lora_anima and qwen3 names the Qwen3 text encoder" in imp.notes[-1]
    src = load_source(FIX / "anima_config.toml")
    assert not accounted(imp, src.args), "every key of the file is accounted for"
    assert tomllib.loads((FIX / "anima_config.toml").read_text())["model_arguments"]["qwen3"] == src.args["qwen3"]
    s = spec_of(imp, tmp_path)
    assert (s.base_model.arch, s.base_model.text_encoder, s.base_model.vae, s.base_model.llm_adapter) == (
        "anima", "/models/text_encoders/qwen_3_06b_base.safetensors", "/models/vae/qwen_image_vae.safetensors", None)
    assert (s.train.timestep_sampling, s.train.sigmoid_scale, s.train.discrete_flow_shift, s.train.weighting_scheme,
            s.train.logit_mean, s.train.logit_std, s.train.mode_scale) == ("sigmoid", 1.0, 1.0, "uniform", 0.0, 1.0, 1.29)
    assert (s.network.algo, s.network.dim, s.network.alpha, s.network.train_llm_adapter) == ("lora", 8, 1.0, True)
    assert (s.optimizer.name, s.optimizer.lr, s.optimizer.unet_lr, s.optimizer.text_encoder_lr,
            s.optimizer.llm_adapter_lr) == ("adamw8bit", 1e-4, 1e-4, 0.0, 5e-5)
    assert (s.dataset.resolution, s.dataset.cache_text_encoder_outputs, s.dataset.folders[0].repeats) == (1024, True, 10)
    assert (s.train.mixed_precision, s.train.gradient_checkpointing, s.train.epochs, s.train.batch_size) == ("bf16", True, 10, 2)
    assert s.train.min_snr_gamma is None and s.train.clip_skip == 1  # sd-scripts' Anima trainer applies neither


@pytest.mark.parametrize("line,network_args,key,why", [
    ("", "exclude_patterns=['.*mlp.*']", "network_args.exclude_patterns", "other module selections"),
    ("", "include_patterns=['.*final_layer.*']", "network_args.include_patterns", "other module selections"),
    ("", "network_reg_dims=.*self_attn.*=8,.*cross_attn.*=4", "network_args.network_reg_dims", "network.dim"),
    ("", "network_reg_lrs=.*self_attn.*=1e-4,.*cross_attn.*=5e-5", "network_args.network_reg_lrs", "optimizer.unet_lr"),
    ("", "network_reg_lrs=.*attn.*=5e-5", "network_args.network_reg_lrs", "optimizer.unet_lr"),  # DiT blocks too
    ('t5_tokenizer_path = "/tok/t5"', "", "t5_tokenizer_path", "configs/t5_old"),
    ("qwen3_max_token_length = 256", "", "qwen3_max_token_length", "512 tokens"),
    ("t5_max_token_length = 1024", "", "t5_max_token_length", "512 tokens"),
    ('attn_mode = "sageattn"', "", "attn_mode", "inference only"),
    ("vae_chunk_size = 64", "", "vae_chunk_size", "whole images"),
    ("vae_disable_cache = true", "", "vae_disable_cache", "differs from official behavior"),
])
def test_anima_settings_lorafw_does_not_train_are_refused_by_name(line, network_args, key, why, tmp_path):
    imp = import_config(anima_toml(tmp_path, *([line] if line else []), network_args=network_args))
    refused = {p.key: p.why for p in imp.not_honoured}
    assert list(refused) == [key] and why in refused[key], refused


@pytest.mark.parametrize("line,key,why", [
    ("self_attn_lr = 2e-4", "self_attn_lr", "only anima_train.py"),
    ("cross_attn_lr = 0.0", "cross_attn_lr", "only anima_train.py"),
    ("mlp_lr = 1e-5", "mlp_lr", "only anima_train.py"),
    ("mod_lr = 1e-5", "mod_lr", "only anima_train.py"),
    ("llm_adapter_lr = 5e-5", "llm_adapter_lr", "network_reg_lrs"),
    ("noise_offset = 0.0357", "noise_offset", "draws its own noise"),
    ("min_snr_gamma = 5.0", "min_snr_gamma", "no SNR weighting"),
    ("clip_skip = 2", "clip_skip", "no CLIP layers"),
    ("v_parameterization = true", "v_parameterization", "does not apply it"),
    ("split_attn = true", "split_attn", "memory strategy"),
    ("blocks_to_swap = 18", "blocks_to_swap", "memory strategy"),
    ("fp8_base = true", "fp8_base", "turns it off for Anima"),
    ('attn_mode = "flash"', "attn_mode", "the same result"),
])
def test_anima_settings_sd_scripts_does_not_apply_have_no_effect(line, key, why, tmp_path):
    """Not applied by anima_train_network.py, so lorafw reproduces the run without them (and keeps its own values)."""
    imp = import_config(anima_toml(tmp_path, line))
    assert imp.not_honoured == []
    assert why in {p.key: p.why for p in imp.no_effect}[key]
    assert key not in {o.split(" ")[0] for o in imp.imported_from.values()}
    s = spec_of(imp, tmp_path)
    assert (s.train.noise_offset, s.train.min_snr_gamma, s.train.clip_skip, s.train.prediction_type) == (0.0, None, 1, "auto")
    assert s.optimizer.llm_adapter_lr == 5e-5  # the fixture's network_reg_lrs, not llm_adapter_lr


def test_anima_xformers_and_cached_outputs_on_disk_are_honoured(tmp_path):
    imp = import_config(anima_toml(tmp_path, 'attn_mode = "xformers"', "cache_text_encoder_outputs = false",
                                   "cache_text_encoder_outputs_to_disk = true"))
    assert imp.not_honoured == []
    assert imp.values["train.attention"] == "xformers" and imp.values["dataset.cache_text_encoder_outputs"] is True


def test_anima_is_told_from_its_network_module_or_its_qwen3_key(tmp_path):
    from lorafw.interop.dialects import anima_why

    assert "network_module" in anima_why({"network_module": "networks.lora_anima"})
    assert "qwen3" in anima_why({"qwen3": "/q.safetensors"}) and anima_why({"network_module": "networks.lora"}) == ""
    f = tmp_path / "c.toml"
    f.write_text('qwen3 = "/q.safetensors"\nnetwork_module = "networks.lora"\nmax_train_epochs = 1\n')
    assert import_config(f).groups["base_model"] == "anima"
    f.write_text('sdxl = true\nnetwork_module = "networks.lora_anima"\nmax_train_epochs = 1\n')
    refused = {p.key: p.why for p in import_config(f).not_honoured}
    assert "mixes two architectures" in refused["network_module"]


def test_network_reg_lrs_is_the_llm_adapters_rate_only_when_it_selects_just_the_llm_adapter():
    from lorafw.interop.classify import llm_adapter_lr

    assert llm_adapter_lr(".*llm_adapter.*=5e-5") == 5e-5
    assert llm_adapter_lr(" llm_adapter\\..*=1e-5 ") == 1e-5
    assert llm_adapter_lr(".*self_attn.*=1e-4") is None  # the DiT's (and the adapter's) self-attention
    assert llm_adapter_lr(".*llm_adapter.*=5e-5,.*mlp.*=1e-4") is None
    assert llm_adapter_lr(".*llm_adapter.*=fast") is None and llm_adapter_lr("(=1e-4") is None


def test_flow_keys_have_no_effect_in_an_sd_config_and_go_with_flux_refused(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('sdxl = true\nmax_train_epochs = 1\ntimestep_sampling = "shift"\ndiscrete_flow_shift = 3.0\n')
    imp = import_config(f)
    assert imp.not_honoured == [] and "train.timestep_sampling" not in imp.values
    assert "sdxl_train_network.py have no such argument" in {p.key: p.why for p in imp.no_effect}["timestep_sampling"]
    f.write_text('max_train_epochs = 1\nae = "/ae.safetensors"\ndiscrete_flow_shift = 3.0\n')
    refused = {p.key: p.why for p in import_config(f).not_honoured}
    assert "FLUX.1" in refused["ae"] and "FLUX.1" in refused["discrete_flow_shift"]


def test_a_gui_json_anima_run_imports_faithfully(tmp_path):
    """The kohya_ss GUI's Anima accordion (anima_* keys) under sd-scripts' names; SD-only UI state has no effect."""
    imp = import_config(FIX / "gui_anima.json")
    assert imp.not_honoured == [] and imp.groups["base_model"] == "anima"
    assert not accounted(imp, from_gui_json(json.loads((FIX / "gui_anima.json").read_text())).args)
    s = spec_of(imp, tmp_path)
    assert (s.base_model.text_encoder, s.base_model.vae) == ("/models/text_encoders/qwen_3_06b_base.safetensors",
                                                             "/models/vae/qwen_image_vae.safetensors")
    assert (s.network.dim, s.network.alpha, s.optimizer.text_encoder_lr, s.dataset.cache_text_encoder_outputs) == (8, 1.0, 0.0, True)
    assert (s.train.timestep_sampling, s.train.discrete_flow_shift, s.train.epochs) == ("sigmoid", 1.0, 10)
    assert {p.key: p.why for p in imp.no_effect}["down_lr_weight"] == "not used by LoRA_type = Anima"


def test_the_rectified_flow_sdxl_forks_keys_are_refused_with_lorafws_way(tmp_path):
    """bluvoll/sd-scripts' RF options (Easy Training Scripts' RF support) are not sd-scripts' names: each is refused
    naming what lorafw trains those models with (train.prediction_type=flow, base_model=sdxl_rf), not as unknown."""
    (tmp_path / "data" / "1_x").mkdir(parents=True)
    toml = tmp_path / "rf.toml"
    toml.write_text(f'pretrained_model_name_or_path = "/m/rf.safetensors"\ntrain_data_dir = "{tmp_path / "data"}"\n'
                    'max_train_epochs = 4\nflow_model = true\nflow_use_ot = true\nflow_logit_mean = -0.2\n'
                    'flow_uniform_static_ratio = 2.5\n')
    refused = {p.key: p.why for p in import_config(toml).not_honoured}
    assert "prediction_type=flow" in refused["flow_model"] and "sdxl_rf" in refused["flow_model"]
    assert "logit_mean" in refused["flow_logit_mean"] and "discrete_flow_shift" in refused["flow_uniform_static_ratio"]
    assert "lorafw has none" in refused["flow_use_ot"]


# -- non-square resolution, random crop, bucket steps (lorafw issue 26) ---------------------------------------
@pytest.mark.parametrize("line,value", [('resolution = "512,650"', [512, 650]), ("resolution = [640, 512]", [640, 512]),
                                        ('resolution = "768,768"', 768), ('resolution = "512"', 512)])
def test_a_w_h_resolution_is_imported_as_kohya_reads_it(line, value, tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('pretrained_model_name_or_path = "/m.safetensors"\nmax_train_epochs = 1\ntrain_data_dir = "/d"\n'
                 + line + "\n")
    imp = import_config(f)
    assert imp.not_honoured == [] and imp.values["dataset.resolution"] == value
    assert spec_of(imp, tmp_path).dataset.size == ((value, value) if isinstance(value, int) else tuple(value))


def test_a_resolution_that_is_not_n_or_w_h_is_refused_by_name(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('pretrained_model_name_or_path = "/m"\nmax_train_epochs = 1\nresolution = "512,640,768"\n')
    imp = import_config(f)
    assert [(p.key, p.value) for p in imp.not_honoured] == [("resolution", "512,640,768")]


@pytest.mark.parametrize("sdxl,script,multiple", [(False, "train_network.py", 64), (True, "sdxl_train_network.py", 32)])
def test_bucket_reso_steps_1_is_refused_saying_sd_scripts_refuses_it_too(sdxl, script, multiple, tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"LoRA_type": "Standard", "sdxl": sdxl, "max_resolution": "512,512", "epoch": 1,
                             "enable_bucket": True, "bucket_reso_steps": 1, "pretrained_model_name_or_path": "/m",
                             "train_data_dir": "/d", "optimizer": "AdamW"}))
    imp = import_config(f)
    (bad,) = [p for p in imp.not_honoured if p.key == "bucket_reso_steps"]
    assert f"sd-scripts' {script} refuses it too (verify_bucket_reso_steps({multiple}))" in bad.why


def test_a_gui_trainer_toml_with_random_crop_imports_and_trains(tmp_path, tiny_model):
    from conftest import make_folder
    from safetensors import safe_open

    from lorafw.config.compose import compose
    from lorafw.run import resolve_outputs
    from lorafw.trainers.trainer import prepare

    data = tmp_path / "data"
    make_folder(data, "2_wide", [(128, 64), (160, 64)], ["toy, wide"])
    make_folder(data, "1_tall", [(64, 96)], ["toy, tall"])
    src = tmp_path / "gui.toml"
    src.write_text((FIX / "gui_trainer_random_crop.toml").read_text().replace("{data}", str(data))
                   .replace("{model}", str(tiny_model)))
    imp = import_config(src)
    assert imp.not_honoured == [] and imp.values["dataset.random_crop"] is True
    assert imp.values["dataset.resolution"] == [64, 96] and imp.values["dataset.cache_latents"] is False
    assert [f.get("random_crop") for f in imp.values["dataset.folders"]] == [True, None]
    recipe = write_recipe(imp, "test", tmp_path / "r.yaml")
    spec = resolve_outputs(compose(str(recipe), [f"output.dir={tmp_path / 'run'}", "output.name=toy"]))
    assert spec.dataset.size == (64, 96) and spec.dataset.folders[0].random_crop is True
    tr = prepare(spec, spec.output.dir)
    assert all(f.random_crop for f in tr.data.folders)  # the second subset takes the dataset-wide random_crop
    result = tr.run()
    assert tr.state.global_step == 5  # (2 images × 2 repeats + 1) items, batch 1, one epoch
    with safe_open(str(result.lora_files[-1]), "pt") as f:
        meta = f.metadata()
    assert meta["ss_random_crop"] == "True" and meta["ss_resolution"] == "(64, 96)"
    assert meta["modelspec.resolution"] == "64x96"
    (ds,) = json.loads(meta["ss_datasets"])
    assert ds["resolution"] == [64, 96] and [s["random_crop"] for s in ds["subsets"]] == [True, True]


def test_random_crop_with_cached_latents_is_refused_on_random_crop_as_sd_scripts_refuses_it(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"LoRA_type": "Standard", "max_resolution": "512,512", "epoch": 1, "random_crop": True,
                             "cache_latents": True, "pretrained_model_name_or_path": "/m", "train_data_dir": "/d",
                             "optimizer": "AdamW"}))
    (bad,) = import_config(f).not_honoured
    assert (bad.key, bad.value) == ("random_crop", True)
    assert "is_latent_cacheable" in bad.why and "set dataset.cache_latents=false" in bad.why
    f.write_text(f.read_text().replace('"cache_latents": true', '"cache_latents": false'))
    imp = import_config(f)
    assert imp.not_honoured == [] and imp.values["dataset.random_crop"] is True
