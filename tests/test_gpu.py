"""Smoke tests on a CUDA GPU (marker `gpu`; checks/gpu_check.py runs them): every precision mode, each
network option, samples and the grid, validation with cached text, EMA on the CPU, resuming on the GPU from
state saved on the CPU, and the SDXL trainer, on the tiny models. Without CUDA each skips, saying why; the
device-placement tests that need no GPU are in tests/test_placement.py."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

import lorafw
from conftest import make_folder

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                   reason="needs a CUDA GPU (checks/gpu_check.py runs these on one)")]


@pytest.fixture(autouse=True)
def _guarded(monkeypatch):
    """Every run here checks that each tensor reaches the device of the module consuming it (lorafw/placement.py)."""
    monkeypatch.setenv("LORAFW_CHECK_DEVICES", "1")


def _bf16() -> bool:
    from lorafw.precision import cuda_bf16_native

    return torch.cuda.is_available() and cuda_bf16_native(0)


def _run(compose_tiny, *overrides: str, recipe: str = "sd15_character", **kw):
    spec = compose_tiny(recipe, "train.device=cuda", *overrides, **kw)
    result = lorafw.train(spec)
    assert result.lora_files and all(p.is_file() for p in result.lora_files)
    assert all(math.isfinite(x) for x in result.epoch_losses), result.epoch_losses
    return result


def _record(result) -> dict:
    return json.loads((result.run_dir / "run.json").read_text())


@pytest.fixture
def six_images(tmp_path):
    root = tmp_path / "six"
    make_folder(root, "2_toy", [(64, 64)] * 6, ["toy, red", "toy, blue", "toy, green", "toy, one", "toy, two", "toy, three"])
    return root


@pytest.mark.parametrize("precision,extra", [
    ("no", []), ("fp16", []), ("bf16", []), ("fp16", ["train.full_fp16=true"]), ("bf16", ["train.full_bf16=true"]),
    ("auto", []), ("fp16", ["train.no_half_vae=true"]),
])
def test_every_precision_mode(compose_tiny, precision, extra):
    if precision == "bf16" and not _bf16():
        pytest.skip("this GPU has no native bf16 (compute capability < 8.0): the fallback is covered by test_precision")
    result = _run(compose_tiny, f"train.mixed_precision={precision}", *extra, "train.epochs=2")
    dev = _record(result)["device"]
    assert dev["device"].startswith("cuda")
    expected = {"auto": "bf16" if _bf16() else "fp16"}.get(precision, precision)
    assert dev["precision"] == expected


def _networks() -> list[str]:
    from lorafw.config.compose import conf_dir

    return sorted(p.stem for p in (conf_dir() / "network").glob("*.yaml"))


@pytest.mark.parametrize("network", _networks())
def test_each_network(compose_tiny, network):
    _run(compose_tiny, f"network={network}")


def test_samples_and_grid(compose_tiny):
    from lorafw.sampling.grid import grid

    result = _run(compose_tiny, "train.epochs=2", "sample.every_n_epochs=1", "sample.steps=2",
                  "sample.prompts=[toy --w 64 --h 64]")
    assert len(list((result.run_dir / "samples").glob("*.png"))) == 2
    written = grid(result.run_dir, ["sample.steps=2", "grid.weights=[1.0,0.5]"])
    assert written and all(p.is_file() for p in written)


def test_validation_with_cached_text(compose_tiny, six_images):
    """The issue's likely crash: after caching, the text encoders leave the GPU; held-out captions must still be
    encoded where the encoders are and reach the UNet on its device."""
    result = _run(compose_tiny, "dataset.cache_text_encoder_outputs=true", "optimizer.text_encoder_lr=0",
                  "dataset.shuffle_caption=false", "validation.split=0.34", "train.epochs=2", data=six_images)
    assert len(result.val_losses) == 2 and all(math.isfinite(v) for v in result.val_losses.values())


def test_samples_with_cached_text(compose_tiny):
    result = _run(compose_tiny, "dataset.cache_text_encoder_outputs=true", "optimizer.text_encoder_lr=0",
                  "dataset.shuffle_caption=false", "sample.every_n_epochs=1", "sample.steps=2", "sample.prompts=[toy --w 64 --h 64]")
    assert list((result.run_dir / "samples").glob("*.png"))


def test_ema_on_cpu(compose_tiny):
    result = _run(compose_tiny, "ema.enabled=true", "ema.on_cpu=true", "train.epochs=2")
    assert list(result.run_dir.glob("*-ema.safetensors"))


def test_resume_on_gpu_from_cpu_state(compose_tiny):
    """State saved by a CPU run (optimizer moments, EMA, scaler-free) continues on the GPU."""
    spec = compose_tiny("sd15_character", "train.device=cpu", "train.epochs=2", "ema.enabled=true",
                        "output.save_state_every_n_epochs=1")
    first = lorafw.train(dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=1)))
    resumed = lorafw.train(dataclasses.replace(spec, resume=str(first.run_dir),
                                               train=dataclasses.replace(spec.train, device="cuda")), force=True)
    assert resumed.steps > first.steps and all(math.isfinite(x) for x in resumed.epoch_losses)
    assert _record(resumed)["device"]["device"].startswith("cuda")


def test_sdxl_on_gpu(compose_tiny, tiny_xl_model):
    _run(compose_tiny, "dataset.cache_latents_to_disk=false", recipe="pdxl", model=tiny_xl_model)
