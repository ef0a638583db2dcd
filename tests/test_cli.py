"""The `lorafw` command as users run it (subprocesses), and the installed package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import make_folder, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


def lorafw(*args: str, cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    p = subprocess.run([sys.executable, "-m", "lorafw", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"lorafw {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def test_cfg_job_prints_the_resolved_recipe(tmp_path):
    assert "unet_lr: 0.0005" in lorafw("--cfg", "job", "+recipe=sd15_character", cwd=tmp_path).stdout  # flag first
    out = lorafw("+recipe=sd15_character", "network.dim=32", "--cfg", "job", cwd=tmp_path).stdout
    assert "clip_skip: 2" in out and "max_token_length: 225" in out and "name: adamw8bit" in out
    assert "dim: 32" in out and "num_cycles: 3" in out
    assert "unet_lr: 0.0005" in out and "text_encoder_lr: 0.0001" in out and "${" not in out
    assert not (tmp_path / "outputs").exists()


def test_config_errors_exit_2_with_the_message_and_create_nothing(tmp_path):
    p = lorafw("+recipe=sd15_character", "optimizer.lrr=1", "base_model.path=/x", cwd=tmp_path, check=False)
    assert p.returncode == 2
    assert "optimizer.lrr: unknown key; did you mean optimizer.lr?" in p.stderr and "Traceback" not in p.stderr
    p = lorafw("+recipe=sd15_character", f"base_model.path={tmp_path}/none.safetensors", f"dataset.root={tmp_path}/none", cwd=tmp_path, check=False)
    assert p.returncode == 2 and "base_model.path:" in p.stderr and "dataset.root:" in p.stderr
    assert not (tmp_path / "outputs").exists()


def test_a_two_job_sweep_writes_two_runs(tmp_path, tiny_model, tiny_dataset):
    sweep = tmp_path / "sweep"
    args = tiny_overrides(tiny_model, tiny_dataset, sweep)
    p = lorafw("-m", "+recipe=sd15_character", *args, "optimizer.lr=1e-4,5e-4", cwd=tmp_path)
    runs = sorted(d for d in sweep.iterdir() if d.is_dir())
    assert [d.name for d in runs] == ["0_optimizer.lr=0.0001", "1_optimizer.lr=0.0005"], p.stdout
    lrs = []
    for d in runs:
        assert (d / "toy-01.safetensors").is_file() and (d / ".hydra" / "config.yaml").is_file()
        rec = json.loads((d / "run.json").read_text())
        assert rec["status"] == "finished"
        lrs.append(float((d / "config.yaml").read_text().split("unet_lr: ")[1].split()[0]))
    assert lrs == [1e-4, 5e-4]
    assert (sweep / "multirun.yaml").is_file()


def test_single_run_and_rerun_reproduce_the_same_tensors(tmp_path, tiny_model, tiny_dataset):
    run = tmp_path / "run"
    p = lorafw("+recipe=sd15_character", *tiny_overrides(tiny_model, tiny_dataset, run), cwd=tmp_path)
    assert f"1 LoRA file(s) in {run}" in p.stdout
    assert (run / "lorafw.log").is_file()  # Hydra's job log, beside the LoRA files
    from lorafw.cli import main

    cwd = os.getcwd()
    os.chdir(tmp_path)  # rerun writes to a new default folder under ./outputs (in this process: no start-up cost)
    try:
        assert main(["rerun", str(run)]) == 0
    finally:
        os.chdir(cwd)
    reruns = list((tmp_path / "outputs" / "toy").iterdir())
    assert len(reruns) == 1
    a, b = load_file(str(run / "toy-01.safetensors")), load_file(str(reruns[0] / "toy-01.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    hydra_cfg = (run / ".hydra" / "config.yaml").read_bytes()
    p = lorafw("+recipe=sd15_character", *tiny_overrides(tiny_model, tiny_dataset, run), cwd=tmp_path, check=False)
    assert p.returncode == 2 and f"output.dir: {run} already holds a run" in p.stderr
    assert (run / ".hydra" / "config.yaml").read_bytes() == hydra_cfg  # nothing of the first run was touched


def test_check_prints_the_plan(tmp_path, tiny_model, tiny_dataset):
    out = lorafw("check", "+recipe=sd15_character", *tiny_overrides(tiny_model, tiny_dataset, tmp_path / "r"), "train.epochs=10", cwd=tmp_path).stdout
    assert "4 images, 8 items/epoch, 1 bucket(s), 4 steps/epoch × 10 epochs = 40 steps" in out
    assert not (tmp_path / "r").exists()


def test_recipes_are_listed(tmp_path):
    out = lorafw("recipes", cwd=tmp_path).stdout
    assert [ln.split()[0] for ln in out.splitlines()] == ["anima_character", "anima_style", "illustrious", "noobai_vpred",
                                                       "pdxl", "pdxl_dora", "sd15_character", "sd15_prodigy", "sdxl_rf"]


def test_help_names_the_common_keys(tmp_path):
    out = lorafw("--help", cwd=tmp_path).stdout
    assert "lorafw +recipe=sd15_character" in out and "base_model.path, dataset.root" in out


@pytest.mark.slow
def test_demo_runs_on_a_fresh_folder_and_its_picture_says_what_the_lora_learned(tmp_path):
    from PIL import Image

    from lorafw.cli import demo_picture as dp
    from lorafw.cli.demo import MIN_SHIFT

    p = lorafw("demo", "--dir", str(tmp_path / "demo"), "--epochs", "4", cwd=tmp_path)
    files = list((tmp_path / "demo" / "runs").glob("*/shapes_demo-04.safetensors"))
    assert len(files) == 1 and str(files[0]) in p.stdout
    run = files[0].parent
    grid = run / "grids" / "prompt-00.png"
    assert grid.is_file() and str(grid) in p.stdout  # the demo ends with the guide's epoch × weight grid
    layout = json.loads(Image.open(grid).info["lorafw_grid"])
    assert layout["rows"] == ["shapes_demo-04", "shapes_demo-02"] and layout["columns"] == ["1", "0"]
    assert (tmp_path / "demo" / "models" / "tiny-sd15-canvas.safetensors").is_file()
    training = sorted((tmp_path / "demo" / "dataset" / "4_shapes").glob("*.png"))
    assert len(training) == 12 and len(list(training[0].parent.glob("*.txt"))) == 12
    picture = run / "demo.png"
    assert picture.is_file() and f"with the losses per epoch: {picture}" in p.stdout
    # The picture's claim, measured again here: how far the base model's (weight 0) and the LoRA's (weight 1.0)
    # samples are from the training images' mean colour, same prompt and seed; the printout must say what
    # the numbers say, and the LoRA must have changed the samples at all.
    target = dp.mean_colour([Image.open(f) for f in training])
    shifts = []
    for i in (0, 1):
        base, lora = (Image.open(run / "grids" / f"prompt-{i:02d}" / f"shapes_demo-04_w{w}.png") for w in (0, 1))
        assert base.tobytes() != lora.tobytes()
        shifts.append(dp.colour_shift(base, lora, target))
    before, after = (sum(s[j] for s in shifts) / 2 for j in (0, 1))
    assert f"{before:.2f} (base model) → {after:.2f}" in p.stdout
    assert after < before - MIN_SHIFT  # the canvas base draws grey; 4 epochs already move it to the red shapes
    assert "lorafw demo: the LoRA learned the training images' colours" in p.stdout
    assert "the tiny model did not learn a visible concept" not in p.stdout
    report = run / "report.html"  # and then names the epoch and weight to use, and the page
    assert report.is_file() and p.stdout.rstrip().endswith(f"lorafw demo: the whole run on one page: {report}")
    assert "lorafw demo: recommended: shapes_demo-0" in p.stdout and "validation loss" in p.stdout


@pytest.mark.slow
def test_a_non_editable_install_finds_conf_and_recipes(tmp_path):
    import shutil

    src = tmp_path / "src"  # build from a copy: pip writes build/ and *.egg-info beside the sources
    top_level = {".git", ".venv", "build", "dist", "outputs", "multirun", "lorafw-demo", ".pytest_cache"}

    def skip(folder: str, names: list[str]) -> set[str]:
        here = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        return here | (top_level & set(names) if Path(folder) == ROOT else set())

    shutil.copytree(ROOT, src, symlinks=True, ignore=skip)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q", "--target", str(target), str(src)],
                   check=True, capture_output=True, text=True)
    pkg = target / "lorafw"
    assert (pkg / "conf" / "config.yaml").is_file() and (pkg / "conf" / "recipe" / "pdxl_dora.yaml").is_file()
    assert (pkg / "models" / "tokenizer_data" / "clip" / "vocab.json").is_file()
    code = ("import lorafw.config.compose as c; print(c.conf_dir()); "
            "print(c.compose_dict('sd15_prodigy', ['base_model.path=/m', 'dataset.root=/d'])['optimizer']['name'])")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env, check=True).stdout.split()
    assert out == [str(pkg / "conf"), "prodigy"]
    # every module of the source tree is in the installed copy (a package missing from pyproject fails here)
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "lorafw").rglob("*.py"))
    installed = sorted(".".join(p.relative_to(target).with_suffix("").parts).removesuffix(".__init__")
                       for p in pkg.rglob("*.py"))
    assert installed == modules
    code = "import importlib, sys; [importlib.import_module(m) for m in sys.argv[1:]]; print('ok')"
    assert subprocess.run([sys.executable, "-c", code, *[m for m in modules if not m.endswith("__main__")]], cwd=tmp_path,
                          capture_output=True, text=True, env=env, check=True).stdout.strip() == "ok"


def test_ctrl_c_during_training_exits_130_keeping_finished_epochs(tmp_path, tiny_model, tiny_dataset):
    import signal

    run = tmp_path / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    args = [*tiny_overrides(tiny_model, tiny_dataset, run), "train.epochs=500"]
    # A shell starts background jobs (CI, nohup) with SIGINT ignored, and Python keeps it ignored; a
    # terminal's Ctrl-C reaches a process that has the default disposition, so give the child that.
    p = subprocess.Popen([sys.executable, "-m", "lorafw", "+recipe=sd15_character", *args], cwd=tmp_path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        for line in p.stdout:  # Hydra logs to stdout
            if "saved" in line and "toy-02.safetensors" in line:
                break
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert "stopped at step" in err and f"continue with: lorafw resume {run}" in err and "Traceback" not in err
    assert load_file(str(run / "toy-01.safetensors")) and load_file(str(run / "toy-02.safetensors"))
    assert len(list(run.glob("toy-step*.safetensors"))) == 1 and (run / "state.pt").is_file()
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"


def test_ctrl_c_before_training_is_a_message(monkeypatch, capsys):
    from lorafw import cli
    from lorafw.cli import train as train_cli

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_cli, "hydra_main", interrupted)
    assert cli.main(["+recipe=sd15_character"]) == 130
    assert "interrupted before training started" in capsys.readouterr().err


def test_a_users_own_recipe_file(tmp_path, tiny_model, tiny_dataset):
    """The guide's multi-concept layout in a YAML file of the user's, extending a shipped recipe."""
    outfits = []
    for name, trigger in (("outfit1", "zetadef"), ("outfit2", "zetasummer")):
        make_folder(tmp_path / "zeta", name, [(64, 64)] * 2, ["1girl, dress"])
        outfits.append(f"    - {{path: {tmp_path / 'zeta' / name}, repeats: 3, trigger: {trigger}}}")
    recipe = tmp_path / "zeta.yaml"
    recipe.write_text("# @package _global_\ndefaults:\n  - sd15_character\n  - override /dataset: concepts\n"
                      "dataset:\n  resolution: 64\n  min_bucket_reso: 64\n  folders:\n" + "\n".join(outfits) + "\n")
    plan = json.loads(lorafw("plan", "--json", f"+recipe={recipe}", cwd=tmp_path).stdout)
    assert (plan["T"], plan["steps_per_epoch"], plan["advice"]["balance"]["repeats"]) == (12, 6, {"outfit1": 1, "outfit2": 1})
    run = tmp_path / "run"
    lorafw(f"+recipe={recipe}", f"base_model.path={tiny_model}", "train.epochs=1", f"output.dir={run}", "output.name=zeta", cwd=tmp_path)
    with safe_open(str(run / "zeta-01.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.trigger_phrase"] == "zetadef, zetasummer"
    assert json.loads(meta["ss_tag_frequency"])["outfit1"]["zetadef"] == 2
