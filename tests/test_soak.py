"""A soak test for trust: a run SIGKILLed at random moments, resumed each time, ends with the files of a run never
stopped, and whatever a kill leaves on disk is whole.

The moments come from a seeded RNG (LORAFW_SOAK_SEED, default 0), LORAFW_SOAK_KILLS of them (default 3), and
are placed after the run's own progress lines: while the models load, between steps, during a state write (state.pt
is saved after every step here) and during an epoch's LoRA and state writes. On failure the seed and every kill
(where, what the process had printed, what was on disk) are in the message.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_faults import args_for, default_sigint, env

from lorafw.errors import ConfigError

KILLS = int(os.environ.get("LORAFW_SOAK_KILLS", "3"))
SEED = int(os.environ.get("LORAFW_SOAK_SEED", "0"))
EPOCHS, STEPS_PER_EPOCH = 3, 4  # the tiny dataset: 4 images x 2 repeats, batch 2
WAIT = 900  # seconds a process may take to reach the line a kill waits for (a heavily loaded CI machine)


def soak_args(model: Path, data: Path, run: Path) -> list[str]:
    return args_for(model, data, run, f"train.epochs={EPOCHS}", "output.save_state_every_n_steps=1")


class Process:
    """`python -m lorafw ARGS` with its output lines collected as they come (a kill waits for one of them) and kept
    in `log`. stderr too: the training command logs to stdout, `lorafw resume` to stderr."""

    def __init__(self, args: list[str], cwd: Path, log: Path) -> None:
        self.lines: list[str] = []
        self.seen = threading.Condition()
        self.log = log.open("w")
        self.p = subprocess.Popen([sys.executable, "-m", "lorafw", *args], cwd=cwd, env=env(), text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, preexec_fn=default_sigint)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.log.write(line)
            with self.seen:
                self.lines.append(line.rstrip())
                self.seen.notify_all()
        with self.seen:
            self.seen.notify_all()

    def wait_for(self, text: str) -> bool:
        """Block until a line holding `text` is printed (True) or the process ends without it (False)."""
        deadline = time.monotonic() + WAIT
        with self.seen:
            while not any(text in ln for ln in self.lines):
                if self.p.poll() is not None and not self.reader.is_alive():
                    return False
                if time.monotonic() > deadline:
                    raise AssertionError(f"no line {text!r} after {WAIT} s")
                self.seen.wait(0.05)
        return True

    def kill(self) -> int:
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGKILL)
        return self.finish()

    def finish(self) -> int:
        rc = self.p.wait(timeout=WAIT)
        self.reader.join(timeout=10)
        self.log.close()
        return rc


def moment(rng: random.Random, done: int) -> tuple[str, float]:
    """Where the next kill lands: after which output line (none: after the start), and how long after it."""
    total = EPOCHS * STEPS_PER_EPOCH
    kind = rng.choice(["start", "step", "step", "epoch"])
    if kind == "start" or done >= total - 1:
        return "", rng.uniform(0.0, 4.0)  # while Python starts, the models load, latents are cached
    if kind == "epoch":  # the LoRA file and the state are being written
        epoch = rng.randint(done // STEPS_PER_EPOCH + 1, EPOCHS)
        return f"epoch {epoch}/{EPOCHS}: mean loss", rng.uniform(0.0, 0.3)
    step = rng.randint(done + 1, total - 1)  # between steps, or during the state write after one
    return f"training state saved at step {step}", rng.uniform(0.0, 0.5)


def on_disk(run: Path) -> str:
    """What a kill left: every file the run writes must be whole; returns a short description."""
    for f in run.glob("*.safetensors"):
        assert load_file(str(f)), f"{f.name} is empty"
    if (run / "state.pt").exists():
        torch.load(run / "state.pt", weights_only=True)
    for name in ("run.json", "run_summary.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    state = json.loads((run / "run.json").read_text()).get("state", {}) if (run / "run.json").exists() else {}
    files = sorted(f.name for f in run.glob("*.safetensors"))
    return f"state at step {state.get('step', '-')}, files {files}"


def saved_step(run: Path) -> int:
    if not (run / "state.pt").exists():
        return 0
    return int(torch.load(run / "state.pt", weights_only=True)["global_step"])


def step_losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "step"]


def kill_and_resume(run: Path, fresh_args: list[str], logs: Path, started: list[Process]) -> list[str]:
    """Start the run, SIGKILL it at KILLS random moments, resuming it each time, then let it finish; returns what
    happened, attempt by attempt (the failure messages carry it)."""
    rng = random.Random(SEED)
    history = [f"LORAFW_SOAK_SEED={SEED} LORAFW_SOAK_KILLS={KILLS}"]
    print(history[0])
    kills = attempt = 0

    def explain() -> str:
        return "\n  ".join(history)

    while True:
        attempt += 1
        fresh = not (run / "config.yaml").exists()  # killed before it wrote its config: its own command again
        args = fresh_args if fresh else ["resume", str(run)]
        log = logs / f"attempt-{attempt}.log"
        started.append(proc := Process(args, logs, log))
        if kills == KILLS:
            rc = proc.finish()
            history.append(f"{attempt}: {'run' if fresh else 'resume'} to the end → rc {rc}")
            assert rc == 0, f"{explain()}\n{log.read_text()[-3000:]}"
            return history
        after, delay = moment(rng, saved_step(run))
        reached = proc.wait_for(after) if after else True
        time.sleep(delay)
        rc = proc.kill()
        what = f"{'run' if fresh else 'resume'} killed {delay:.2f} s after {after or 'the start'!r}"
        history.append(f"{attempt}: {what} → rc {rc}, last line {proc.lines[-1] if proc.lines else '-'!r}")
        print(history[-1])
        if rc == 0:
            assert reached, f"the run finished without printing {after!r}:\n  {explain()}"
            return history  # it finished before the kill landed
        assert rc == -signal.SIGKILL, f"exit code {rc}:\n  {explain()}\n{log.read_text()[-3000:]}"
        kills += 1
        try:
            history[-1] += f"; on disk: {on_disk(run)}"
        except Exception as e:  # noqa: BLE001 - reported with the kills that led to it
            raise AssertionError(f"a kill left a damaged file ({e}):\n  {explain()}") from e


@pytest.mark.slow
def test_random_sigkills_then_resume_end_with_the_uninterrupted_files(tiny_model, tiny_dataset, tmp_path):
    ref, run = tmp_path / "reference", tmp_path / "run"
    # the reference trains alongside the killed run (on another core, where there is one)
    started = [reference := Process(soak_args(tiny_model, tiny_dataset, ref), tmp_path, tmp_path / "reference.log")]
    try:
        history = "\n  ".join(kill_and_resume(run, soak_args(tiny_model, tiny_dataset, run), tmp_path, started))
        assert reference.finish() == 0, (tmp_path / "reference.log").read_text()[-3000:]
    finally:
        for proc in started:  # none left running when the test fails
            if proc.p.poll() is None:
                proc.p.kill()
    names = sorted(f.name for f in ref.glob("*.safetensors"))
    assert names == sorted(f.name for f in run.glob("*.safetensors")), history
    for name in names:
        a, b = load_file(str(ref / name)), load_file(str(run / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs:\n  {history}"
    assert step_losses(run) == step_losses(ref), f"metrics.jsonl does not read as one run:\n  {history}"
    rec, ref_rec = json.loads((run / "run.json").read_text()), json.loads((ref / "run.json").read_text())
    assert rec["status"] == "finished" and rec["epoch_losses"] == ref_rec["epoch_losses"], history
    assert not list(run.glob(".*.tmp-*")), f"a temporary file was left behind:\n  {history}"


def test_a_run_killed_before_its_first_state_is_resumed_from_step_0(compose_tiny, tmp_path, caplog, capsys):
    """What `lorafw resume` does with a folder a kill left before any state.pt: train it again from the start
    (nothing is lost: the same config gives the same files); with LoRA files but no state it refuses, saying how."""
    from lorafw.cli import main
    from lorafw.outputs.record import write_config, write_record
    from lorafw.run import resume_spec

    run = tmp_path / "killed"
    (run / ".hydra").mkdir(parents=True)  # killed before lorafw wrote anything: the CLI's folder only
    assert main(["resume", str(run)]) == 2
    assert "the run stopped before it wrote its config (config.yaml), so nothing was trained; start it again with " \
           "its own command" in capsys.readouterr().err
    spec = compose_tiny("sd15_character", f"output.dir={run}")
    write_config(run, spec)
    write_record(run, {"status": "running"})  # what a SIGKILL leaves: the run never finished
    again = resume_spec(dataclasses.replace(spec, resume=str(run)), force=False)
    assert again.resume is None and again.output.overwrite and again.output.dir == str(run)
    assert "stopped before it saved any training state; training it again from step 0" in caplog.text
    (run / "toy-01.safetensors").write_bytes(b"")  # an epoch's file, but no state to continue from
    hint = f"to train it again from the start (its LoRA files are replaced): `lorafw rerun {run} output.dir={run} "
    with pytest.raises(ConfigError, match=r"holds no saved training state \(state.pt\).*" + re.escape(hint)):
        resume_spec(dataclasses.replace(spec, resume=str(run)), force=False)
