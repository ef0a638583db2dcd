"""Every optimizer and scheduler trains a tiny run, and a run interrupted mid-epoch then resumed writes the
same tensors as an uninterrupted one, for each optimizer (their states differ: 8-bit, D-Adaptation's d,
Prodigy's, CAME's factored moments, schedule-free's two points). Also the trainer's use of the network
settings: LoRA+/block-lr groups, stop_text_encoder_training, schedule-free files at eval weights."""

from __future__ import annotations

import signal

import pytest
import torch
from safetensors.torch import load_file

from lorafw.config.spec import RunSpec
from lorafw.errors import Interrupted
from lorafw.config.catalog import OPTIMIZERS, SCHEDULERS
from lorafw.run import resolve_outputs
from lorafw.trainers.trainer import Trainer, prepare

pytestmark = pytest.mark.slow


def trainer_for(spec: RunSpec) -> Trainer:
    spec = resolve_outputs(spec)
    return prepare(spec, spec.output.dir)


def opt_overrides(name: str) -> list[str]:
    out = [f"optimizer={name}", "optimizer.unet_lr=${.lr}", "optimizer.text_encoder_lr=${.lr}",
           "output.save_precision=fp32", "train.mixed_precision=no", "output.save_state_every_n_steps=1"]
    if name == "came":
        out.append("optimizer.betas=[0.9,0.999,0.9999]")
    return out


def files(run) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p)) for p in sorted(run.glob("*.safetensors"))}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_each_optimizer_trains_and_resumes_bit_identical(compose_tiny, tmp_path, name):
    from test_faults import resume

    ref = trainer_for(compose_tiny("sd15_character", *opt_overrides(name), f"output.dir={tmp_path / 'ref'}"))
    ref.run()
    assert ref.plan.total_steps == 4 and ref.state.global_step == 4
    cut = trainer_for(compose_tiny("sd15_character", *opt_overrides(name), f"output.dir={tmp_path / 'cut'}"))
    step = cut._optimizer_step

    def stop_after_two(group):  # Ctrl-C during step 2 of the epoch: state and a LoRA saved, then stop
        step(group)
        if cut.state.global_step == 2:
            cut.session.stop.signum = signal.SIGINT

    cut._optimizer_step = stop_after_two
    with pytest.raises(Interrupted):
        cut.run()
    assert resume(tmp_path / "cut")[0] == 0
    a, b = files(tmp_path / "ref"), files(tmp_path / "cut")
    assert "toy-01.safetensors" in a and "toy-01.safetensors" in b
    x, y = a["toy-01.safetensors"], b["toy-01.safetensors"]
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), name
    if name != "schedulefree_radam":  # RAdam's rectification makes no update in its first steps (4 here)
        assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in x.items() if "lora_up" in k), "nothing trained"


@pytest.mark.parametrize("sched", sorted(set(SCHEDULERS) - {"adafactor"}))
def test_each_scheduler_trains_a_tiny_run(compose_tiny, tmp_path, sched):
    extra = {"piecewise_constant": ["scheduler.step_rules='1:2,0.5'"], "warmup_stable_decay": ["scheduler.decay_ratio=0.5"],
             "rex": ["scheduler.min_lr=1e-6", "scheduler.d=0.9", "scheduler.gamma=1.0", "scheduler.num_cycles=1"],
             "cosine_with_restarts": ["scheduler.num_cycles=2"]}.get(sched, [])
    tr = trainer_for(compose_tiny("sd15_character", f"scheduler.name={sched}", "scheduler.num_cycles=null",
                                  *extra, "train.mixed_precision=no"))
    tr.run()
    from lorafw.optim.schedulers import factor

    lr = tr.spec.optimizer.unet_lr
    want = lr * factor(tr.spec.scheduler, tr.plan.total_steps, tr.plan.total_steps, lr, tr.spec.optimizer.lr)
    assert tr.state.optimizer.param_groups[0]["lr"] == pytest.approx(want)  # the schedule reached its last step


def test_adafactor_relative_step_trains(compose_tiny, tmp_path):
    tr = trainer_for(compose_tiny("sd15_character", "optimizer=adafactor", "optimizer.args.relative_step=true",
                                  "optimizer.text_encoder_lr=${.lr}", "train.mixed_precision=no"))
    assert tr.spec.scheduler.name == "adafactor"
    tr.run()
    assert 0 < tr.state.optimizer.param_groups[0]["lr"] != tr.spec.optimizer.lr


def test_schedule_free_saves_its_eval_weights(compose_tiny, tmp_path):
    from lorafw.optim.optimizers import evaluation_weights

    tr = trainer_for(compose_tiny("sd15_character", *opt_overrides("schedulefree_adamw")))
    tr.run()
    saved = load_file(str(tr.state.lora_files[-1]))
    train_point = tr.state.network.kohya_state_dict(torch.float32)
    with evaluation_weights(tr.state.optimizer):
        eval_point = tr.state.network.kohya_state_dict(torch.float32)
    k = next(k for k in saved if k.endswith("lora_up.weight"))
    assert torch.equal(saved[k], eval_point[k]) and not torch.equal(saved[k], train_point[k])


def test_loraplus_block_lr_and_stopped_text_encoder(compose_tiny, tmp_path):
    tr = trainer_for(compose_tiny("sd15_character", "network.loraplus_unet_lr_ratio=8", "network.mid_lr_weight=2",
                                  "optimizer.stop_text_encoder_training=0.5", "train.mixed_precision=no",
                                  "optimizer.unet_lr=1e-3", "optimizer.text_encoder_lr=1e-3", "scheduler=constant"))
    tr.run()
    names = {g["name"]: g["lr"] for g in tr.state.optimizer.param_groups}
    assert names["unet_block12"] == pytest.approx(2e-3) and names["unet_block12_plus"] == pytest.approx(1.6e-2)
    assert names["text_encoder"] == pytest.approx(1e-3) and "text_encoder_plus" not in names
    assert tr.state.te_stop_step == 2 and not tr.state.train_te
    assert all(not p.requires_grad for p in tr.state.network.parameters("te"))
