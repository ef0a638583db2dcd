"""A run folder: the names of the files every run writes there, and the checks made before writing into one
(writable, enough free disk space, not another run's results). No other lorafw imports but errors, so any
module may use it (config reads a run folder's files, the trainers write them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lorafw.errors import OutputError

CONFIG = "config.yaml"  # the resolved spec (`lorafw rerun RUN_DIR` runs it again)
RECORD = "run.json"  # versions, device, the dataset's fingerprint, times, final figures, status
STATE = "state.pt"  # what `lorafw resume` continues from


def check_disk(folder: Path, need: int, what: str) -> None:
    """Fail before training when the disk holding `folder` has less free space than `need` bytes."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need:
        raise OutputError(
            f"not enough disk space for {what}: about {need / 1e6:,.0f} MB needed, {free / 1e6:,.0f} MB free on "
            f"the disk holding {folder}; free some space or choose another folder"
        )


def ensure_writable(folder: Path, what: str) -> None:
    """Create `folder` and prove a file can be written there, or fail naming the setting to change."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lorafw-write-test-{id(folder)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write to {what} {folder}: {e.strerror}; choose a writable folder") from None


def never_saved(run_dir: Path) -> bool:
    """A run that stopped (a crash, a SIGKILL) after writing its config but before any training state or LoRA file:
    `lorafw resume` trains it again from step 0 — nothing is lost, and the same config gives the same files."""
    return (run_dir / CONFIG).is_file() and not (run_dir / STATE).exists() and not any(run_dir.glob("*.safetensors"))


def _holds_results(run_dir: Path) -> bool:
    """A run folder is worth protecting unless its run failed before writing any LoRA or state."""
    try:
        status = json.loads((run_dir / RECORD).read_text()).get("status", "")
    except (OSError, ValueError):
        return True
    produced = any(run_dir.glob("*.safetensors")) or (run_dir / STATE).exists()
    return produced or not str(status).startswith("failed")


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run folder; refuse one that already holds a run (unless output.overwrite=true or resuming).
    Temporaries left by a process that was killed mid-write are removed."""
    if (run_dir / RECORD).exists() and not overwrite and _holds_results(run_dir):
        raise OutputError(
            f"{run_dir} already holds a run ({RECORD}); choose another output.dir, or set output.overwrite=true "
            "to write over it"
        )
    ensure_writable(run_dir, "the output folder (output.dir)")
    for tmp in run_dir.glob(".*.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            tmp.unlink(missing_ok=True)
