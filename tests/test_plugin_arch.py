"""A model family from outside lorafw/ (tests/plugins/toyarch), registered the way any package registers one, under
the `lorafw.architectures` entry-point group, trains through the ordinary CLI: files, samples, report, resume."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from conftest import tiny_overrides

PLUGIN = Path(__file__).parent / "plugins" / "toyarch"


def install_plugin(site: Path, entry_points: str = "toy = toyarch:ARCH") -> Path:
    """The package and its dist-info (what `pip install` of a package with that entry point leaves behind)."""
    shutil.copytree(PLUGIN, site / "toyarch", ignore=shutil.ignore_patterns("__pycache__"))
    info = site / "toyarch-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toyarch\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[lorafw.architectures]\n{entry_points}\n")
    return site


def cli(site: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "lorafw", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def toy_checkpoint(site: Path, path: Path) -> Path:
    """The plugin's checkpoint, written by the installed plugin's own code (imported from `site` for a moment)."""
    sys.path.insert(0, str(site))
    try:
        import toyarch

        return toyarch.save_checkpoint(path)
    finally:
        sys.path.remove(str(site))
        sys.modules.pop("toyarch", None)


@pytest.mark.slow
def test_an_out_of_tree_architecture_trains_through_the_cli(tmp_path, tiny_dataset):
    site = install_plugin(tmp_path / "site")
    model = toy_checkpoint(site, tmp_path / "toy.safetensors")
    out = tmp_path / "run"
    args = ["+recipe=sd15_character", *tiny_overrides(model, tiny_dataset, out), "base_model.arch=toy",
            "train.epochs=2", "optimizer=adamw", "optimizer.lr=1e-2", "optimizer.text_encoder_lr=1e-3",
            "train.gradient_checkpointing=false", "sample.every_n_epochs=1", "sample.sampler=ddim", "sample.steps=4",
            "validation.split=0.25", "output.save_precision=fp32"]
    p = cli(site, *args, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    record = json.loads((out / "run.json").read_text())
    assert record["arch"] == "toy" and record["status"] == "finished"
    with safe_open(str(out / "toy-02.safetensors"), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    # the family's targets and names: both ToyBlocks' five Linear layers, and the text encoder's MLP
    unet = {k.split(".")[0] for k in keys if k.startswith("lora_unet_")}
    assert unet == {f"lora_unet_blocks_{b}_{m}" for b in (0, 1) for m in ("q", "k", "v", "out", "mlp")}
    assert {k.split(".")[0] for k in keys if k.startswith("lora_te_")} == {
        "lora_te_text_model_block_fc1", "lora_te_text_model_block_fc2"}
    assert meta["ss_base_model_version"] == "toy_v1" and meta["modelspec.architecture"] == "toy/lora"
    assert sorted(p.name for p in (out / "samples").glob("*.png")) == ["toy-01_00.png", "toy-02_00.png"]
    assert (out / "report.html").is_file()
    summary = json.loads((out / "run_summary.json").read_text())
    assert len(summary["epochs"]) == 2

    # killed mid-run (SIGKILL after step 3, state saved at step 2), then resumed: the same files as the run above
    again = tmp_path / "again"
    env = {"LORAFW_FAULT": "kill_at_step:3"}
    p = cli(site, *args, f"output.dir={again}", "output.save_state_every_n_steps=2", cwd=tmp_path, env=env)
    assert p.returncode == -9 and not (again / "toy-02.safetensors").exists()  # SIGKILLed after step 3
    assert json.loads((again / "run.json").read_text())["state"]["step"] == 2
    p = cli(site, "resume", str(again), cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    from safetensors.torch import load_file

    a, b = load_file(str(out / "toy-02.safetensors")), load_file(str(again / "toy-02.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_checkpoint_of_another_family_and_an_unknown_family_are_named(tmp_path, tiny_dataset, tiny_model):
    """base_model.arch=toy on an SD1.5 file, and a family nobody registered: a message, no traceback."""
    site = install_plugin(tmp_path / "site")
    args = ["+recipe=sd15_character", *tiny_overrides(tiny_model, tiny_dataset, tmp_path / "run")]
    p = cli(site, *args, "base_model.arch=toy", cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "is not a toy checkpoint" in p.stderr
    # a family whose denoiser has no gradient checkpointing: refused by name before training, not an AttributeError
    site2 = tmp_path / "model"
    site2.mkdir()
    model = toy_checkpoint(site, site2 / "toy.safetensors")
    p = cli(site, "+recipe=sd15_character", *tiny_overrides(model, tiny_dataset, tmp_path / "gc"), "base_model.arch=toy",
            "train.gradient_checkpointing=true", cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "train.gradient_checkpointing: the Toy family's ToyDenoiser does not support it" in p.stderr
    p = cli(site, *args, "base_model.arch=mystery", cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "'mystery'" in p.stderr and "sd15, sdxl, toy" in p.stderr

    # broken plugins: an entry point that does not load, and an object that is not a family
    broken = install_plugin(tmp_path / "broken", "gone = toyarch:NOT_THERE\nhalf = toyarch:Info")
    p = cli(broken, *args, "base_model.arch=gone", cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "base_model.arch=gone: the package registering it (toyarch:NOT_THERE) failed to load" in p.stderr
    p = cli(broken, *args, "base_model.arch=half", cwd=tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert "is not an architecture (it lacks inspect, load" in p.stderr
