"""Rectified flow through the trainer: the objective's resolution and refusals, the flow step, and a
rectified-flow SDXL checkpoint (one that says so) trained as flow, sampled with the flow sampler, its LoRA saying
so in its metadata."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from conftest import tiny_overrides
from lorafw.config.compose import compose
from lorafw.config.prediction import Declared, resolve
from lorafw.config.spec import TrainSpec
from lorafw.errors import ConfigError
from lorafw.objective import flow as F
from lorafw.run import resolve_outputs
from lorafw.sampling import flow_euler
from lorafw.trainers.step import StepConfig, flow_step, training_step
from lorafw.trainers.trainer import prepare

FLOW = Declared("flow", None, "the checkpoint's metadata modelspec.prediction_type=flow")



def _train(**kw):
    import dataclasses

    fields = {f.name: f.default for f in dataclasses.fields(TrainSpec)}
    fields.update(kw)
    return type("T", (), fields)()


def test_auto_follows_the_file_then_the_family():
    assert resolve(_train(), FLOW).prediction == "flow"
    assert resolve(_train(), Declared(), default="flow").prediction == "flow"  # Anima: its family's own
    assert resolve(_train(), Declared()).prediction == "epsilon"
    r = resolve(_train(prediction_type="flow"), Declared())  # a rectified-flow SDXL that does not say so
    assert r.prediction == "flow" and r.source == "train.prediction_type" and not r.zero_terminal_snr
    with pytest.raises(ConfigError, match="flow model"):
        resolve(_train(prediction_type="epsilon"), FLOW)


@pytest.mark.parametrize("key,value", [("min_snr_gamma", 5.0), ("noise_offset", 0.05), ("debiased_estimation_loss", True),
                                       ("multires_noise_iterations", 6), ("min_timestep", 100), ("max_timestep", 900),
                                       ("zero_terminal_snr", True)])
def test_ddpm_options_are_refused_under_flow_by_name(key, value):
    with pytest.raises(ConfigError, match=f"train.{key}"):
        resolve(_train(**{key: value}), FLOW)


def test_huber_snr_is_refused_under_flow_but_exponential_trains():
    with pytest.raises(ConfigError, match="huber_schedule"):
        resolve(_train(loss_type="huber", huber_schedule="snr"), FLOW)
    assert resolve(_train(loss_type="huber", huber_schedule="exponential"), FLOW).prediction == "flow"


@pytest.mark.parametrize("key,value", [("timestep_sampling", "shift"), ("discrete_flow_shift", 3.0), ("sigmoid_scale", 2.0),
                                       ("weighting_scheme", "cosmap")])
def test_flow_options_are_refused_for_an_eps_run(key, value):
    with pytest.raises(ConfigError, match=f"train.{key}={value}: a rectified-flow option"):
        resolve(_train(**{key: value}), Declared())


def test_flow_step_is_flow_loss_with_the_familys_time_scale():
    latents = torch.randn(2, 4, 8, 8)
    cfg = StepConfig.from_spec(_train(timestep_sampling="shift", discrete_flow_shift=3.0), "flow", 1000.0)
    seen = {}

    def denoise(x, t, cond):
        seen["t"], seen["dtype"] = t, x.dtype
        return x * cond["k"]

    out = flow_step(denoise, latents, {"k": 0.5}, torch.Generator().manual_seed(3), cfg)
    ref = F.flow_loss(lambda x, t: x * 0.5, latents, torch.Generator().manual_seed(3),
                      F.FlowOptions(timestep_sampling="shift", discrete_flow_shift=3.0), "l2", timestep_scale=1000.0)
    torch.testing.assert_close(out.loss, ref.loss)
    assert torch.all(seen["t"] > 1) and torch.all(seen["t"] <= 1000)  # σ·1000
    assert training_step(denoise, None, latents, {"k": 0.5}, torch.Generator().manual_seed(3), cfg).loss == out.loss


def test_the_flow_sampler_is_euler_with_guidance():
    def velocity(x, s):  # the exact velocity of a point mass at x0 = 2: v = (x − x0)/σ → ε − x0 along the path
        return (x - 2.0) / s.view(-1, *[1] * (x.ndim - 1)).clamp(min=1e-6)

    noise = flow_euler.initial_noise((1, 1, 2, 2), 7)
    assert torch.equal(noise, flow_euler.initial_noise((1, 1, 2, 2), 7))
    out = flow_euler.sample(velocity, noise, 8, 3.0, 1.0)
    torch.testing.assert_close(out, torch.full_like(out, 2.0), atol=1e-5, rtol=0)
    # CFG: the unconditional half first; scale 1 needs only the conditional half
    v = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    torch.testing.assert_close(flow_euler.guided(v, 4.0), torch.full((1, 1, 2, 2), 4.0))


# -- a rectified-flow SDXL checkpoint ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rf_xl_model(tmp_path_factory, tiny_xl_model) -> Path:
    """The tiny SDXL checkpoint stating rectified flow in its metadata (modelspec.prediction_type=flow)."""
    with safe_open(str(tiny_xl_model), "pt") as f:
        meta = dict(f.metadata() or {})
    out = tmp_path_factory.mktemp("models") / "tiny-sdxl-rf.safetensors"
    save_file(load_file(str(tiny_xl_model)), str(out), metadata={**meta, "modelspec.prediction_type": "flow"})
    return out


@pytest.mark.slow
def test_a_rectified_flow_sdxl_trains_as_flow_and_says_so(rf_xl_model, tiny_dataset, tmp_path):
    spec = compose("sdxl_rf", tiny_overrides(rf_xl_model, tiny_dataset, tmp_path / "o") + [
        "train.epochs=2", "sample.every_n_epochs=2", "sample.prompts=['shapes_demo, red circle --s 3 --w 64 --h 64']",
        "train.gradient_checkpointing=false", "train.timestep_sampling=shift", "train.discrete_flow_shift=3.0"])
    spec = resolve_outputs(spec)
    tr = prepare(spec, spec.output.dir)
    assert tr.plan.objective.prediction == "flow" and tr.plan.step_config.flow_timestep_scale == 1000.0
    result = tr.run()
    assert all(torch.isfinite(torch.tensor(result.loss_history)))
    with safe_open(str(result.lora_files[-1]), "pt") as f:
        meta = f.metadata()
    assert meta["modelspec.prediction_type"] == "flow" and meta["ss_v_parameterization"] == "False"
    assert meta["ss_timestep_sampling"] == "shift" and meta["ss_discrete_flow_shift"] == "3.0"
    assert (Path(spec.output.dir) / "samples").is_dir() and list((Path(spec.output.dir) / "samples").glob("*.png"))


def test_an_eps_sdxl_lora_has_no_flow_keys(tiny_xl_model, tiny_dataset, tmp_path):
    """sd-scripts writes its flow ss_* keys for flow models only; so does lorafw."""
    from lorafw.config.prediction import FLOW_ONLY
    from lorafw.outputs.metadata import Written, spec_metadata

    spec = compose("pdxl", tiny_overrides(tiny_xl_model, tiny_dataset, tmp_path / "o"))

    class Facts:
        arch = "sdxl"
        mixed_precision = "no"
        num_validation_images = 0
        epochs = 1
        init_weights: dict[str, str] = {}

    meta = spec_metadata(spec, Written(Facts(), "toy", False, False))  # type: ignore[arg-type]
    assert not [k for k in meta if k.removeprefix("ss_") in FLOW_ONLY]
    assert {"ss_timestep_sampling", "ss_sigmoid_scale"} <= set(spec_metadata(spec, Written(Facts(), "toy", False, False, True)))  # type: ignore[arg-type]


def test_flow_asked_of_a_file_saying_epsilon_trains_flow_but_not_of_a_v_file():
    """Rectified-flow SDXL files say "epsilon" (their trainers write it), so flow is not a contradiction there; a
    v_pred marker tensor still is."""
    eps = Declared("epsilon", None, "the checkpoint's metadata modelspec.prediction_type=epsilon")
    r = resolve(_train(prediction_type="flow"), eps)
    assert r.prediction == "flow" and "rectified-flow conversions write too" in r.source
    with pytest.raises(ConfigError, match="v_prediction model"):
        resolve(_train(prediction_type="flow"), Declared("v_prediction", True, "the checkpoint's v_pred marker tensor"))


@pytest.mark.parametrize("name,hint", [("chenkinnoobxlv02_RF.safetensors", True), ("NoobAI-Rectified-Flow-v1.safetensors", True),
                                       ("model_flow_matching.safetensors", True), ("ponyDiffusionV6XL.safetensors", False),
                                       ("surfing.safetensors", False), ("waifu-rf2.safetensors", False)])
def test_a_file_named_like_rectified_flow_trained_as_eps_is_warned_about(name, hint):
    from lorafw.config.prediction import warnings_for

    r = resolve(_train(), Declared())
    assert bool(warnings_for(r, name)) == hint
    assert not warnings_for(resolve(_train(prediction_type="epsilon"), Declared()), name)  # said explicitly: no hint
