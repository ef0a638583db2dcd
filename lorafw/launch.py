"""`train.num_processes=N`: run one spec as N data-parallel processes started by accelerate's launcher.

The lorafw process that was asked to train (the CLI, a sweep job, a notebook) starts
`accelerate launch --multi_gpu --num_processes N -m lorafw.cli.worker SPEC.json OUT_DIR`, waits, and
returns the main process's RunResult (each process runs lorafw/cli/worker.py). The spec travels already resolved (run folder, name, resume), so
every process trains into the same folder with no Hydra of its own.

What the user sees: the workers' messages (their stderr is folded into stdout, which they share with
us), and one clean error line from us on failure. The launcher's own failure report (torchrun's
ChildFailedError block) goes to a pipe we read, and is shown only when no worker could say what happened.
Ctrl-C / SIGTERM: forwarded once to the launcher, which passes it to every worker; they finish the step,
the main one saves the state and a LoRA, and we report it as one interrupted run (exit 130/143).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from lorafw.config.spec import RunSpec
from lorafw.errors import ConfigError, LorafwError
from lorafw.outputs.result import RunResult
from lorafw.placement import resolve_device

log = logging.getLogger("lorafw")
WORKER_ENV = "LORAFW_WORKER"  # set in the processes we start: fold stderr into stdout
LOG_FILE_ENV = "LORAFW_LOG_FILE"  # the parent's log file (Hydra's RUN_DIR/lorafw.log): the main worker appends to it
WORKER = "lorafw.cli.worker"  # the module each launched process runs (named, not imported: it sits above us)


def launch_command(n: int, cpu: bool, port: int, spec_file: Path, out_dir: Path) -> list[str]:
    """accelerate's launcher for N processes on this machine (NCCL on GPUs, gloo on CPUs)."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), "-m", WORKER, str(spec_file), str(out_dir)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(spec: RunSpec):
    """Train `spec` (output folder resolved) in `spec.train.num_processes` processes; the main one's RunResult."""
    import torch

    n = spec.train.num_processes
    device = resolve_device(spec.train.device)
    cpu = device.type != "cuda"
    if not cpu and torch.cuda.device_count() < n:
        raise ConfigError([f"train.num_processes: {n} processes need {n} GPUs; {torch.cuda.device_count()} visible "
                           f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})"])
    if cpu:
        log.info(f"no GPU in use: {n} data-parallel CPU processes (gloo)")
    with tempfile.TemporaryDirectory(prefix="lorafw-launch-") as tmp:
        spec_file, out_dir = Path(tmp) / "spec.json", Path(tmp) / "results"
        out_dir.mkdir()
        spec_file.write_text(json.dumps(spec.to_dict()))
        env = dict(os.environ, **{WORKER_ENV: "1", "PYTHONUNBUFFERED": "1"})
        env.pop("WORLD_SIZE", None)
        if cpu:
            env["ACCELERATE_USE_CPU"] = "true"
        logfile = _parent_log_file()
        if logfile:
            env[LOG_FILE_ENV] = logfile
        log.info(f"starting {n} processes with accelerate launch into {spec.output.dir}")
        code, launcher_err = _run(launch_command(n, cpu, free_port(), spec_file, out_dir), env)
        results = {int(p.stem.split("-")[1]): json.loads(p.read_text()) for p in out_dir.glob("rank-*.json")}
    main = results.get(0)
    if main and main.get("ok") and code == 0:
        r = main["result"]
        return RunResult(Path(r["run_dir"]), spec, [Path(p) for p in r["lora_files"]], r["loss_history"], r["epoch_losses"],
                         r["steps"], r["wall_time_s"], r["notes"], {int(k): v for k, v in r["val_losses"].items()})
    failed = [results[k] for k in sorted(results) if not results[k].get("ok")]
    if failed:
        err = LorafwError(failed[0]["error"])
        err.exit_code = int(failed[0]["exit_code"])
        raise err
    err = LorafwError(f"the {n} training processes failed (launcher exit code {code}) without a lorafw message; the "
                      f"launcher said:\n{launcher_report(launcher_err)}\nthe run folder {spec.output.dir} keeps every file "
                      "written so far" + (f"; continue with: lorafw resume {spec.output.dir}"
                                          if (Path(spec.output.dir) / "state.pt").is_file() else ""))
    err.exit_code = 1
    raise err


def launcher_report(text: str, lines: int = 25) -> str:
    """The useful part of torchrun's failure report: from its list of failures on, else the last lines."""
    body = text.strip().splitlines()
    start = next((i for i, line in enumerate(body) if line.strip() == "Failures:"), max(0, len(body) - lines))
    return "\n".join(line for line in body[start:] if not set(line.strip()) <= set("=-"))


def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Start the launcher in its own session (our Ctrl-C reaches it once, through us); collect its stderr."""
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    forwarded: list[int] = []

    def forward(signum: int, frame: Any) -> None:
        forwarded.append(signum)  # the main process says what happens next
        proc.send_signal(signum)

    old = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(sig) is not signal.SIG_IGN:
                old[sig] = signal.signal(sig, forward)
    try:
        code = proc.wait()
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        if proc.poll() is None:
            proc.kill()
    reader.join(timeout=5)
    return code, "".join(chunks)


def _parent_log_file() -> str | None:
    for h in logging.getLogger().handlers + logging.getLogger("lorafw").handlers:
        if isinstance(h, logging.FileHandler):
            return h.baseFilename
    return None
