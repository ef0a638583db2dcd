"""Helpers every trainer shares: device and precision, the noise-prediction loss, run folders."""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lorafw.config.spec import RunSpec, TrainSpec
from lorafw.errors import OutputError
from lorafw.outputs.record import RECORD

log = logging.getLogger("lorafw")


@dataclass
class RunResult:
    """What a finished run gives back to Python callers (and the CLI prints)."""

    run_dir: Path
    spec: RunSpec
    lora_files: list[Path]
    loss_history: list[float]  # one value per optimizer step
    epoch_losses: list[float]  # mean training loss of each epoch
    steps: int
    wall_time_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def final_loss(self) -> float:
        return self.epoch_losses[-1] if self.epoch_losses else float("nan")


@contextlib.contextmanager
def quiet(logger: str, level: int = logging.ERROR):
    """Raise one library logger's threshold for a moment (for warnings that do not apply to us)."""
    lg = logging.getLogger(logger)
    old = lg.level
    lg.setLevel(level)
    try:
        yield
    finally:
        lg.setLevel(old)


def progress_bar(**kwargs: Any):
    """tqdm in a terminal or a notebook (Colab); silent in logs and CI, where epoch lines say enough."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return tqdm(disable=not interactive, dynamic_ncols=True, **kwargs)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from lorafw.errors import ConfigError

        raise ConfigError([f"train.device: {name} was asked for but no CUDA GPU is available; use train.device=auto or cpu"])
    return dev


def resolve_precision(t: TrainSpec, device: torch.device) -> tuple[str, str | None]:
    """('no' | 'fp16' | 'bf16', a note when the request was changed for this device).

    On a CPU, `auto` is fp32 and fp16 (which CPUs cannot scale) runs as fp32; an explicit bf16 is honoured.
    """
    if device.type != "cuda":
        if t.mixed_precision == "bf16":
            return "bf16", None
        note = None if t.mixed_precision in ("auto", "no") else f"train.mixed_precision={t.mixed_precision} runs as fp32 on {device.type}"
        return "no", note
    if t.mixed_precision == "auto":
        return ("bf16" if torch.cuda.is_bf16_supported() else "fp16"), None
    if t.mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
        return "fp16", "this GPU has no bf16: training in fp16 instead"
    return t.mixed_precision, None


def weight_dtype(precision: str) -> torch.dtype:
    """dtype of the frozen base weights: half where the run is mixed-precision (adapters stay fp32)."""
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, noise_scheduler: Any,
                   min_snr_gamma: float | None, mask: torch.Tensor | None = None,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample L2 (MSE) loss: masked per latent pixel (kohya's masked_loss: mean over all pixels),
    weighted per sample (regularisation images: prior_loss_weight), min-SNR-γ weighted for ε-prediction
    (weight = min(SNR, γ) / SNR)."""
    loss = torch.nn.functional.mse_loss(pred.float(), target.float(), reduction="none")
    if mask is not None:
        loss = loss * mask.to(loss.device, loss.dtype)
    loss = loss.mean(dim=(1, 2, 3))
    if weights is not None:
        loss = loss * weights.to(loss.device, loss.dtype)
    if min_snr_gamma:
        from diffusers.training_utils import compute_snr

        snr = compute_snr(noise_scheduler, timesteps).to(loss.device)
        loss = loss * torch.clamp(snr, max=min_snr_gamma) / snr
    return loss


def ensure_writable(folder: Path, what: str) -> None:
    """Create `folder` and prove a file can be written there, or fail naming the setting to change."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lorafw-write-test-{id(folder)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"cannot write to {what} {folder}: {e.strerror}; choose a writable folder") from None


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Create the run folder; refuse one that already holds a run (unless output.overwrite=true)."""
    if (run_dir / RECORD).exists() and not overwrite:
        raise OutputError(
            f"{run_dir} already holds a run (run.json); choose another output.dir, or set output.overwrite=true "
            "to write over it"
        )
    ensure_writable(run_dir, "the output folder (output.dir)")
