"""The objective options in real (tiny, CPU) runs: v-prediction read from a NoobAI-marked checkpoint, the
refusal of a contradicting setting, and every noise/loss option training and landing in the LoRA's metadata
under kohya's name."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from conftest import tiny_overrides, with_marker_tensors
from lorafw.config.compose import compose
from lorafw.errors import ConfigError
from lorafw.run import resolve_outputs


def metadata(path) -> dict[str, str]:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def trainer(spec):
    from lorafw.trainers.trainer import prepare

    spec = resolve_outputs(spec)
    return prepare(spec, spec.output.dir)


def test_a_v_pred_marked_sdxl_file_trains_as_v_prediction_with_ztsnr(tiny_xl_vpred_model, tiny_dataset, tmp_path):
    spec = compose("pdxl", tiny_overrides(tiny_xl_vpred_model, tiny_dataset, tmp_path / "run") +
                   ["train.batch_size=8", "train.mixed_precision=no", "train.full_bf16=false"])
    assert spec.train.prediction_type == "auto"
    tr = trainer(spec)
    assert (tr.plan.objective.prediction, tr.plan.objective.zero_terminal_snr) == ("v_prediction", True)
    result = tr.run()
    assert tr.models.noise_scheduler.config.prediction_type == "v_prediction" and tr.models.noise_scheduler.alphas_cumprod[-1] == 0
    meta = metadata(result.lora_files[-1])
    assert meta["modelspec.prediction_type"] == "v"
    assert (meta["ss_v_parameterization"], meta["ss_zero_terminal_snr"]) == ("True", "True")
    assert all(x == x for x in result.loss_history)
    record = json.loads((result.run_dir / "run.json").read_text())
    assert record["objective"]["prediction_type"] == "v_prediction" and "v_pred marker" in record["objective"]["source"]


def test_an_epsilon_file_asked_to_train_v_prediction_is_refused_by_name(tiny_xl_model, tiny_dataset, tmp_path):
    eps = with_marker_tensors(tiny_xl_model, tmp_path / "eps.safetensors", metadata={"modelspec.prediction_type": "epsilon"})
    overrides = tiny_overrides(eps, tiny_dataset, tmp_path / "run") + ["train.prediction_type=v_prediction"]
    with pytest.raises(ConfigError) as e:  # `lorafw check` / the CLI: before anything is loaded
        compose("pdxl", overrides)
    assert "train.prediction_type" in str(e.value) and str(eps) in str(e.value) and "epsilon" in str(e.value)
    spec = compose("pdxl", overrides, check_paths=False)
    with pytest.raises(ConfigError) as e:  # the trainer itself (Python API), before any weights are read
        trainer(spec)
    assert "train.prediction_type" in str(e.value) and "force_prediction_type" in str(e.value)
    assert not (tmp_path / "run" / "run.json").exists()


def test_the_cli_refuses_it_too(tiny_xl_model, tiny_dataset, tmp_path):
    import subprocess
    import sys

    eps = with_marker_tensors(tiny_xl_model, tmp_path / "eps.safetensors", metadata={"modelspec.prediction_type": "epsilon"})
    p = subprocess.run([sys.executable, "-m", "lorafw", "+recipe=pdxl", *tiny_overrides(eps, tiny_dataset, tmp_path / "run"),
                        "train.prediction_type=v_prediction"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 2 and "train.prediction_type" in p.stderr and "modelspec.prediction_type=epsilon" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "run").exists()


V = ["train.prediction_type=v_prediction"]
OFFSET = ["train.noise_offset=0.05"]
# (overrides, metadata key, value written); every run is one step of the tiny SD1.5 model
OPTIONS = [
    (V, "ss_v_parameterization", "True"),
    (V + ["train.zero_terminal_snr=true"], "ss_zero_terminal_snr", "True"),
    (V + ["train.scale_v_pred_loss_like_noise_pred=true"], "ss_scale_v_pred_loss_like_noise_pred", "True"),
    (V + ["train.min_snr_gamma=1.0"], "ss_min_snr_gamma", "1.0"),
    (["train.v_pred_like_loss=0.5"], "ss_v_pred_like_loss", "0.5"),
    (["train.debiased_estimation_loss=true"], "ss_debiased_estimation", "True"),
    (OFFSET, "ss_noise_offset", "0.05"),
    (OFFSET + ["train.noise_offset_random_strength=true"], "ss_noise_offset_random_strength", "True"),
    (OFFSET + ["train.adaptive_noise_scale=0.5"], "ss_adaptive_noise_scale", "0.5"),
    (["train.multires_noise_iterations=6"], "ss_multires_noise_iterations", "6"),
    (["train.multires_noise_iterations=6", "train.multires_noise_discount=0.8"], "ss_multires_noise_discount", "0.8"),
    (["train.ip_noise_gamma=0.1"], "ss_ip_noise_gamma", "0.1"),
    (["train.ip_noise_gamma=0.1", "train.ip_noise_gamma_random_strength=true"], "ss_ip_noise_gamma_random_strength", "True"),
    (["train.min_timestep=900"], "ss_min_timestep", "900"),
    (["train.max_timestep=50"], "ss_max_timestep", "50"),
    (["train.loss_type=l1"], "ss_loss_type", "l1"),
    (["train.loss_type=huber", "train.huber_schedule=exponential"], "ss_huber_schedule", "exponential"),
    (["train.loss_type=smooth_l1", "train.huber_c=0.3"], "ss_huber_c", "0.3"),
    (["train.loss_type=huber", "train.huber_schedule=constant", "train.huber_scale=3"], "ss_huber_scale", "3.0"),
    (["train.scale_weight_norms=0.0001"], "ss_scale_weight_norms", "0.0001"),
]
SHORT = ["train.batch_size=8", "optimizer.lr=1e-2", "optimizer.text_encoder_lr=0", "output.save_precision=fp32"]


@pytest.fixture(scope="module")
def baseline(tiny_model, tiny_dataset, tmp_path_factory):
    """The same one-step run with every option at its default: each option must change something."""
    out = tmp_path_factory.mktemp("objective") / "base"
    return trainer(compose("sd15_character", tiny_overrides(tiny_model, tiny_dataset, out) + SHORT)).run()


@pytest.mark.slow
@pytest.mark.parametrize("overrides,key,value", OPTIONS, ids=[o[1] for o in OPTIONS])
def test_every_option_trains_and_is_recorded_under_kohyas_name(overrides, key, value, tiny_model, tiny_dataset, tmp_path,
                                                                baseline):
    from lorafw.outputs.metrics import read_metrics

    spec = compose("sd15_character", tiny_overrides(tiny_model, tiny_dataset, tmp_path / "run") + SHORT + overrides)
    result = trainer(spec).run()
    assert result.steps == 1 and all(x == x for x in result.loss_history)
    meta = metadata(result.lora_files[-1])
    assert meta[key] == value and metadata(baseline.lora_files[-1])[key] != value
    assert meta["modelspec.prediction_type"] == ("v" if overrides[0] == V[0] else "epsilon")
    if key == "ss_scale_weight_norms":  # acts after the step: every adapter's update is held to the limit
        row = [r for r in read_metrics(result.run_dir) if r["kind"] == "step"][0]
        assert row["max_norm/keys_scaled"] > 0 and row["max_norm/max_key_norm"] == pytest.approx(1e-4, rel=1e-3)
        from safetensors.torch import load_file

        sd = load_file(str(result.lora_files[-1]))
        downs = [k for k in sd if k.endswith("lora_down.weight")]
        norms = [(sd[k.replace("lora_down", "lora_up")].flatten(1) @ sd[k].flatten(1)).norm().item()
                 * sd[k.replace("lora_down.weight", "alpha")].item() / sd[k].shape[0] for k in downs]
        assert max(norms) <= 1e-4 * 1.001
    else:  # the option changed the step's draw or its loss
        assert result.loss_history[0] != pytest.approx(baseline.loss_history[0], rel=1e-6)
