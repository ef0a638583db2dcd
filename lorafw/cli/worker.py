"""What each process started by `train.num_processes=N` runs: `python -m lorafw.cli.worker SPEC.json OUT_DIR`.

lorafw/launch.py starts N of these through accelerate's launcher and reads back rank-R.json: the main
process's RunResult, or the error that stopped a process.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from lorafw.config.validate import spec_from_dict
from lorafw.errors import LorafwError
from lorafw.launch import LOG_FILE_ENV, WORKER_ENV
from lorafw.trainers.distributed import World
from lorafw.trainers.trainer import prepare


def worker(spec_file: str, out_dir: str) -> int:
    """One data-parallel process: train the spec; write rank-R.json with the result or the error."""
    if os.environ.get(WORKER_ENV):
        os.dup2(sys.stdout.fileno(), sys.stderr.fileno())  # our messages to the terminal, the launcher's to its pipe
    world = World.from_env()
    _worker_logging(world.is_main)
    out = Path(out_dir) / f"rank-{world.rank}.json"
    try:
        spec, _ = spec_from_dict(json.loads(Path(spec_file).read_text()), check_paths=False)
        result = prepare(spec, Path(spec.output.dir)).run()  # type: ignore[arg-type]
    except LorafwError as e:
        out.write_text(json.dumps({"ok": False, "error": str(e), "exit_code": e.exit_code}))
        return e.exit_code
    except KeyboardInterrupt:
        out.write_text(json.dumps({"ok": False, "error": "interrupted", "exit_code": 130}))
        return 130
    except BaseException:
        if not world.is_main and (Path(out_dir) / "rank-0.json").exists():
            return 1  # the main process stopped and reported why; our broken collective says nothing more
        raise
    out.write_text(json.dumps({"ok": True, "result": {
        "run_dir": str(result.run_dir), "lora_files": [str(p) for p in result.lora_files],
        "loss_history": result.loss_history, "epoch_losses": result.epoch_losses, "steps": result.steps,
        "wall_time_s": result.wall_time_s, "notes": result.notes, "val_losses": {str(k): v for k, v in result.val_losses.items()},
    }}))
    return 0


def _worker_logging(main: bool) -> None:
    fmt = logging.Formatter("[%(asctime)s] %(message)s", datefmt="%H:%M:%S")
    lg = logging.getLogger("lorafw")
    lg.setLevel(logging.INFO if main else logging.ERROR)
    lg.propagate = False
    h = logging.StreamHandler(sys.stderr)
    h.setFormatter(fmt)
    lg.addHandler(h)
    if main and os.environ.get(LOG_FILE_ENV):
        fh = logging.FileHandler(os.environ[LOG_FILE_ENV], mode="a")
        fh.setFormatter(fmt)
        lg.addHandler(fh)


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    sys.exit(worker(*sys.argv[1:3]))
