"""Validation loss, EMA, metrics logs and TensorBoard, the run summary, and comparing a sweep."""

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
from lorafw.run import resolve_outputs
from lorafw.trainers.trainer import Trainer, prepare

ROOT = Path(__file__).resolve().parents[1]


def trainer_for(spec) -> Trainer:
    spec = resolve_outputs(spec)
    return prepare(spec, spec.output.dir)


@pytest.fixture
def six_images(tmp_path):
    make_folder(tmp_path / "data", "2_toy", [(64, 64)] * 6, ["toy, red", "toy, blue", "toy, green"])
    return tmp_path / "data"


def test_validation_split_is_held_out_and_repeatable(compose_tiny, six_images):
    tr = trainer_for(compose_tiny("sd15_character", "validation.split=0.34", "train.epochs=2", data=six_images))
    assert len(tr.data.images) == 4 and len(tr.val_data.images) == 2  # held-out images are not trained on
    assert not {i.entry.path for i in tr.data.images} & {i.entry.path for i in tr.val_data.images}
    result = tr.run()
    first, second = tr.validation_loss(), tr.validation_loss()
    assert first == second  # fixed noise and timesteps: the same weights give the same number
    summary = json.loads((result.run_dir / "run_summary.json").read_text())
    assert [e["val_loss"] is not None for e in summary["epochs"]] == [True, True]
    assert summary["best_val_epoch"] in (1, 2) and summary["epochs"][1]["val_loss"] == pytest.approx(first)
    with safe_open(str(result.lora_files[-1]), "pt") as f:  # kohya's validation keys
        m = f.metadata()
    assert (m["ss_num_validation_images"], m["ss_validation_split"], m["ss_validate_every_n_epochs"]) == ("2", "0.34", "1")
    again = trainer_for(compose_tiny("sd15_character", "validation.split=0.34", "output.dir=" + str(result.run_dir) + "-b",
                                     data=six_images))
    assert {i.entry.path for i in again.val_data.images} == {i.entry.path for i in tr.val_data.images}  # chosen by the seed


def test_validation_folder(compose_tiny, six_images, tmp_path):
    val = make_folder(tmp_path, "val", [(64, 64)] * 2, ["toy, held out"])
    tr = trainer_for(compose_tiny("sd15_character", f"validation.root={val}", data=six_images))
    assert len(tr.data.images) == 6 and len(tr.val_data.images) == 2
    tr.run()
    rows = [json.loads(x) for x in (tr.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] is not None for r in rows if r["kind"] == "epoch"] == [True]


def test_ema_files(compose_tiny):
    tr = trainer_for(compose_tiny("sd15_character", "ema.enabled=true", "ema.decay=0.9", "train.epochs=2", "optimizer.lr=1e-2",
                                  "output.save_precision=fp32"))
    result = tr.run()
    ema = tr.run_dir / "toy-02-ema.safetensors"
    a, b = load_file(str(result.lora_files[-1])), load_file(str(ema))
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a if "lora_up" in k)
    with safe_open(str(ema), "pt") as f:
        assert f.metadata()["ss_ema_decay"] == "0.9"
    summary = json.loads((tr.run_dir / "run_summary.json").read_text())
    assert summary["epochs"][1]["ema_file"] == "toy-02-ema.safetensors"
    assert tr.state.ema.updates == tr.state.global_step  # one update per optimizer step (the arithmetic: next test)


def test_ema_average_arithmetic():
    from lorafw.optim.ema import EMA

    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA([p], decay=0.5, device="cpu")
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            p.fill_(value)
        ema.update()
    # decay warm-up: min(0.5, (1+n)/(10+n)) = 0.1, 0.1818…, 0.25 for n = 0, 1, 2
    expected = 0.0
    for n, value in enumerate((1.0, 2.0, 3.0)):
        d = min(0.5, (1 + n) / (10 + n))
        expected = d * expected + (1 - d) * value
    assert torch.allclose(ema.shadows[0], torch.full((3,), expected))


def test_tensorboard_and_metrics(compose_tiny, six_images):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tr = trainer_for(compose_tiny("sd15_prodigy", "validation.split=0.34", "train.epochs=2", data=six_images))
    tr.run()
    acc = EventAccumulator(str(tr.run_dir / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/step", "loss/smoothed", "lr/unet", "lr/text_encoder", "prodigy/d", "loss/epoch", "loss/validation"} <= tags
    assert len(acc.Scalars("loss/step")) == tr.state.global_step and len(acc.Scalars("loss/validation")) == 2
    header = (tr.run_dir / "metrics.csv").read_text().splitlines()[0]
    assert header == "kind,step,epoch,loss,loss_smoothed,lr_unet,lr_text_encoder,prodigy_d,val_loss"


def test_compare_a_four_run_sweep(tmp_path, tiny_model, six_images):
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lorafw", "-m", "+recipe=sd15_character", *tiny_overrides(tiny_model, six_images, sweep),
           "validation.split=0.34", "optimizer.lr=1e-4,1e-2", "network.dim=4,8"]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    p = subprocess.run([sys.executable, "-m", "lorafw", "compare", str(sweep)], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    md = (sweep / "compare.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith("| run")]
    assert len(rows) == 4
    for lr in ("0.0001", "0.01"):
        for dim in (4, 8):
            assert any(f"network.dim={dim}" in r and f"optimizer.lr={lr}" in r for r in rows), md
    from lorafw.outputs.compare import collect

    runs, differing = collect(sweep)
    assert set(differing) >= {"network.dim", "optimizer.lr", "optimizer.unet_lr"}
    win = min(runs, key=lambda r: r.best_val_loss)
    assert f"Winner: **{win.run}** (lowest validation loss)" in md
    assert (sweep / "compare.png").stat().st_size > 10_000 and (sweep / "compare.csv").read_text().count("\n") == 5
