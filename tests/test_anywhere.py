"""The same files on any machine: the same model and data in another folder train the same LoRA, bit for bit.

Nothing a run draws may depend on where its files live (the VAE's latent sample was once seeded by the image's
absolute path: step-1 loss 0.5306 in one folder, 0.5390 in another), and nothing in a LoRA file may name a
local path (users share the files: kohya's ss_dataset_dirs and ss_sd_model_name carry folder and file names only).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import picture
from PIL import Image
from safetensors import safe_open

from lorafw.config.compose import compose, load_spec
from lorafw.outputs.lora_file import file_data_sha256
from lorafw.run import train

# the keys that differ between any two runs, wherever they run (tests/test_speed_levers.py leaves out the same)
VOLATILE = {"ss_session_id", "ss_training_started_at", "ss_training_finished_at", "ss_training_time", "modelspec.date",
            "sshs_legacy_hash"}


def project(base: Path, model: Path) -> Path:
    """A user's project folder: the model, two REPEATS_NAME folders (RGBA: their alpha is the loss mask), a folder
    named explicitly with a trigger and a mask folder, regularisation images, and a latent cache."""
    data = base / "data"
    for folder, seeds, size in (("2_alpha", (1, 2), (64, 64)), ("1_beta", (4,), (96, 64))):
        for i, seed in enumerate(seeds):
            im = picture(seed, size).convert("RGBA")
            im.paste((0, 0, 0, 0), (0, 0, 16, size[1]))  # a transparent band: masked out
            (data / "train" / folder).mkdir(parents=True, exist_ok=True)
            im.save(data / "train" / folder / f"{i}.png")
            (data / "train" / folder / f"{i}.txt").write_text(f"{folder[2:]}, tag{i}, colour {i % 2}, simple, extra\n")
    for sub in ("gamma", "masks", "reg/1_person"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    for i in range(2):
        picture(10 + i, (64, 96)).save(data / "gamma" / f"g{i}.png")
        (data / "gamma" / f"g{i}.txt").write_text(f"thing{i}, red, blue, green\n")
        mask = Image.new("L", (64, 96), 255)
        mask.paste(0, (0, 0, 32, 96))  # the left half is not learned
        mask.save(data / "masks" / f"g{i}.png")
    picture(20, (64, 64)).save(data / "reg" / "1_person" / "r0.png")
    (data / "reg" / "1_person" / "r0.txt").write_text("person\n")
    (base / "models").mkdir(parents=True)
    shutil.copy2(model, base / "models" / model.name)
    return base


# Text-encoder outputs can be cached only while captions do not change between draws (whole-caption dropout
# aside), so the caption features are split over two runs; every other dataset feature is on in both.
CAPTIONS = {
    "text_cache": ["dataset.cache_text_encoder_outputs=true", "optimizer.text_encoder_lr=0",
                   "dataset.shuffle_caption=false", "dataset.caption_dropout_rate=0.3"],
    "shuffled": ["dataset.shuffle_caption=true", "dataset.keep_tokens=1", "dataset.caption_tag_dropout_rate=0.2",
                 "dataset.caption_dropout_rate=0.3", "optimizer.text_encoder_lr=1e-3"],
}


RECIPE = """# @package _global_
defaults:
  - sd15_character
base_model:
  path: models/MODEL
dataset:
  root: data/train
  reg_root: data/reg
  folders:
    - {path: data/gamma, repeats: 2, trigger: gam, mask_dir: data/masks}
  cache_dir: cache
output:
  dir: run
"""


def settings(captions: str) -> list[str]:
    return ["dataset.resolution=64", "dataset.min_bucket_reso=64", "dataset.max_bucket_reso=128", "train.epochs=1",
            "output.name=toy", "dataset.prior_loss_weight=0.5", "dataset.masked_loss=true", "dataset.flip_aug=true",
            "validation.split=0.25", "dataset.cache_latents=true", "dataset.cache_latents_to_disk=true",
            "train.batch_size=2", "train.max_token_length=75", "output.save_precision=fp32", *CAPTIONS[captions]]


def train_given_absolute_paths(base: Path, model_name: str, captions: str):
    d = base / "data"
    return train(compose("sd15_character", [
        f"base_model.path={base / 'models' / model_name}", f"dataset.root={d / 'train'}",
        f"dataset.reg_root={d / 'reg'}",
        f"dataset.folders=[{{path: {d / 'gamma'}, repeats: 2, trigger: gam, mask_dir: {d / 'masks'}}}]",
        f"dataset.cache_dir={base / 'cache'}", f"output.dir={base / 'run'}", *settings(captions)]))


def train_from_a_committed_recipe(base: Path, model_name: str, captions: str):
    """As a user who committed the recipe beside the data, cloned it, and runs lorafw in the clone's folder."""
    (base / "recipe.yaml").write_text(RECIPE.replace("MODEL", model_name))
    os.chdir(base)
    return train(compose("./recipe.yaml", settings(captions)))


def cache_files(cache: Path) -> dict[str, int]:
    return {str(f.relative_to(cache)): f.stat().st_mtime_ns for f in cache.rglob("*.safetensors")}


def lora_contents(path: Path) -> tuple[str, dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata() or {})
    return file_data_sha256(path), meta


def lasting(meta: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in meta.items() if k not in VOLATILE}


def record(run: Path, base: Path) -> dict:
    """run.json's figures, with the project folder's path (which it names as a local record) taken out."""
    rec = json.loads((run / "run.json").read_text().replace(str(base), "BASE"))
    return {k: rec.get(k) for k in ("plan", "epoch_losses", "final_loss", "steps", "skipped_steps", "lora_files",
                                    "dataset", "lint")}


@pytest.mark.slow  # two short runs per case (minutes on a loaded 2-core machine)
@pytest.mark.parametrize("captions", sorted(CAPTIONS))
def test_the_same_project_in_another_folder_trains_the_same_lora(captions, tiny_model, tmp_path, monkeypatch):
    here = project(tmp_path / "a", tiny_model)
    there = tmp_path / "elsewhere" / "much deeper" / "b"  # another path, of another length, with a space
    shutil.copytree(here, there)
    res_a = train_given_absolute_paths(here, tiny_model.name, captions)
    shutil.copytree(here / "cache", there / "cache")  # the latent cache moves with the project: it is still valid
    cached = cache_files(there / "cache")
    monkeypatch.chdir(tmp_path)  # (train_from_a_committed_recipe changes it)
    res_b = train_from_a_committed_recipe(there, tiny_model.name, captions)
    assert cached and cache_files(there / "cache") == cached, "a latent cache entry is keyed by where the image lives"

    assert res_a.loss_history == res_b.loss_history and res_a.val_losses == res_b.val_losses
    names = sorted(p.name for p in (here / "run").glob("*.safetensors"))
    assert names and names == sorted(p.name for p in (there / "run").glob("*.safetensors"))
    for name in names:
        (data_a, meta_a), (data_b, meta_b) = lora_contents(here / "run" / name), lora_contents(there / "run" / name)
        assert data_a == data_b, f"{name}: the tensors differ"
        assert lasting(meta_a) == lasting(meta_b)
        for meta in (meta_a, meta_b):  # no local path in a file users share
            leaked = [k for k, v in meta.items() if str(tmp_path) in v or os.sep + "models" + os.sep in v]
            assert not leaked, f"{name}: {leaked} name a local path"
        assert int(meta_a["ss_num_reg_images"]) and int(meta_a["ss_num_validation_images"])
    rec_a, rec_b = record(here / "run", here), record(there / "run", there)
    assert rec_a == rec_b
    assert rec_b["dataset"]["files"][0]["path"].startswith("BASE/data/")  # the relative paths, resolved once
    saved = load_spec(there / "run")  # what `lorafw resume` reads, from any folder
    assert saved.dataset.root == str(there / "data" / "train")
    assert saved.dataset.folders[0].path == str(there / "data" / "gamma")


def test_relative_paths_are_resolved_once_against_the_folder_lorafw_runs_in(compose_tiny, tiny_dataset, tmp_path,
                                                                            monkeypatch):
    """A run records the files it trained on: `lorafw resume` from another folder, and run.json, name the same ones."""
    from lorafw.run import absolute_paths

    project = tmp_path / "project"
    shutil.copytree(tiny_dataset, project / "data")
    (project / "masks").mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("LORAFW_TEST_HOME", str(tmp_path))
    spec = absolute_paths(compose_tiny("sd15_character", "dataset.cache_dir=$LORAFW_TEST_HOME/c",
                                       "dataset.folders=[{path: data/2_toy, repeats: 1, mask_dir: masks}]",
                                       "dataset.root=null", "output.dir=out"))
    assert spec.dataset.folders[0].path == str(project / "data" / "2_toy")
    assert spec.dataset.folders[0].mask_dir == str(project / "masks")
    assert spec.dataset.cache_dir == str(tmp_path / "c") and spec.dataset.reg_root is None
    assert spec.output.dir == "out"  # where it writes stays as given: messages name it as the user did
    assert absolute_paths(spec) == spec
