"""Which precision a run trains in, decided once from the hardware and the user's settings.

`choose()` is a pure function of (what was asked, what the hardware has): every trainer, `lorafw doctor`
and the tests call it, so what doctor says `auto` picks is what a run picks. `probe()` is the thin shell
that asks torch about the hardware.

The rules (and why):
- bf16 only where it is native. On CUDA that is compute capability ≥ 8.0 (Ampere and newer), asked
  with emulation excluded: `torch.cuda.is_bf16_supported()` alone counts emulated bf16, so a T4 (7.5)
  would train in slow emulated bf16 instead of fp16. On a CPU it is avx512_bf16 or AMX-BF16: on this
  project's avx512_bf16 CPU a full-size SD1.5 UNet step (256 px, batch 2) took 2.3 s in bf16 autocast
  against 4.1 s in fp32.
- Elsewhere on CUDA: fp16 with a gradient scaler (fp16's 5 exponent bits underflow small gradients
  without loss scaling). Elsewhere on a CPU: fp32.
- A fallback from bf16 (asked for on a GPU without it) turns full_bf16 off, saying why.
- fp16 asked for on a CPU is honoured (torch's CPU autocast and GradScaler run it): slow, but it lets
  the fp16 and full_fp16 paths be checked without a GPU.
- full_fp16 (kohya's name): the adapters and their gradients in fp16 like the frozen model. kohya steps
  the fp16 weights directly, where an update below half a unit in the last place (≈ 5e-4 next to a
  weight of 1.0) rounds to nothing. lorafw keeps fp32 master copies that the optimizer steps (the
  gradients unscaled into them by the loss scaler, an overflowing step skipped) and copies them back to
  the fp16 adapters after each step; saved files are written from the masters.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

Precision = Literal["no", "fp16", "bf16"]
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo names of native bf16 arithmetic
CPU_FLAGS_SHOWN = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


@dataclass(frozen=True)
class Hardware:
    """What the precision choice needs to know about the training device."""

    kind: str  # "cuda" | "cpu" | another torch device type (mps, xpu, ...)
    name: str = ""
    capability: tuple[int, int] | None = None  # CUDA compute capability
    bf16_native: bool = False  # bf16 arithmetic without emulation
    cpu_flags: frozenset[str] = field(default_factory=frozenset)  # the CPU_FLAGS_SHOWN it has

    def describe(self) -> str:
        if self.kind == "cuda":
            cc = f", compute capability {self.capability[0]}.{self.capability[1]}" if self.capability else ""
            return f"{self.name or 'CUDA GPU'}{cc}"
        if self.kind == "cpu":
            flags = ", ".join(f for f in CPU_FLAGS_SHOWN if f in self.cpu_flags) or "no AVX-512/AMX"
            return f"CPU ({flags})"
        return self.name or self.kind


@dataclass(frozen=True)
class PrecisionChoice:
    """What a run trains in, and why (`reason`); `notes` say what was changed from the request."""

    precision: Precision
    full_bf16: bool
    full_fp16: bool
    grad_scaler: bool  # fp16: loss scaling (GradScaler), and its skipped overflow steps
    reason: str
    notes: tuple[str, ...] = ()

    @property
    def adapter_dtype_name(self) -> str:
        """The dtype the adapters (and their gradients) live in during the forward/backward."""
        return "bf16" if self.full_bf16 else "fp16" if self.full_fp16 else "fp32"

    @property
    def masters(self) -> bool:
        """fp32 master copies of the adapter weights are stepped by the optimizer."""
        return self.full_bf16 or self.full_fp16


def choose(mixed_precision: str, full_bf16: bool, full_fp16: bool, hw: Hardware) -> PrecisionChoice:
    """The precision a run with these settings trains in on `hw` (pure: the table tests cover every case)."""
    notes: list[str] = []
    if mixed_precision not in ("auto", "no", "fp16", "bf16"):
        raise ValueError(f"train.mixed_precision: {mixed_precision!r} is not one of auto, no, fp16, bf16")
    where = hw.describe()
    if hw.kind == "cuda":
        if mixed_precision == "auto":
            if hw.bf16_native:
                precision, reason = "bf16", f"auto: {where} has native bf16"
            else:
                precision, reason = "fp16", (f"auto: {where} has no native bf16 (compute capability < 8.0; emulated bf16 "
                                             "is several times slower), so fp16 with loss scaling")
        elif mixed_precision == "bf16" and not hw.bf16_native:
            precision = "fp16"
            reason = f"train.mixed_precision=bf16, but {where} has no native bf16: fp16 with loss scaling instead"
            notes.append(f"{where} has no native bf16 (it needs compute capability 8.0 or newer): training in fp16 "
                         "with loss scaling instead of slow emulated bf16")
        else:
            precision = mixed_precision  # type: ignore[assignment]
            reason = f"train.mixed_precision={mixed_precision}"
    elif hw.kind == "cpu":
        if mixed_precision == "auto":
            if hw.bf16_native:
                have = " and ".join(f for f in CPU_BF16_FLAGS if f in hw.cpu_flags) or "native bf16"
                precision, reason = "bf16", f"auto: this CPU has {have} (bf16 autocast ran 1.8x faster than fp32 on one)"
            else:
                precision, reason = "no", "auto: this CPU has no avx512_bf16/AMX-BF16, so fp32 (emulated bf16 is slower)"
        else:
            precision = mixed_precision  # type: ignore[assignment]
            reason = f"train.mixed_precision={mixed_precision}"
            if mixed_precision == "bf16" and not hw.bf16_native:
                notes.append("this CPU has no avx512_bf16/AMX-BF16: bf16 is emulated and slower than fp32 here")
            if mixed_precision == "fp16":
                notes.append("fp16 on a CPU is emulated and slow; it is for checking the fp16 path, not for training")
    else:  # mps, xpu, ...: no table of what is native there; fp32 unless asked
        precision = "no" if mixed_precision == "auto" else mixed_precision  # type: ignore[assignment]
        reason = f"auto: no precision table for {hw.kind}, so fp32" if mixed_precision == "auto" else \
            f"train.mixed_precision={mixed_precision}"

    keep_bf16 = full_bf16 and precision == "bf16"
    if full_bf16 and not keep_bf16:
        notes.append(f"train.full_bf16 turned off: it needs bf16 and this run trains in "
                     f"{'fp32' if precision == 'no' else precision}"
                     + (" (train.full_fp16=true is its fp16 counterpart)" if precision == "fp16" else ""))
    keep_fp16 = full_fp16 and precision == "fp16"
    if full_fp16 and not keep_fp16:
        notes.append(f"train.full_fp16 turned off: it needs fp16 and this run trains in "
                     f"{'fp32' if precision == 'no' else precision}")
    return PrecisionChoice(precision, keep_bf16, keep_fp16, precision == "fp16", reason, tuple(notes))


def attention_choice(attention: str, hw: Hardware, precision: Precision, xformers: bool) -> tuple[str, str]:
    """(what attends, why): the SDPA kernel torch will pick for a UNet's attention, or xformers."""
    if attention == "xformers":
        if not xformers:
            return "unavailable", "train.attention=xformers but xformers is not installed; use train.attention=sdpa"
        return "xformers", "train.attention=xformers"
    half = precision in ("fp16", "bf16")
    if hw.kind == "cuda":
        cc = hw.capability or (0, 0)
        if half and cc >= (8, 0):
            return "sdpa (flash attention)", "SDPA picks FlashAttention-2 on compute capability ≥ 8.0 in fp16/bf16"
        if cc >= (5, 0):
            why = "fp32 activations" if not half else f"compute capability {cc[0]}.{cc[1]} < 8.0"
            return "sdpa (memory-efficient)", f"SDPA picks the memory-efficient kernel ({why}: no FlashAttention)"
        return "sdpa (math)", "SDPA falls back to the plain math kernel on this old GPU"
    if hw.kind == "cpu":
        return "sdpa (CPU flash)", "SDPA's CPU flash-attention kernel (fp32 and bf16)"
    return "sdpa", f"SDPA's default kernel on {hw.kind}"


# -- the shell: ask torch ---------------------------------------------------------------------------------
def cpu_flags(cpuinfo: str | None = None) -> frozenset[str]:
    """The CPU_FLAGS_SHOWN this CPU has: /proc/cpuinfo's flags line, else what torch's CPU probe says.
    LORAFW_CPU_FLAGS (e.g. "" or "avx512_bf16") replaces the detected flags: the test suite sets it so that
    `auto` picks the same precision on every CI machine."""
    if cpuinfo is None and "LORAFW_CPU_FLAGS" in os.environ:
        return frozenset(f for f in os.environ["LORAFW_CPU_FLAGS"].replace(",", " ").split() if f in CPU_FLAGS_SHOWN)
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read(200_000)
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        if line.startswith(("flags", "Features")):
            have = set(line.split(":", 1)[1].split())
            return frozenset(f for f in CPU_FLAGS_SHOWN if f in have)
    try:  # not Linux: torch knows avx512_bf16 and AMX itself
        import torch

        probe = {"avx2": "_is_avx2_supported", "avx512f": "_is_avx512_supported", "avx512_bf16": "_is_avx512_bf16_supported",
                 "amx_tile": "_is_amx_tile_supported", "amx_fp16": "_is_amx_fp16_supported"}
        found = {flag for flag, fn in probe.items() if getattr(torch.cpu, fn, lambda: False)()}
        if "amx_tile" in found:
            found.add("amx_bf16")  # every AMX CPU so far has AMX-BF16
        return frozenset(found)
    except Exception:
        return frozenset()


def cpu_model(cpuinfo: str) -> str | None:
    """The CPU's name from /proc/cpuinfo ("model name" on x86, "Model"/"Hardware" on ARM boards), else None."""
    for field_ in ("model name", "Model", "Hardware"):
        m = re.search(rf"^{field_}\s*:\s*(.+)$", cpuinfo, re.M)
        if m and m.group(1).strip():
            return m.group(1).strip()
    return None


def onednn_version(config: str) -> str | None:
    """oneDNN's version from torch.__config__.show() ("Intel(R) MKL-DNN v3.12.0 (Git Hash ...)"), else None."""
    m = re.search(r"(?:MKL-DNN|oneDNN)\s+v?([\d.]+)", config)
    return m.group(1) if m else None


def cpu_facts() -> dict[str, Any]:
    """What a CPU timing depends on, recorded beside every benchmark figure and shown by `lorafw doctor`: the CPU's
    name, the cores this process may use, its bf16/AMX flags (cpu_flags), and the instruction set torch's kernels
    and oneDNN run with (a figure from an AMX CPU does not carry over to an avx512_bf16 one)."""
    import platform

    import torch

    try:
        with open("/proc/cpuinfo") as f:
            info = f.read(200_000)
    except OSError:
        info = ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mkldnn = torch.backends.mkldnn.is_available()
    return {"model": cpu_model(info) or platform.processor() or platform.machine(), "cores": cores,
            "flags": sorted(cpu_flags()), "torch": torch.__version__, "isa": torch.backends.cpu.get_cpu_capability(),
            "onednn": onednn_version(torch.__config__.show()) if mkldnn else None, "threads": torch.get_num_threads()}


def describe_cpu(facts: dict[str, Any]) -> str:
    """cpu_facts in one line."""
    return (f"{facts['model']}, {facts['cores']} cores, {', '.join(facts['flags']) or 'no AVX-512/AMX'}; torch "
            f"{facts['torch']} ISA {facts['isa']}, oneDNN {facts['onednn'] or 'off'}, {facts['threads']} threads")


def weight_dtype(precision: str) -> Any:
    """torch dtype of the frozen base weights: half where the run is mixed-precision (adapters stay fp32)."""
    import torch  # heavy, and imported only where needed throughout this module (choose() runs without it)

    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def cuda_bf16_native(index: int = 0) -> bool:
    """bf16 without emulation on this GPU (torch ≥ 2.3 can be asked; older: compute capability ≥ 8.0)."""
    import torch

    try:
        with torch.cuda.device(index):
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch without the argument
        return torch.cuda.get_device_capability(index) >= (8, 0)


def probe(device: Any) -> Hardware:
    """The Hardware of a torch device (or a name such as "cuda:1" / "cpu")."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return Hardware("cuda", torch.cuda.get_device_name(idx), tuple(torch.cuda.get_device_capability(idx)),  # type: ignore[arg-type]
                        cuda_bf16_native(idx))
    if device.type == "cpu":
        flags = cpu_flags()
        return Hardware("cpu", "CPU", None, any(f in flags for f in CPU_BF16_FLAGS), flags)
    return Hardware(device.type, device.type)


# -- the runtime: autocast and loss scaling ------------------------------------------------------------------
MAX_SKIPPED_IN_A_ROW = 20  # overflowing steps the loss scaler may skip in a row before the run stops


def fp16_fixes(lr: float) -> str:
    """The usual fixes of an fp16 run whose loss or gradients overflow."""
    return ("Usual fixes: keep the VAE in fp32 (train.no_half_vae=true), a lower learning rate "
            f"(optimizer.lr={lr:g} now), or bf16 on a GPU that has it (train.mixed_precision=bf16; compute capability "
            "8.0 or newer) or fp32 (train.mixed_precision=no)")


class Amp:
    """Autocast and the loss scaler of a PrecisionChoice on one device (torch.amp, on CUDA and on a CPU).

    With fp16, `backward` scales the loss, `unscale` divides the gradients back (before clipping), and `step`
    lets the scaler skip a step whose gradients overflowed (lowering the scale); `skipped_in_a_row` counts
    those, and `overflowing()` says when the scale collapsed instead of settling (then the run stops)."""

    def __init__(self, choice: PrecisionChoice, device: Any) -> None:
        import torch

        self.choice = choice
        self.device_type = torch.device(device).type
        self.dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[choice.precision]
        self.scaler = torch.amp.GradScaler(self.device_type) if choice.grad_scaler else None
        self.skipped_in_a_row = 0
        self.skipped = 0

    def autocast(self):
        import torch

        if self.choice.precision == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def backward(self, loss: Any) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: Any) -> None:
        """The optimizer's gradients divided by the loss scale (call once per step, before clipping)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: Any) -> bool:
        """Step the optimizer; False when the loss scaler skipped it (overflowing gradients)."""
        if self.scaler is None:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        stepped = self.scaler.get_scale() >= before
        self.skipped_in_a_row = 0 if stepped else self.skipped_in_a_row + 1
        self.skipped += 0 if stepped else 1
        return stepped

    def abandon(self) -> None:
        """The step is not taken (a NaN loss): the scaler forgets this step's unscaling, as after a step."""
        if self.scaler is not None:
            self.scaler.update()

    def overflowing(self) -> bool:
        return self.skipped_in_a_row >= MAX_SKIPPED_IN_A_ROW

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state and self.scaler is not None:
            self.scaler.load_state_dict(state)
