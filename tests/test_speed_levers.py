"""The speed levers (lorafw/speed.py) change no result: a tiny run with each lever off writes byte for byte the files
the run with every lever on writes (LoRA tensors and metadata but the per-session keys; state.pt whole). Each
lever is also checked to be engaged in the run it is compared in, so a lever that quietly did nothing could not
pass for a harmless one. How fast they are: benchmarks/step_profile.py."""

from __future__ import annotations

import contextlib
import hashlib
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open

from lorafw import speed
from lorafw.outputs import background
from lorafw.outputs.lora_file import file_data_sha256
from lorafw.run import resolve_outputs
from lorafw.trainers.trainer import prepare

# metadata that differs between any two runs (tools/run_fingerprint.py leaves out the same keys), and kohya's
# sshs_legacy_hash: 64 KiB at 1 MiB into the file written with the ss_* keys, so it moves with the length of the
# times among them (the tensor bytes are checked through file_data_sha256)
VOLATILE = {"ss_session_id", "ss_training_started_at", "ss_training_finished_at", "ss_training_time", "modelspec.date",
            "sshs_legacy_hash"}
COMMON = ["train.epochs=2", "output.save_precision=fp32", "output.save_state_every_n_steps=1", "optimizer=adamw",
          "optimizer.lr=1e-2", "optimizer.text_encoder_lr=1e-2", "ema.enabled=true", "ema.decay=0.9",
          "dataset.shuffle_caption=false", "train.mixed_precision=no", "train.full_bf16=false"]


def digest(f: Path) -> Any:
    """What must not change in a file: a LoRA's tensor bytes and lasting metadata, state.pt's bytes."""
    if f.suffix == ".safetensors":
        with safe_open(str(f), "pt") as sf:
            meta = {k: v for k, v in (sf.metadata() or {}).items() if k not in VOLATILE}
        return file_data_sha256(f), meta
    return hashlib.sha256(f.read_bytes()).hexdigest()


def outputs(run: Path) -> dict[str, Any]:
    return {f.name: digest(f) for f in [*sorted(run.glob("*.safetensors")), run / "state.pt"]}


class Probe:
    """Records whether each lever did its work during a run."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.writer_threads: set[str] = set()
        self.last_te_layer_calls = 0
        self.unit_scalar_skips = 0
        self.writes: list[tuple[str, Any]] = []  # every LoRA file and state.pt as written, in order
        from lorafw.outputs import lora_file
        from lorafw.trainers import checkpoint as state

        real_lora, real_state = lora_file.save_lora, state.write_state

        def save_lora(path: Path, *a: Any) -> Path:
            real_lora(path, *a)
            self.writes.append((Path(path).name, digest(Path(path))))
            return Path(path)

        def write_state(run_dir: Path, *a: Any) -> Path:
            p = real_state(run_dir, *a)
            self.writes.append((p.name, digest(p)))
            return p

        monkeypatch.setattr(lora_file, "save_lora", save_lora)
        monkeypatch.setattr(state, "write_state", write_state)
        from lorafw.trainers import trainer as loop

        real_reuse = loop.reuse_freed_memory
        self.heap_reuse: list[bool] = []

        @contextlib.contextmanager
        def reuse(enabled: bool = True):
            with real_reuse(enabled) as active:
                self.heap_reuse.append(active)
                yield active

        monkeypatch.setattr(loop, "reuse_freed_memory", reuse)
        real_run = background.Writer.submit

        def submit(writer: background.Writer, job: Any, *a: Any, **k: Any) -> None:
            def traced(*a: Any, **k: Any) -> Any:
                self.writer_threads.add(threading.current_thread().name)
                return job(*a, **k)

            real_run(writer, traced, *a, **k)

        monkeypatch.setattr(background.Writer, "submit", submit)
        from lorafw.network import modules

        real_unit = modules.KohyaLoCon._unit_scalar

        def unit(module: Any) -> bool:
            hit = real_unit(module)
            self.unit_scalar_skips += hit
            return hit

        monkeypatch.setattr(modules.KohyaLoCon, "_unit_scalar", unit)
        self.dora_cache_hits = 0
        real_product = modules._CachedProduct.forward

        def product(ctx: Any, a: torch.Tensor, b: torch.Tensor, owner: Any, key: tuple) -> torch.Tensor:
            before = owner._wd_cache
            out = real_product(ctx, a, b, owner, key)
            self.dora_cache_hits += before is not None and owner._wd_cache is before
            return out

        monkeypatch.setattr(modules._CachedProduct, "forward", staticmethod(product))

    def watch(self, tr: Any) -> None:
        te = tr.models.text_encoders[0]
        te.encoder.layers[-1].register_forward_hook(lambda *a: setattr(self, "last_te_layer_calls",
                                                                          self.last_te_layer_calls + 1))


def train(spec: Any, cls: type, monkeypatch: pytest.MonkeyPatch, off: tuple[str, ...] = ()) -> tuple[dict, Probe]:
    """Train `spec` with levers `off` switched off: (the final files' digests, the probe with every write)."""
    probe = Probe(monkeypatch)
    with speed.off(*off):
        spec = resolve_outputs(spec)
        tr = cls(spec, spec.output.dir)
        real_setup = tr.setup

        def setup() -> None:
            real_setup()
            probe.watch(tr)

        tr.setup = setup
        tr.run()
        te = tr.models.text_encoders[0]
        te.eval()
        calls = probe.last_te_layer_calls  # the run's calls, not this one's
        with torch.no_grad():  # the trained encoder afterwards, whole (sampling, the grid and tests use it so)
            probe.te_states = te(torch.arange(77)[None] % 1000, output_hidden_states=True).hidden_states
        assert len(probe.te_states) == len(te.encoder.layers) + 1
        probe.last_te_layer_calls = calls
    monkeypatch.undo()
    return outputs(Path(spec.output.dir)), probe


RUNS = {
    # SD1.5: clip_skip 2 (the last CLIP-L layer unused), text encoder trained, EMA twins, state every step
    "sd15": ("sd15_character", prepare, []),
    # adapter dropouts draw random numbers in the text encoder's last layer too: te_layers must stand down there
    # (skipping those draws would shift the UNet adapters' masks)
    "sd15_dropout": ("sd15_character", prepare, ["network.dropout=0.1", "network.rank_dropout=0.1",
                                                     "network.module_dropout=0.1"]),
    # SDXL: CLIP-L's last layer unused (hidden state -2), bigG whole (its pooled output is read)
    "sdxl": ("pdxl", prepare, ["dataset.cache_latents_to_disk=false", "train.gradient_checkpointing=false",
                                   "train.max_token_length=75"]),
    # DoRA under bf16 autocast with gradient checkpointing (dora_norm_cache's recompute) and bitsandbytes' 8-bit
    # AdamW, which writes the weights without bumping their version
    "sd15_dora": ("sd15_character", prepare, ["network=dora", "train.mixed_precision=bf16",
                                              "train.gradient_checkpointing=true", "optimizer=adamw8bit"]),
}
# the levers each run switches off one by one (default: all); the DoRA run only those inside the adapters, to keep
# the suite's time (the others do not depend on the network)
RUN_LEVERS = {"sd15_dora": ("adapter_unit_scalar", "autocast_no_upcast", "dora_norm_cache")}


def compose_run(arch: str, out: Path, model: Path, data: Path) -> Any:
    from conftest import tiny_overrides

    from lorafw.config.compose import compose

    recipe, _, extra = RUNS[arch]
    mine = {e.split("=")[0] for e in extra}
    return compose(recipe, tiny_overrides(model, data, out) + [c for c in COMMON if c.split("=")[0] not in mine] + extra)


@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(RUNS))
def test_every_speed_lever_leaves_every_file_identical(arch, tiny_model, tiny_xl_model, tiny_dataset, tmp_path,
                                                       monkeypatch):
    model = tiny_xl_model if arch == "sdxl" else tiny_model
    cls = RUNS[arch][1]
    on, probe_on = train(compose_run(arch, tmp_path / "on", model, tiny_dataset), cls, monkeypatch)
    # the levers were engaged in the run compared (te_layers only where the skipped layer draws no random numbers)
    assert any(n.startswith("lorafw-writer") for n in probe_on.writer_threads), probe_on.writer_threads
    assert (probe_on.last_te_layer_calls > 0) == (arch == "sd15_dropout")
    assert probe_on.unit_scalar_skips > 0
    assert probe_on.heap_reuse == [sys.platform.startswith("linux")]  # glibc's malloc (musl: a no-op, not tested here)
    assert (probe_on.dora_cache_hits > 0) == (arch == "sd15_dora")
    assert {"toy-01.safetensors", "toy-02-ema.safetensors", "state.pt"} <= set(on)
    for lever in RUN_LEVERS.get(arch, tuple(speed.LEVERS)):
        off, probe_off = train(compose_run(arch, tmp_path / f"off-{lever}", model, tiny_dataset), cls, monkeypatch,
                               (lever,))
        assert off == on, f"{arch}: speed lever {lever} changed the files"
        assert probe_off.writes == probe_on.writes, f"{arch}: speed lever {lever} changed a file written during the run"
        assert all(torch.equal(a, b) for a, b in zip(probe_off.te_states, probe_on.te_states, strict=True)), \
            f"{arch}: speed lever {lever} changed the trained text encoder left in memory"
        if lever == "async_save":
            assert not any(n.startswith("lorafw-writer") for n in probe_off.writer_threads)
        if lever == "te_layers":
            assert probe_off.last_te_layer_calls == probe_on.last_te_layer_calls or arch != "sd15_dropout"
            assert probe_off.last_te_layer_calls > 0
        if lever == "adapter_unit_scalar":
            assert probe_off.unit_scalar_skips == 0
        if lever == "heap_reuse":
            assert probe_off.heap_reuse == [False]
        if lever == "dora_norm_cache":
            assert probe_off.dora_cache_hits == 0


class LateWriter(background.Writer):
    """The latest a background write may happen: each job runs only when the trainer waits for it. The optimizer
    state is written from the live tensors, so a wait placed after the next update (or a LoRA tensor that is not a
    copy) would write the next step's values."""

    def __init__(self, background: bool = True) -> None:
        super().__init__(background)
        self.jobs: list = []

    def submit(self, job, *args, **kwargs) -> None:  # type: ignore[override]
        self.jobs.append((job, args, kwargs))

    def wait(self) -> None:
        jobs, self.jobs = self.jobs, []
        for job, args, kwargs in jobs:
            job(*args, **kwargs)


def test_background_writes_hold_the_values_of_the_step_they_were_handed_over_at(compose_tiny, tmp_path, monkeypatch):
    from lorafw.trainers import preflight as session_mod  # open_session makes the run's writer

    spec = lambda out: compose_tiny("sd15_character", *COMMON, f"output.dir={out}")  # noqa: E731
    with speed.off("async_save"):
        ref, ref_probe = train(spec(tmp_path / "sync"), prepare, monkeypatch)
    monkeypatch.setattr(session_mod, "Writer", LateWriter)
    late, late_probe = train(spec(tmp_path / "late"), prepare, monkeypatch)
    assert late == ref
    assert late_probe.writes == ref_probe.writes and len(ref_probe.writes) > 8  # every state.pt and LoRA file


def test_the_writer_raises_a_failed_write_at_the_next_wait_after_finishing_the_others(tmp_path):
    w = background.Writer()
    done: list[int] = []

    def fail() -> None:
        raise OSError("disk full")

    w.submit(done.append, 1)
    w.submit(fail)
    w.submit(done.append, 2)
    with pytest.raises(OSError, match="disk full"):
        w.wait()
    assert done == [1, 2]
    w.wait()  # the error is reported once
    w.close()


def test_unknown_speed_levers_are_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown speed lever"):
        with speed.off("warp_drive"):
            pass
    monkeypatch.setenv("LORAFW_SPEED_OFF", "async_save,nope")
    with pytest.raises(ValueError, match=r"LORAFW_SPEED_OFF: unknown lever\(s\) \['nope'\]"):
        speed._from_env()
    monkeypatch.setenv("LORAFW_SPEED_OFF", "all")
    assert speed._from_env() == frozenset(speed.LEVERS)
