"""Fault injection on the tiny model, through the real CLI: kills, signals, NaNs, bad files, no disk.

The goal is that nothing finished is lost and a resumed run writes exactly the tensors an
uninterrupted one writes. Faults are injected with LORAFW_FAULT (lorafw/faults.py).
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_folder, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
EPOCH_FILES = ["toy-01.safetensors", "toy-02.safetensors", "toy-03.safetensors"]


def env(**extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k != "LORAFW_FAULT"}
    return e | {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)} | extra


def default_sigint() -> None:  # background shells start children with SIGINT ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def lorafw(*args: str, cwd: Path, fault: str | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lorafw", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env(**({"LORAFW_FAULT": fault} if fault else {})), preexec_fn=default_sigint)


def resume(run: Path, *extra: str, capsys=None) -> tuple[int, str]:
    """`lorafw resume` in this process (resuming needs no fresh process; kills and signals do)."""
    from lorafw.cli import main

    rc = main(["resume", str(run), *extra])
    return rc, (capsys.readouterr().err if capsys else "")


def args_for(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["+recipe=sd15_character", *tiny_overrides(model, data, out), "train.epochs=3",
            "output.save_state_every_n_steps=2", *extra]


def tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_files(a: Path, b: Path, names=EPOCH_FILES) -> None:
    for n in names:
        x, y = tensors(a / n), tensors(b / n)
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x), f"{n} differs"


def assert_all_loadable(run: Path) -> None:
    for f in run.glob("*.safetensors"):
        assert tensors(f)
    if (run / "state.pt").exists():
        torch.load(run / "state.pt", weights_only=True)
    assert not list(run.glob(".*.tmp-*")), "a temporary file was left behind"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model, tiny_dataset) -> Path:
    """The uninterrupted run every faulty run must end up identical to."""
    out = tmp_path_factory.mktemp("ref") / "run"
    p = lorafw(*args_for(tiny_model, tiny_dataset, out), cwd=out.parent)
    assert p.returncode == 0, p.stderr
    return out


def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference, tiny_model, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    p = lorafw(*args_for(tiny_model, tiny_dataset, run), cwd=tmp_path, fault="kill_at_step:5")
    assert p.returncode == -signal.SIGKILL
    assert sorted(f.name for f in run.glob("*.safetensors")) == ["toy-01.safetensors"]  # epoch 1 finished and kept
    assert_all_loadable(run)
    assert resume(run)[0] == 0
    assert_same_files(reference, run)
    rec = json.loads((run / "run.json").read_text())
    assert rec["status"] == "finished" and rec["resumes"][0]["at_step"] == 4  # the state saved at step 4


def test_sigkill_then_resume_with_random_crop_is_bit_identical(tiny_model, tmp_path):
    """Random crops are drawn from the micro-step's seed, so a resumed run crops (and trains) what the
    uninterrupted one did."""
    data = tmp_path / "data"
    make_folder(data, "2_wide", [(128, 64), (96, 64), (64, 112)], ["toy, wide", "toy, narrow", "toy, tall"])
    crop = ("dataset.random_crop=true", "dataset.cache_latents=false", "dataset.flip_aug=true")
    p = lorafw(*args_for(tiny_model, data, tmp_path / "ref", *crop), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    run = tmp_path / "run"
    p = lorafw(*args_for(tiny_model, data, run, *crop), cwd=tmp_path, fault="kill_at_step:5")
    assert p.returncode == -signal.SIGKILL
    assert resume(run)[0] == 0
    assert_same_files(tmp_path / "ref", run)
    assert json.loads((run / "run.json").read_text())["resumes"][0]["at_step"] == 4


def test_sigkill_in_an_epoch_a_step_budget_cuts_short_then_resume_is_bit_identical(tiny_model, tiny_dataset,
                                                                                    tmp_path):
    """train.max_steps=7 with 4 steps per epoch: epoch 2 ends after 3 steps. Killed in step 7, resumed from the state
    of step 6: the same epoch and step files as a run never stopped, the step file retention replayed."""
    budget = ("train.epochs=null", "train.max_steps=7", "output.save_every_n_steps=3", "output.save_last_n_steps=2")
    ref = tmp_path / "ref"
    assert lorafw(*args_for(tiny_model, tiny_dataset, ref, *budget), cwd=tmp_path).returncode == 0
    files = ["toy-01.safetensors", "toy-02.safetensors", "toy-step00000006.safetensors"]  # step 3's removed at 6
    assert sorted(f.name for f in ref.glob("*.safetensors")) == files
    run = tmp_path / "run"
    p = lorafw(*args_for(tiny_model, tiny_dataset, run, *budget), cwd=tmp_path, fault="kill_at_step:7")
    assert p.returncode == -signal.SIGKILL
    assert sorted(f.name for f in run.glob("*.safetensors")) == files[:1] + files[2:]
    assert resume(run)[0] == 0
    assert_same_files(ref, run, files)
    assert sorted(f.name for f in run.glob("*.safetensors")) == files
    rec = json.loads((run / "run.json").read_text())
    assert (rec["status"], rec["steps"], rec["resumes"][0]["at_step"]) == ("finished", 7, 6)


def test_sigkill_while_saving_an_epoch_then_resume(reference, tiny_model, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    p = lorafw(*args_for(tiny_model, tiny_dataset, run), cwd=tmp_path, fault="kill_in_save:toy-02.safetensors")
    assert p.returncode == -signal.SIGKILL
    assert not (run / "toy-02.safetensors").exists()  # the half-written file never took the real name
    assert tensors(run / "toy-01.safetensors")  # earlier files intact and loadable
    assert list(run.glob(".toy-02.safetensors.tmp-*"))  # what SIGKILL leaves: a temporary, not a broken LoRA
    assert resume(run)[0] == 0
    assert_same_files(reference, run)
    assert_all_loadable(run)  # resuming clears stale temporaries


def test_sigkill_while_saving_state_keeps_the_previous_state(reference, tiny_model, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    p = lorafw(*args_for(tiny_model, tiny_dataset, run), cwd=tmp_path, fault="kill_in_save:state.pt#2")  # its 2nd write
    assert p.returncode == -signal.SIGKILL
    torch.load(run / "state.pt", weights_only=True)  # the state before the interrupted write is whole
    assert resume(run)[0] == 0
    assert_same_files(reference, run)


def test_ctrl_c_saves_state_and_a_lora_then_resume(reference, tiny_model, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "lorafw", *args_for(tiny_model, tiny_dataset, run, "train.epochs=3")],
                         cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=default_sigint)
    try:
        for line in p.stdout:
            if "training state saved at step 6" in line:
                break
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130, err
    assert f"continue with: lorafw resume {run}" in err and "Traceback" not in err
    step_files = list(run.glob("toy-step*.safetensors"))
    assert len(step_files) == 1 and tensors(step_files[0])  # a usable LoRA of where it stopped
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert resume(run)[0] == 0
    assert_same_files(reference, run)


def test_sigterm_is_handled_like_ctrl_c(tiny_model, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "lorafw", *args_for(tiny_model, tiny_dataset, run, "train.epochs=50")],
                         cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            if "saved" in line and "toy-01" in line:
                break
        p.terminate()
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 143 and "SIGTERM" in err and "lorafw resume" in err
    assert_all_loadable(run)


def test_a_second_ctrl_c_stops_at_once_without_damage(tiny_model, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "lorafw", *args_for(tiny_model, tiny_dataset, run, "train.epochs=50")],
                         cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         preexec_fn=default_sigint)
    try:
        for line in p.stdout:
            if "saved" in line and "toy-02" in line:
                break
        p.send_signal(signal.SIGINT)
        time.sleep(0.05)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 130 and "Traceback" not in err
    assert tensors(run / "toy-01.safetensors") and tensors(run / "toy-02.safetensors")
    assert_all_loadable(run)


def test_nan_loss_stops_naming_the_step_and_keeps_everything(reference, tiny_model, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    p = lorafw(*args_for(tiny_model, tiny_dataset, run), cwd=tmp_path, fault="nan_at_step:6")
    assert p.returncode == 2
    assert "step 6 (epoch 2): the loss is nan" in p.stderr and "train.no_half_vae=true" in p.stderr
    assert "lorafw resume" in p.stderr and "Traceback" not in p.stderr
    assert tensors(run / "toy-01.safetensors")
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["global_step"] == 5  # the weights of the last good step
    assert resume(run)[0] == 0  # (the injected fault is gone)
    assert_same_files(reference, run)


def test_nan_steps_can_be_skipped_and_counted(tiny_model, tiny_dataset, tmp_path):
    run = tmp_path / "run"
    p = lorafw(*args_for(tiny_model, tiny_dataset, run, "train.on_nonfinite=skip"), cwd=tmp_path, fault="nan_at_step:6")
    assert p.returncode == 0, p.stderr
    rec = json.loads((run / "run.json").read_text())
    assert rec["skipped_steps"] == 1 and rec["steps"] == 12
    assert all(torch.isfinite(v).all() for v in tensors(run / "toy-03.safetensors").values())


def test_resume_with_a_changed_config_is_refused_unless_forced(reference, tiny_model, tiny_dataset, tmp_path, capsys):
    import shutil

    from lorafw.cli import main

    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "state.pt").unlink()
    rc, err = resume(run, capsys=capsys)
    assert rc == 2 and "holds no saved training state (state.pt)" in err
    cut = tmp_path / "cut"
    lorafw(*args_for(tiny_model, tiny_dataset, cut), cwd=tmp_path, fault="kill_at_step:5")
    rc, err = resume(cut, "optimizer.lr=1e-3", "network.dropout=0.1", capsys=capsys)
    assert rc == 2
    assert "network.dropout: 0.0 in the run, 0.1 now" in err and "optimizer.lr: 0.0005 in the run, 0.001 now" in err
    assert "--force" in err
    assert resume(cut, "--force", "train.epochs=4")[0] == 0  # train longer than planned
    assert (cut / "toy-04.safetensors").is_file()
    capsys.readouterr()
    rc = main([*args_for(tiny_model, tiny_dataset, tmp_path / "other", "seed=7"), f"resume={cut}"])
    assert rc == 2 and "seed: 42 in the run, 7 now" in capsys.readouterr().err


def make_ckpt(tiny_parts, path: Path) -> Path:
    from lorafw.models.tiny import original_state_dict

    torch.save({"state_dict": {k: v.clone() for k, v in original_state_dict(tiny_parts).items()}, "global_step": 1}, path)
    return path


def test_pickle_checkpoints_are_refused_unless_allowed_then_read_weights_only(tiny_parts, tiny_dataset, tmp_path):
    from lorafw.config.compose import compose
    from lorafw.errors import ConfigError
    from lorafw.run import train

    ckpt = make_ckpt(tiny_parts, tmp_path / "model.ckpt")
    base = tiny_overrides(ckpt, tiny_dataset, tmp_path / "run")
    with pytest.raises(ConfigError, match="pickle checkpoint.*base_model.allow_pickle=true"):
        compose("sd15_character", base)
    result = train(compose("sd15_character", base + ["base_model.allow_pickle=true"]))
    assert result.lora_files and tensors(result.lora_files[0])


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {_Payload.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_malicious_pickle_is_refused_and_never_runs(tiny_dataset, tmp_path):
    from lorafw.config.compose import compose
    from lorafw.errors import ModelError
    from lorafw.run import train

    _Payload.marker = str(tmp_path / "pwned")
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": {"x": _Payload()}}))
    spec = compose("sd15_character", tiny_overrides(evil, tiny_dataset, tmp_path / "run") + ["base_model.allow_pickle=true"])
    with pytest.raises(ModelError, match="refused: it holds Python objects other than tensors"):
        train(spec)
    assert not Path(_Payload.marker).exists()


def test_not_enough_disk_space_is_found_before_training(compose_tiny, monkeypatch):
    import shutil
    from collections import namedtuple

    from lorafw.errors import OutputError
    from lorafw.run import train

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 5_000, 5_000))
    with pytest.raises(OutputError, match="not enough disk space for this run's LoRA files .*MB needed, 0 MB free"):
        train(compose_tiny("sd15_character"))
    # the same command again (the folder holds no results, so it is reused): now the latent cache does not fit
    with pytest.raises(OutputError, match="not enough disk space for the latent cache"):
        train(compose_tiny("sd15_character", "dataset.cache_latents_to_disk=true"))


def _setpriv() -> list[str] | None:
    import shutil

    if os.geteuid() != 0:
        return []
    exe = shutil.which("setpriv")
    if exe is None:
        return None
    return [exe, "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", "--"]


def test_a_read_only_output_folder(tiny_model, tiny_dataset, tmp_path):
    prefix = _setpriv()
    if prefix is None:
        pytest.skip("running as root without setpriv: permission bits cannot be enforced here")
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        p = subprocess.run([*prefix, sys.executable, "-m", "lorafw", *args_for(tiny_model, tiny_dataset, out / "run")],
                           cwd=tmp_path, capture_output=True, text=True, env=env(), timeout=300)
    finally:
        out.chmod(0o755)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "HYDRA_FULL_ERROR" not in p.stderr
    assert f"output.dir: cannot write to {out / 'run'} ({out} is not writable)" in p.stderr


def test_faults_attach_at_one_seam_and_only_when_asked(monkeypatch, tmp_path):
    """faults.install wraps the trainer's loss, step and save only when LORAFW_FAULT/LORAFW_TRACE is set."""
    from types import SimpleNamespace

    from lorafw import faults

    calls: list[str] = []
    tr = SimpleNamespace(session=SimpleNamespace(world=SimpleNamespace(rank=0), main=True),
                         state=SimpleNamespace(epoch=1, global_step=0),
                         _loss=lambda batch, micro: torch.tensor(1.0), _optimizer_step=lambda group: calls.append("step"),
                         save=lambda epoch: calls.append("save"))
    plain = (tr._loss, tr._optimizer_step, tr.save)
    monkeypatch.delenv("LORAFW_FAULT", raising=False)
    monkeypatch.delenv("LORAFW_TRACE", raising=False)
    faults.install(tr)
    assert (tr._loss, tr._optimizer_step, tr.save) == plain  # no fault code in a normal run's loop
    monkeypatch.setenv("LORAFW_FAULT", "nan_at_step:2")
    monkeypatch.setenv("LORAFW_TRACE", str(tmp_path / "trace.jsonl"))
    faults.install(tr)
    assert tr._loss([3, 4], 0).item() == 1.0
    tr.state.global_step = 1
    assert torch.isnan(tr._loss([5], 1))
    tr._optimizer_step([[5]])
    tr.save(1)
    assert calls == ["step", "save"]
    lines = [json.loads(ln) for ln in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert [(ln["step"], ln["micro"], ln["items"]) for ln in lines] == [(1, 0, [3, 4]), (2, 1, [5])]
