"""Data-parallel training: the sharding rule (pure), and real two-process runs on the CPU (gloo) through
accelerate's launcher, started by lorafw (train.num_processes=2) and by `accelerate launch -m lorafw`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import tiny_overrides
from lorafw.launch import free_port
from lorafw.trainers.distributed import shard, spans

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 8])
def test_every_batch_of_a_span_goes_to_exactly_one_process(size):
    for n in range(0, 30):
        parts = [shard(n, r, size) for r in range(size)]
        assert sorted(i for p in parts for i in p) == list(range(n))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1
        assert all(p == sorted(p) for p in parts)


def test_spans_cut_an_epoch_into_optimizer_steps():
    batches = [[i] for i in range(7)]
    assert spans(batches, 2) == [[[0], [1]], [[2], [3]], [[4], [5]], [[6]]]
    assert spans(batches, 4) == [[[0], [1], [2], [3]], [[4], [5], [6]]]
    assert spans([], 3) == []
    assert [len(s) for s in spans(batches, 1)] == [1] * 7


def run(*args: str, cwd: Path, trace: Path | None = None, launcher: list[str] | None = None, check: bool = True,
        timeout: int = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LORAFW_FAULT", "LORAFW_TRACE", "WORLD_SIZE", "RANK")}
    env |= {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    if trace:
        env["LORAFW_TRACE"] = str(trace)
    cmd = (launcher or [sys.executable, "-m", "lorafw"]) + list(args)
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p


def batches_of(trace: Path) -> list[dict]:
    return [json.loads(line) for line in trace.read_text().splitlines() if '"batch"' in line]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_model, tiny_dataset):
    """The same recipe as 2 processes × accumulation 1 and as 1 process × accumulation 2 (the same global batch)."""
    tmp = tmp_path_factory.mktemp("dp")
    common = ["+recipe=sd15_character", "train.epochs=2", "train.device=cpu", "optimizer=adamw", "output.save_precision=fp32"]
    dp = run(*common, *tiny_overrides(tiny_model, tiny_dataset, tmp / "dp"), "train.epochs=2", "train.num_processes=2",
             cwd=tmp, trace=tmp / "dp.jsonl")
    one = run(*common, *tiny_overrides(tiny_model, tiny_dataset, tmp / "one"), "train.epochs=2",
              "train.gradient_accumulation_steps=2", cwd=tmp, trace=tmp / "one.jsonl")
    return tmp, dp, one


def test_two_processes_see_every_item_of_an_epoch_once(two_runs):
    tmp, dp, one = two_runs
    got, want = batches_of(tmp / "dp.jsonl"), batches_of(tmp / "one.jsonl")
    assert {b["rank"] for b in got} == {0, 1} and {b["rank"] for b in want} == {0}
    assert len({b["pid"] for b in got}) == 2  # two real processes
    for epoch in (1, 2):
        items = Counter(i for b in got if b["epoch"] == epoch for i in b["items"])
        assert items == Counter({0: 2, 1: 2, 2: 2, 3: 2})  # 4 images × 2 repeats: each item once
    # the same batches, with the same random draws (micro-step), at the same optimizer steps as one process
    key = lambda b: (b["epoch"], b["step"], b["micro"], tuple(b["items"]))  # noqa: E731
    assert sorted(map(key, got)) == sorted(map(key, want))
    micros = [b["micro"] for b in got]
    assert len(micros) == len(set(micros))  # no batch trained twice


def test_two_processes_step_math_metadata_and_files(two_runs):
    tmp, dp, one = two_runs
    d = tmp / "dp"
    rec = json.loads((d / "run.json").read_text())
    assert rec["status"] == "finished"
    # 8 items, batch 2 → 4 batches per epoch; 2 processes × accumulation 1 → 2 steps per epoch
    assert rec["plan"]["processes"] == 2 and rec["plan"]["global_batch"] == 4
    assert rec["steps"] == rec["plan"]["total_steps"] == 2 * math.ceil(4 / 2)
    assert rec["steps"] == json.loads((tmp / "one" / "run.json").read_text())["steps"]
    with safe_open(str(d / "toy-02.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["ss_total_batch_size"] == "4" and meta["ss_batch_size_per_device"] == "2"
    assert meta["ss_steps"] == "4"
    # only the main process wrote and logged: one line per saved file, one metrics row per step
    assert (dp.stdout + dp.stderr).count("] saved /") == 2 and (dp.stdout + dp.stderr).count("training state saved") == 2
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "step"] == [1, 2, 3, 4]
    assert "lorafw: 2 LoRA file(s)" in dp.stdout
    # the same training as one process with twice the accumulation (up to float summation order)
    a, b = load_file(d / "toy-02.safetensors"), load_file(tmp / "one" / "toy-02.safetensors")
    assert a.keys() == b.keys()
    la = json.loads((d / "run.json").read_text())["epoch_losses"]
    lb = json.loads((tmp / "one" / "run.json").read_text())["epoch_losses"]
    assert la == pytest.approx(lb, rel=1e-3)


def test_the_lora_of_a_two_process_run_loads_in_diffusers(two_runs):
    from peft.tuners.lora import LoraLayer

    from lorafw.models.tiny import build_sd15
    from test_train import pipeline_from

    tmp, _, _ = two_runs
    pipe = pipeline_from(build_sd15(0))
    pipe.load_lora_weights(str(tmp / "dp" / "toy-02.safetensors"), adapter_name="dp")
    with safe_open(str(tmp / "dp" / "toy-02.safetensors"), "pt") as f:
        modules = {k.split(".")[0] for k in f.keys()}
    n = sum(isinstance(m, LoraLayer) for m in [*pipe.unet.modules(), *pipe.text_encoder.modules()])
    assert n == len(modules) > 0


def test_resume_with_the_same_process_count_is_exact(two_runs, tiny_model, tiny_dataset):
    """Killed after step 3 (state saved at step 2), resumed with 2 processes: the same final tensors."""
    tmp, _, _ = two_runs
    out = tmp / "killed"
    args = ["+recipe=sd15_character", "train.device=cpu", "optimizer=adamw", "output.save_precision=fp32",
            *tiny_overrides(tiny_model, tiny_dataset, out), "train.epochs=2", "train.num_processes=2"]
    env_fault = dict(os.environ, LORAFW_FAULT="kill_at_step:3")
    p = subprocess.run([sys.executable, "-m", "lorafw", *args], cwd=tmp, capture_output=True, text=True, timeout=600,
                       env={k: v for k, v in env_fault.items() if k != "LORAFW_TRACE"} | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert p.returncode != 0 and "the 2 training processes failed" in p.stderr, p.stdout + p.stderr
    assert (out / "toy-01.safetensors").is_file() and not (out / "toy-02.safetensors").exists()
    wrong = run("resume", str(out), "--force", "train.num_processes=1", cwd=tmp, check=False)
    assert wrong.returncode == 2 and "saved by 2 process(es)" in wrong.stderr and "train.num_processes=2" in wrong.stderr
    run("resume", str(out), cwd=tmp)
    a, b = load_file(out / "toy-02.safetensors"), load_file(tmp / "dp" / "toy-02.safetensors")
    assert all((a[k] == b[k]).all() for k in a)  # bit-identical to the uninterrupted two-process run


def test_accelerate_launch_runs_lorafw_directly(tmp_path, tiny_model, tiny_dataset):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "lorafw"]
    os.environ["ACCELERATE_USE_CPU"] = "true"
    try:
        bad = run("+recipe=sd15_character", f"base_model.path={tiny_model}", f"dataset.root={tiny_dataset}",
                  cwd=tmp_path, launcher=launcher, check=False)
        assert bad.returncode != 0 and "every process must write to the same folder" in bad.stdout + bad.stderr
        out = tmp_path / "direct"
        run("+recipe=sd15_character", "train.device=cpu", *tiny_overrides(tiny_model, tiny_dataset, out),
            cwd=tmp_path, launcher=launcher, trace=tmp_path / "t.jsonl")
    finally:
        del os.environ["ACCELERATE_USE_CPU"]
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert json.loads((out / "run.json").read_text())["plan"]["processes"] == 2
    assert {b["rank"] for b in batches_of(tmp_path / "t.jsonl")} == {0, 1}
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["toy-01.safetensors"]


def test_ctrl_c_stops_every_process_after_the_same_step(tmp_path, tiny_model, tiny_dataset):
    import signal
    import time

    out, trace = tmp_path / "run", tmp_path / "t.jsonl"
    env = {k: v for k, v in os.environ.items() if k not in ("LORAFW_FAULT", "WORLD_SIZE", "RANK")}
    env |= {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "LORAFW_TRACE": str(trace)}
    args = ["+recipe=sd15_character", "train.device=cpu", *tiny_overrides(tiny_model, tiny_dataset, out), "train.epochs=200",
            "train.num_processes=2"]
    p = subprocess.Popen([sys.executable, "-m", "lorafw", *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and (not trace.exists() or len(trace.read_text().splitlines()) < 12):
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)  # what a terminal's Ctrl-C sends to lorafw
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 130, stdout + stderr
    assert "stopped at step" in stderr and f"lorafw resume {out}" in stderr
    rec = json.loads((out / "run.json").read_text())
    assert rec["status"] == "interrupted" and rec["state"]["processes"] == 2
    step = rec["state"]["step"]
    assert (out / f"toy-step{step:06d}.safetensors").is_file() and (out / "state.pt").is_file()
    got = batches_of(trace)
    last = {r: max(b["step"] for b in got if b["rank"] == r) for r in (0, 1)}
    assert last == {0: step, 1: step}  # both processes stopped after the same step
    assert "Traceback" not in stdout + stderr
