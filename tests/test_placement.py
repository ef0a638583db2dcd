"""Device placement on a CPU-only machine: the device-asserting hooks, the meta-device parking that makes a
mix-up fail here as it would on a GPU, and (tests below the line) training runs that use every path."""

from __future__ import annotations

import pytest
import torch

from lorafw.placement import MetaParking, Parking, PlacementError, device_of, guarded, misplaced


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))


def test_guard_names_the_misplaced_input():
    m = _net()
    with guarded({"unet": m}):
        m(torch.randn(2, 4))  # same device: fine
        with pytest.raises(PlacementError, match=r"unet \(on cpu\) was given args\[0\] on meta"):
            m(torch.randn(2, 4, device="meta"))
    assert not m._forward_pre_hooks  # hooks removed on exit


def test_misplaced_looks_into_nested_kwargs():
    m = _net()
    bad = misplaced(m, (torch.zeros(1),), {"added_cond_kwargs": {"text_embeds": torch.zeros(1, device="meta")},
                                             "ids": [torch.zeros(1, dtype=torch.long, device="meta")]})
    assert bad == ["added_cond_kwargs.text_embeds on meta", "ids[0] on meta"]


def test_meta_parking_keeps_the_weights_and_refuses_use_while_parked():
    m, ref = _net(), _net()
    m[1].register_buffer("ids", torch.arange(4), persistent=False)  # like CLIP's position_ids
    park = MetaParking()
    park.park(m)
    assert device_of(m).type == "meta" and park.is_parked(m)
    with guarded({"te": m}), pytest.raises(PlacementError):
        m(torch.randn(2, 4))  # used without borrowing: fails here as a CPU module on a GPU run would
    x = torch.randn(2, 4)
    with park.borrow(torch.device("cpu"), m):
        assert device_of(m).type == "cpu"
        assert torch.equal(m(x), ref(x)) and torch.equal(m[1].ids, torch.arange(4))
    assert device_of(m).type == "meta"


def test_plain_parking_moves_to_cpu_and_borrow_leaves_unparked_modules_alone():
    a, b = _net(), _net()
    park = Parking()
    park.park(a)
    with park.borrow(torch.device("cpu"), a, b):
        pass
    assert device_of(a).type == "cpu" and not park.is_parked(b)


# -- training runs on a CPU with the parked parts on `meta` and every module guarded (LORAFW_CHECK_DEVICES=meta) --
import json  # noqa: E402
import math  # noqa: E402

import lorafw  # noqa: E402
from conftest import make_folder  # noqa: E402


@pytest.fixture
def elsewhere(monkeypatch):
    """Parked parts live on `meta`: whatever a run computes with them without borrowing them back fails here."""
    monkeypatch.setenv("LORAFW_CHECK_DEVICES", "meta")


@pytest.fixture
def six(tmp_path):
    root = tmp_path / "six"
    make_folder(root, "2_toy", [(64, 64)] * 6, ["toy, red", "toy, blue", "toy, green", "toy, one", "toy, two", "toy, three"])
    return root


CACHED_TEXT = ("dataset.cache_text_encoder_outputs=true", "optimizer.text_encoder_lr=0", "dataset.shuffle_caption=false")


def test_validation_with_cached_text(compose_tiny, six, elsewhere):
    """The issue's crash: after caching, the text encoders are parked; held-out captions were then encoded live,
    their states arriving from the parked encoders' device at the UNet. Now they are encoded with the training
    captions, before the encoders leave."""
    result = lorafw.train(compose_tiny("sd15_character", *CACHED_TEXT, "validation.split=0.34", "train.epochs=2", data=six))
    assert len(result.val_losses) == 2 and all(math.isfinite(v) for v in result.val_losses.values())


def test_validation_with_cached_text_matches_live_encoding(compose_tiny, six):
    """Cached validation text states give the same validation loss as encoding the captions each time."""
    a = lorafw.train(compose_tiny("sd15_character", *CACHED_TEXT, "validation.split=0.34", data=six))
    b = lorafw.train(compose_tiny("sd15_character", *CACHED_TEXT[1:], "validation.split=0.34", f"output.dir={a.run_dir}-live",
                                  data=six))
    assert a.val_losses[1] == pytest.approx(b.val_losses[1], rel=1e-5)


def test_samples_with_cached_latents_and_text(compose_tiny, elsewhere):
    """Samples borrow the parked VAE and text encoders; the pipeline computes where the UNet is."""
    result = lorafw.train(compose_tiny("sd15_character", *CACHED_TEXT, "sample.every_n_epochs=1", "sample.steps=2",
                                       "sample.prompts=[toy --w 64 --h 64]"))
    assert len(list((result.run_dir / "samples").glob("*.png"))) == 1


def test_sdxl_validation_and_samples_with_cached_text(compose_tiny, tiny_xl_model, six, elsewhere):
    result = lorafw.train(compose_tiny("pdxl", *CACHED_TEXT, "dataset.cache_latents_to_disk=false", "validation.split=0.34",
                                       "sample.every_n_epochs=1", "sample.steps=2", "sample.prompts=[toy --w 64 --h 64]",
                                       data=six, model=tiny_xl_model))
    assert result.val_losses and list((result.run_dir / "samples").glob("*.png"))


def test_ema_on_cpu_and_resume(compose_tiny, elsewhere):
    spec = compose_tiny("sd15_character", "ema.enabled=true", "ema.on_cpu=true", "train.epochs=2")
    import dataclasses

    first = lorafw.train(dataclasses.replace(spec, train=dataclasses.replace(spec.train, epochs=1)))
    resumed = lorafw.train(dataclasses.replace(spec, resume=str(first.run_dir)), force=True)
    assert resumed.steps == 2 * first.steps and list(resumed.run_dir.glob("*-02-ema.safetensors"))
    record = json.loads((resumed.run_dir / "run.json").read_text())
    assert record["status"] == "finished"
