"""Which target the base model predicts (ε, v or rectified flow), and whether its schedule has zero terminal SNR.
No torch.

A NoobAI v-prediction LoRA trained as ε comes out empty (kohya-ss/sd-scripts#1772), so the checkpoint's own
statement is read wherever it makes one, in this order:
  1. marker tensors: a `v_pred` key means v-prediction, a `ztsnr` key zero terminal SNR (NoobAI's files;
     ComfyUI's and Forge's model detection read the same keys);
  2. safetensors metadata: `modelspec.prediction_type` (`v` / `epsilon`, the SAI model spec kohya writes),
     else kohya's `ss_v_parameterization` / `ss_zero_terminal_snr`;
  3. a diffusers folder's scheduler/scheduler_config.json (`prediction_type`, `rescale_betas_zero_snr`; a
     FlowMatchEulerDiscreteScheduler means rectified flow).
Nothing stated means the family's own objective: ε-prediction for SD1.5/SDXL, rectified flow for Anima (whose
`inspect` states it). Rectified flow ("flow") is x_t = (1−σ)x0 + σε with target ε − x0 (lorafw/objective/flow.py).
An explicit `train.prediction_type` (or
`train.zero_terminal_snr`) that contradicts the file is refused, naming both, unless
`train.force_prediction_type=true`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Literal, cast

from lorafw.config.schema import ss_names
from lorafw.config.spec import RunSpec, TrainSpec
from lorafw.errors import ConfigError

_SS = ss_names(RunSpec)
SS_V_PRED, SS_ZTSNR = _SS["train.prediction_type"], _SS["train.zero_terminal_snr"]  # kohya's metadata names for them

Prediction = Literal["epsilon", "v_prediction", "flow"]
SHORT = {"epsilon": "ε (epsilon)", "v_prediction": "v", "flow": "rectified flow"}
# modelspec.prediction_type values: kohya's sai_model_spec writes epsilon / v; a rectified-flow LoRA says "flow"
MODELSPEC = {"epsilon": "epsilon", "v_prediction": "v", "flow": "flow"}
# what files write for each (modelspec.prediction_type, diffusers' prediction_type), lower-cased
STATED = {"v": "v_prediction", "v_prediction": "v_prediction", "epsilon": "epsilon", "eps": "epsilon",
          "flow": "flow", "rf": "flow", "rectified_flow": "flow", "flow_matching": "flow"}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "FlowMatchHeunDiscreteScheduler")


@dataclass(frozen=True)
class Declared:
    """What a checkpoint says about itself; None = it does not say."""

    prediction: Prediction | None = None
    ztsnr: bool | None = None
    source: str = ""  # e.g. "the v_pred marker tensor"


@dataclass(frozen=True)
class Resolved:
    """The objective a run trains: its prediction type, ZTSNR, and where each came from (for plan and logs)."""

    prediction: Prediction
    zero_terminal_snr: bool
    source: str
    ztsnr_source: str

    @property
    def v(self) -> bool:
        return self.prediction == "v_prediction"

    def describe(self) -> str:
        z = "zero terminal SNR" if self.zero_terminal_snr else "no ZTSNR"
        return f"{self.prediction} ({self.source}); {z} ({self.ztsnr_source})"


def _truthy(value: str) -> bool | None:
    v = value.strip().lower()
    return True if v in ("true", "1", "yes") else False if v in ("false", "0", "no") else None


def from_header(keys: Any, metadata: dict[str, str]) -> Declared:
    """From a single file's tensor names and metadata (no tensor data is read)."""
    keys = set(keys)
    if "v_pred" in keys:
        z = "ztsnr" in keys
        return Declared("v_prediction", True if z else None,
                        "the checkpoint's v_pred marker tensor" + (" and ztsnr marker" if z else ""))
    ztsnr_marker = True if "ztsnr" in keys else None
    mp = (metadata.get("modelspec.prediction_type") or "").strip().lower()
    if mp:
        kind = STATED.get(mp)
        if kind is None:
            raise ConfigError([f"base_model.path: the checkpoint's modelspec.prediction_type is {mp!r}, which lorafw "
                               "does not train (epsilon, v or flow)"])
        z = ztsnr_marker if ztsnr_marker is not None else _truthy(metadata.get(SS_ZTSNR, ""))
        return Declared(kind, z, f"the checkpoint's metadata modelspec.prediction_type={mp}")  # type: ignore[arg-type]
    vp = _truthy(metadata.get(SS_V_PRED, ""))
    z = ztsnr_marker if ztsnr_marker is not None else _truthy(metadata.get(SS_ZTSNR, ""))
    if vp is not None:
        return Declared("v_prediction" if vp else "epsilon", z, f"the checkpoint's metadata {SS_V_PRED}={metadata[SS_V_PRED]}")
    if z is not None:
        return Declared(None, z, "the checkpoint's ztsnr marker" if ztsnr_marker else f"the checkpoint's metadata {SS_ZTSNR}")
    return Declared()


def from_scheduler_config(cfg: dict[str, Any] | None) -> Declared:
    """From a diffusers folder's scheduler/scheduler_config.json (None: the folder has none)."""
    if not cfg:
        return Declared()
    if cfg.get("_class_name") in FLOW_SCHEDULERS:
        return Declared("flow", None, f"the diffusers folder's scheduler ({cfg['_class_name']})")
    kind = cfg.get("prediction_type")
    if kind not in (None, "epsilon", "v_prediction"):
        raise ConfigError([f"base_model.path: the model's scheduler config says prediction_type={kind!r}, which lorafw "
                           "does not train (epsilon, v_prediction, or a flow-matching scheduler)"])
    z = cfg.get("rescale_betas_zero_snr")
    return Declared(kind, bool(z) if z is not None else None, "the diffusers folder's scheduler_config.json")


def resolve(train: Any, declared: Declared | None, model: str = "the base model",
            default: str = "epsilon") -> Resolved:
    """The objective `train` (a TrainSpec) asks for, checked against what the checkpoint declares; `default` is the
    family's own objective where neither says (its `predictions[0]`).

    Raises ConfigError naming both values when an explicit setting contradicts the file and
    `train.force_prediction_type` is off, and for options that need (or exclude) v-prediction.
    """
    d = declared or Declared()
    problems: list[str] = []
    forced = bool(getattr(train, "force_prediction_type", False))
    want = train.prediction_type
    if want == "auto":
        pred: Prediction = d.prediction or cast(Prediction, default)
        source = d.source if d.prediction else "the default: the checkpoint does not state one"
    else:
        pred = want
        source = "train.prediction_type"
        if want == "flow" and d.prediction == "epsilon":
            # rectified-flow SDXL conversions carry no marker and their trainers write modelspec "epsilon" (not
            # v_parameterization), so a file saying ε does not contradict flow: trained as asked, and said so
            source += f" (the file's own {d.source} is what rectified-flow conversions write too)"
        elif d.prediction and d.prediction != want:
            if forced:
                source += f", forced over {d.source} ({d.prediction})"
            else:
                problems.append(
                    f"train.prediction_type: {want} asked for, but {model} is a {d.prediction} model ({d.source}); "
                    f"leave train.prediction_type=auto to train it as the file says, or set "
                    f"train.force_prediction_type=true to train {want} anyway")
    zwant = train.zero_terminal_snr
    if zwant is None:
        ztsnr = bool(d.ztsnr)
        zsource = (d.source if d.ztsnr is not None else "the default: the checkpoint does not state it")
    else:
        ztsnr, zsource = bool(zwant), "train.zero_terminal_snr"
        if d.ztsnr is not None and d.ztsnr != zwant:
            if forced:
                zsource += f", forced over {d.source}"
            else:
                problems.append(
                    f"train.zero_terminal_snr: {zwant} asked for, but {model} states zero_terminal_snr={d.ztsnr} "
                    f"({d.source}); leave train.zero_terminal_snr=null to follow the file, or set "
                    "train.force_prediction_type=true")
    if train.scale_v_pred_loss_like_noise_pred and pred != "v_prediction":
        problems.append(f"train.scale_v_pred_loss_like_noise_pred: needs v-prediction, but this run trains {pred} "
                        f"({source}); turn it off or train a v-prediction model")
    if train.v_pred_like_loss and pred == "v_prediction":
        problems.append(f"train.v_pred_like_loss: adds a v-like term to an ε loss, but this run already trains "
                        f"v-prediction ({source}); set train.v_pred_like_loss=null")
    problems += flow_problems(train, pred, source)
    if problems:
        raise ConfigError(problems)
    return Resolved(pred, ztsnr and pred != "flow", source, zsource)


# DDPM options rectified flow has no use for (sd-scripts' flow trainers skip them): refused rather than ignored
DDPM_ONLY = {"min_snr_gamma": "min-SNR weights read a DDPM schedule's SNR",
             "scale_v_pred_loss_like_noise_pred": "an SNR weight", "v_pred_like_loss": "an ε/v loss term",
             "debiased_estimation_loss": "an SNR weight", "noise_offset": "offset noise is not applied to flow",
             "multires_noise_iterations": "multires noise is not applied to flow",
             "min_timestep": "flow draws σ, not DDPM timesteps (use timestep_sampling / discrete_flow_shift)",
             "max_timestep": "flow draws σ, not DDPM timesteps (use timestep_sampling / discrete_flow_shift)",
             "zero_terminal_snr": "it rescales a DDPM noise schedule, which rectified flow has not"}
# flow options whose non-default value means nothing to an ε / v run (their defaults as config/spec.py declares them)
FLOW_ONLY = {f.name: f.default for f in dataclasses.fields(TrainSpec)
             if f.name in ("timestep_sampling", "sigmoid_scale", "discrete_flow_shift", "weighting_scheme",
                           "logit_mean", "logit_std", "mode_scale")}


def flow_problems(train: object, pred: str, source: str) -> list[str]:
    """Options set for the other objective: DDPM-only ones under flow, flow-only ones under ε / v."""
    out = []
    if pred == "flow":
        for k, why in DDPM_ONLY.items():
            v = getattr(train, k, None)
            if v:
                off = "false" if isinstance(v, bool) else "0" if k == "noise_offset" else "null"
                out.append(f"train.{k}: {why}; this run trains rectified flow ({source}); set train.{k}={off}")
        huber = getattr(train, "loss_type", "l2") in ("huber", "smooth_l1")
        if huber and getattr(train, "huber_schedule", "") == "snr":
            out.append("train.huber_schedule: snr reads a DDPM schedule's SNR, which rectified flow has not; use "
                       "constant or exponential")
    else:
        for k, default in FLOW_ONLY.items():
            v = getattr(train, k, default)
            if v != default:
                out.append(f"train.{k}={v}: a rectified-flow option, but this run trains {pred} ({source}); unset it, "
                           "or train a flow model (train.prediction_type=flow)")
    return out


# a rectified-flow SDXL's file name is the only thing that tells it apart (ChenkinNoob-XL-v0.2-RF, "…rectified-flow…")
RF_NAME = re.compile(r"(?i)(?:^|[^a-z0-9])(?:rf|rectified[-_ ]?flow|flow[-_ ]?matching)(?:[^a-z0-9]|$)")


def warnings_for(r: Resolved, model_name: str = "") -> list[str]:
    """Settings that train, but not as a user would expect (kohya warns about the same)."""
    out = []
    if r.prediction != "flow" and "train.prediction_type" not in r.source and RF_NAME.search(model_name):
        out.append(f"base_model.path: {model_name!r} is named like a rectified-flow model, which no file marks; it is "
                   f"trained as {r.prediction} ({r.source}). If it is one, set train.prediction_type=flow "
                   "(base_model=sdxl_rf); to silence this, set train.prediction_type explicitly")
    if r.zero_terminal_snr and not r.v:
        out.append("train.zero_terminal_snr with ε-prediction: the last timestep's input is pure noise, which an "
                   "ε model cannot learn from (kohya warns the same); ZTSNR is meant for v-prediction")
    return out
