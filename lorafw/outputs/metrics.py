"""Training metrics: metrics.jsonl and metrics.csv in the run folder, and TensorBoard scalars.

Per step: loss, smoothed loss, each parameter group's lr, Prodigy's adapted step size d when used.
Per epoch: mean training loss and validation loss. After `lorafw grid`: the grid images and each cell's
scores (log_grid). On resume, lines from after the saved state are
dropped and TensorBoard events from those steps purged, so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any, Sequence

from lorafw.config.spec import LogSpec
from lorafw.outputs.atomic import atomic_write

JSONL, CSV = "metrics.jsonl", "metrics.csv"
COLUMNS = ["kind", "step", "epoch", "loss", "loss_smoothed", "lr_unet", "lr_text_encoder", "prodigy_d", "val_loss"]


class Metrics:
    def __init__(self, run_dir: Path, spec: LogSpec, resume_step: int = 0) -> None:
        self.run_dir, self.spec = run_dir, spec
        self._avg, self._weight = 0.0, 0.0  # bias-corrected moving average: smoothed = avg / weight
        rows = self._read(resume_step)
        self._rewrite(rows)
        self.writer = None
        if spec.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=resume_step or None)

    def _read(self, keep_until: int) -> list[dict[str, Any]]:
        p = self.run_dir / JSONL
        if not keep_until or not p.is_file():
            return []
        rows = []
        for line in p.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                break  # a line cut off by a crash: everything before it is good
            if row.get("step", 0) <= keep_until:
                rows.append(row)
        steps = [r for r in rows if r["kind"] == "step" and r.get("loss_smoothed") is not None]
        if steps:  # carry the smoothed loss on as if the run had not stopped
            self._weight = 1 - self.spec.smoothing ** steps[-1]["step"]
            self._avg = steps[-1]["loss_smoothed"] * self._weight
        return rows

    @property
    def smoothed(self) -> float | None:
        return self._avg / self._weight if self._weight else None

    def _rewrite(self, rows: list[dict[str, Any]]) -> None:
        atomic_write(self.run_dir / JSONL, "".join(json.dumps(r) + "\n" for r in rows))
        buf = io.StringIO()
        w = csv.DictWriter(buf, COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        atomic_write(self.run_dir / CSV, buf.getvalue())

    def _append(self, row: dict[str, Any]) -> None:
        with (self.run_dir / JSONL).open("a") as f:
            f.write(json.dumps(row) + "\n")
        with (self.run_dir / CSV).open("a", newline="") as f:
            csv.DictWriter(f, COLUMNS, extrasaction="ignore").writerow(row)

    def step(self, step: int, epoch: int, loss: float, lrs: dict[str, float], prodigy_d: float | None = None,
             extra: dict[str, float] | None = None) -> None:
        """One optimizer step's figures; `extra` are more scalars under their own names (e.g. kohya's
        max_norm/keys_scaled), in metrics.jsonl and TensorBoard."""
        s = self.spec.smoothing
        if loss == loss:  # not NaN (a skipped step)
            self._avg = s * self._avg + (1 - s) * loss
            self._weight = s * self._weight + (1 - s)
        if step % self.spec.every_n_steps:
            return
        row = {"kind": "step", "step": step, "epoch": epoch, "loss": loss, "loss_smoothed": self.smoothed,
               "lr_unet": lrs.get("unet"), "lr_text_encoder": lrs.get("text_encoder"), "prodigy_d": prodigy_d, **(extra or {})}
        self._append(row)
        if self.writer is not None:
            self.writer.add_scalar("loss/step", loss, step)
            if self.smoothed is not None:
                self.writer.add_scalar("loss/smoothed", self.smoothed, step)
            for name, lr in lrs.items():
                self.writer.add_scalar(f"lr/{name}", lr, step)
            if prodigy_d is not None:
                self.writer.add_scalar("prodigy/d", prodigy_d, step)
            for name, value in (extra or {}).items():
                self.writer.add_scalar(name, value, step)

    def epoch(self, step: int, epoch: int, loss: float, val_loss: float | None) -> None:
        self._append({"kind": "epoch", "step": step, "epoch": epoch, "loss": loss, "val_loss": val_loss})
        if self.writer is not None:
            self.writer.add_scalar("loss/epoch", loss, epoch)
            if val_loss is not None:
                self.writer.add_scalar("loss/validation", val_loss, epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def log_grid(run_dir: Path, grids: Sequence[Path], cells: Sequence[Any]) -> None:
    """TensorBoard: each grid image, and per weight the cells' scores by epoch (grid/fidelity/w1 …)."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
    try:
        step = max((c.epoch for c in cells), default=0)
        for g in grids:
            with Image.open(g) as im:
                writer.add_image(f"grid/{Path(g).stem}", np.asarray(im.convert("RGB")), step, dataformats="HWC")
        for c in sorted(cells, key=lambda c: c.epoch):  # steps in order, as TensorBoard draws them
            tag = f"w{c.weight:g}" + ("_ema" if c.label.endswith("-ema") else "")
            for name in ("fidelity", "adherence", "score", "similarity"):
                v = getattr(c, name)
                if v is not None:
                    writer.add_scalar(f"grid/{name}/{tag}", float(v), c.epoch)
        writer.flush()
    finally:
        writer.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    p = Path(run_dir) / JSONL
    if not p.is_file():
        return []
    out = []
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            break
    return out
