"""The LoRA file's metadata: every key kohya sd-scripts' train_network.py writes, in its formats, plus lorafw's
own (FORMATS.md). Pure: the caller supplies what the run knew (`TrainingFacts`), including the base model's
hashes (outputs/model_hash.py).

A1111/Forge show `ss_output_name` as the alias and `ss_tag_frequency` in the training-tags panel; Civitai reads
`ss_base_model_version` and matches the base model by `ss_new_sd_model_hash`; everyone reads values as strings.
kohya builds a dict of Python values and writes `str()` of each, so formats follow its argument types: floats
as Python prints them ("8.0", "0.0001", "None" when unset), booleans "True"/"False", ints plain, and
`json.dumps` (ASCII-escaped) where kohya json-encodes. tests/fixtures/kohya_metadata_keys.txt lists kohya's keys
(with the sd-scripts commit they were read from); lorafw writes all of them, and some of its own.
A key's ss_* name is declared on the key (`ss=` in config/spec.py) and its value written in kohya's format for its
type (`ss_text`); `WRITTEN_AS` holds the few that kohya writes as something other than the value itself.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import lorafw
from lorafw.config.prediction import FLOW_ONLY
from lorafw.config.schema import _unwrap, iter_keys, kohya_of, ss_names, value_at
from lorafw.config.spec import RunSpec, resolution_size
from lorafw.data.buckets import RESIZE_INTERPOLATION
from lorafw.interop.kohya import is_lycoris, network_args_of

K = kohya_of(RunSpec)  # lorafw key → its sd-scripts argument name (kohya's JSON fields in ss_datasets use them too)
SS = ss_names(RunSpec)  # lorafw key → the metadata key kohya writes its value under
TYPES = {k.path: k.type for k in iter_keys(RunSpec)}
MODELSPEC_VERSION = "1.0.1"  # kohya's sai_model_spec.py BASE_METADATA
MODELSPEC_PREDICTION = {False: "epsilon", True: "v"}  # kohya's sai_model_spec PRED_TYPE_EPSILON / PRED_TYPE_V
INIT_WEIGHTS = "lorafw_init_weights"  # {"name": file name, "sha256": whole-file sha256} of network.init_weights
# kohya options lorafw has no equivalent of (it always trains as kohya does with them off): what kohya writes then
KOHYA_OFF = {
    "ss_lowram": "False",  # a loading strategy
    "ss_fp8_base": "False", "ss_fp8_base_unet": "False",  # lorafw keeps the base model in 16/32 bits
    "ss_color_aug": "False", "ss_face_crop_aug_range": "None",
    "ss_caption_dropout_every_n_epochs": "0",
    "ss_max_validation_steps": "None",  # lorafw validates every held-out image
    "ss_validate_every_n_steps": "None",  # lorafw validates per epoch (validation.every_n_epochs)
    "ss_validation_seed": "None",  # kohya's None: the training seed chooses the held-out images, as in lorafw
    "ss_sd_scripts_commit_hash": "(unknown)",  # kohya's value outside a git checkout; lorafw's version is in
}                                              # modelspec.implementation_version


@dataclass(frozen=True)
class TrainingFacts:
    """What the run knew when the file was written."""

    arch: str
    family: Any  # the Architecture (lorafw/archs/): its kohya base-model version and modelspec names
    epoch: int
    step: int
    total_steps: int
    batches_per_epoch: int
    warmup_steps: int
    num_train_images: int  # Σ images × repeats over the training folders
    num_reg_images: int
    started_at: float
    optimizer: str  # e.g. "bitsandbytes.optim.AdamW8bit(weight_decay=0.1,betas=(0.9, 0.99))"
    mixed_precision: str
    tag_frequency: dict[str, dict[str, int]]
    dataset_dirs: dict[str, dict[str, int]]
    bucket_info: dict[str, Any]
    triggers: list[str] = field(default_factory=list)
    session_id: str = ""
    processes: int = 1  # data-parallel processes: kohya's total batch counts them
    objective: Any = None  # objective.prediction.Resolved: the prediction type and ZTSNR trained (None: ε, no ZTSNR)
    reg_dataset_dirs: dict[str, dict[str, int]] = field(default_factory=dict)
    subsets: list[dict[str, Any]] = field(default_factory=list)  # kohya_subsets(folders): ss_datasets' subsets
    num_validation_images: int = 0  # held-out images (0: no validation)
    model_hashes: dict[str, str] = field(default_factory=dict)  # model_hash.base_model_keys
    saved_at: float | None = None  # when the file is written (None: now)
    init_weights: dict[str, str] = field(default_factory=dict)  # network.init_weights: the file's name and sha256
    epochs: int = 0  # the epochs the run trains (kohya's num_train_epochs: from train.max_steps when it decides)


def network_module(spec: RunSpec) -> tuple[str, dict[str, Any]]:
    """kohya's ss_network_module and the net_kwargs of ss_network_args: the network_args `lorafw export` writes
    (which rebuild the network), plus the "dropout" train_network.py adds to them before writing the metadata."""
    n = spec.network
    args: dict[str, Any] = dict(a.split("=", 1) for a in network_args_of(n))
    if args:
        args["dropout"] = n.dropout or None
    return ("lycoris.kohya" if is_lycoris(n) else "networks.lora"), args


def _float(x: float | int | None) -> str:
    """str() of a value kohya's argparse reads as float: "8.0", "0.0001", "None"."""
    return "None" if x is None else str(float(x))


def _int(x: int | None) -> str:
    return "None" if x is None else str(int(x))


def kohya_subsets(folders: list[Any]) -> list[dict[str, Any]]:
    """Each image folder (data.folders.Folder) as a subset in kohya's `ss_datasets` (train_network.py's
    subset_metadata for a DreamBooth-style dataset), with kohya's values for what lorafw has no setting for."""
    return [{
        "img_count": len(f.images), "num_repeats": f.repeats, "color_aug": False, K["dataset.flip_aug"]: bool(f.flip_aug),
        K["dataset.random_crop"]: bool(f.random_crop), K["dataset.shuffle_caption"]: bool(f.shuffle_caption), K["dataset.keep_tokens"]: f.keep_tokens,
        K["dataset.keep_tokens_separator"]: f.keep_tokens_separator or "", "secondary_separator": None, "enable_wildcard": False,
        "caption_prefix": None, "caption_suffix": None, "resize_interpolation": RESIZE_INTERPOLATION,
        "image_dir": Path(f.path).name, "class_tokens": None, "is_reg": bool(f.is_reg),
    } for f in folders]


def _datasets(spec: RunSpec, facts: TrainingFacts) -> str:
    """kohya's `ss_datasets` (written when sd-scripts reads a dataset config, as `lorafw export` sets it up):
    one dataset with every folder as a subset."""
    d = spec.dataset
    return json.dumps([{
        "is_dreambooth": True, "batch_size_per_device": spec.train.batch_size,
        "num_train_images": facts.num_train_images, "num_reg_images": facts.num_reg_images,
        K["dataset.resolution"]: list(d.size), K["dataset.enable_bucket"]: d.enable_bucket,
        K["dataset.min_bucket_reso"]: d.min_bucket_reso, K["dataset.max_bucket_reso"]: d.max_bucket_reso,
        "tag_frequency": facts.tag_frequency, "bucket_info": facts.bucket_info,
        "resize_interpolation": RESIZE_INTERPOLATION, "subsets": facts.subsets,
    }])


def ss_text(value: Any, tp: Any) -> str:
    """A key's value as kohya writes it: str() of its argparse value, so floats as floats ("8.0", "None" unset),
    ints as ints, booleans "True"/"False"."""
    inner, _ = _unwrap(tp)
    if inner is float:
        return _float(value)
    if inner is int:
        return _int(value)
    return str(value)


@dataclass(frozen=True)
class Written:
    """What a LoRA file's metadata knows besides the spec: the run's facts, the file's name and the objective."""

    facts: TrainingFacts
    name: str
    v_pred: bool  # the objective the run resolved: v-prediction
    ztsnr: bool  # and zero terminal SNR
    flow: bool = False  # or rectified flow


# keys whose metadata value is not the key's own value in kohya's format (value, what the file knows → text)
WRITTEN_AS: dict[str, Callable[[Any, Written], str]] = {
    "base_model.path": lambda v, w: Path(v).name,
    "base_model.vae": lambda v, w: Path(v).name if v else "None",
    "network.dropout": lambda v, w: _float(v or None),  # kohya's None when off
    "train.mixed_precision": lambda v, w: w.facts.mixed_precision,  # what `auto` resolved to
    "train.epochs": lambda v, w: str(w.facts.epochs or v),  # kohya's num_train_epochs: also when max_steps decides
    "train.clip_skip": lambda v, w: str(v) if w.facts.arch == "sd15" else "None",  # lorafw ignores it on SDXL
    "train.prediction_type": lambda v, w: str(w.v_pred),  # kohya's v_parameterization: what was trained
    "train.zero_terminal_snr": lambda v, w: str(w.ztsnr),
    "dataset.resolution": lambda v, w: str(resolution_size(v)),  # kohya's (W, H) tuple: "(512, 768)"
    "dataset.keep_tokens_separator": lambda v, w: v or "",
    "output.name": lambda v, w: w.name,  # the run's name (output.name, or the dataset folder's)
    # kohya's None: every epoch, or never without held-out images; lorafw validates every N epochs
    "validation.every_n_epochs": lambda v, w: str(v) if w.facts.num_validation_images else "None",
}


def spec_metadata(spec: RunSpec, written: Written) -> dict[str, str]:
    """Every key with an `ss=` name (config/spec.py), under that name. kohya's train_network.py writes most of them;
    the timestep range, the v-like loss options and ss_v_parameterization follow its naming for options it does not
    record, which readers such as Civitai's and the UIs' inspectors look for."""
    out = {}
    for path, name in SS.items():
        if path.startswith("train.") and path[6:] in FLOW_ONLY and not written.flow:
            continue  # sd-scripts writes its flow keys for flow models only (anima/flux update_metadata)
        v = value_at(spec, path)
        out[name] = WRITTEN_AS[path](v, written) if path in WRITTEN_AS else ss_text(v, TYPES[path])
    return out


def modelspec(spec: RunSpec, facts: TrainingFacts, name: str, v_pred: bool, saved_at: float,
              flow: bool = False) -> dict[str, str]:
    """The `modelspec.*` keys kohya writes by default (sai_model_spec.build_metadata via get_sai_model_spec;
    the author/description/license/tags/usage_hint/thumbnail keys only when their --metadata_* are given).
    A rectified-flow LoRA's prediction_type is "flow" (sd-scripts writes "epsilon" for Anima, which says nothing
    true; a rectified-flow SDXL LoRA must not read as ε, so lorafw states it — docs/models.md)."""
    t, (width, height) = spec.train, spec.dataset.size
    meta = {
        "modelspec.sai_model_spec": MODELSPEC_VERSION,
        "modelspec.architecture": facts.family.modelspec_architecture,
        "modelspec.implementation": facts.family.modelspec_implementation,
        # kohya's title is output_name; lorafw's names the epoch, so UIs that list titles tell the files apart
        "modelspec.title": f"{name}-{facts.epoch:02d}" if facts.epoch else name,
        "modelspec.date": datetime.fromtimestamp(int(saved_at)).isoformat(),
        "modelspec.resolution": f"{width}x{height}",  # sai_model_spec.determine_resolution
        "modelspec.prediction_type": "flow" if flow else MODELSPEC_PREDICTION[v_pred],
        "modelspec.implementation_version": f"lorafw/{lorafw.__version__}",  # kohya: sd-scripts/<commit>
    }
    if t.min_timestep is not None or t.max_timestep is not None:
        lo = t.min_timestep if t.min_timestep is not None else 0
        hi = t.max_timestep if t.max_timestep is not None else 1000
        meta["modelspec.timestep_range"] = f"{lo},{hi}"
    if facts.triggers:
        meta["modelspec.trigger_phrase"] = ", ".join(facts.triggers)
    if facts.arch == "sd15":  # kohya: whenever clip_skip is set; lorafw ignores clip_skip on SDXL
        meta["modelspec.encoder_layer"] = str(t.clip_skip)
    return meta


def build_metadata(spec: RunSpec, facts: TrainingFacts, name: str) -> dict[str, str]:
    """Every metadata key as a string."""
    module, net_args = network_module(spec)
    v_pred = bool(facts.objective is not None and facts.objective.v)
    ztsnr = bool(facts.objective is not None and facts.objective.zero_terminal_snr)
    flow = bool(facts.objective is not None and facts.objective.prediction == "flow")
    t, o = spec.train, spec.optimizer
    train_te = o.text_encoder_lr > 0
    saved_at = facts.saved_at if facts.saved_at is not None else time.time()
    meta: dict[str, Any] = {
        "ss_session_id": facts.session_id,
        "ss_training_started_at": str(facts.started_at),
        "ss_training_finished_at": str(saved_at),
        "ss_base_model_version": facts.family.base_model_version,
        "ss_v2": "False",
        **facts.model_hashes,
        "ss_network_module": module,
        "ss_network_args": json.dumps(net_args),  # JSON even when empty: readers json.loads it
        "ss_network_train_unet_only": str(not train_te),
        "ss_network_train_text_encoder_only": str(o.unet_lr == 0),
        "ss_optimizer": facts.optimizer,
        "ss_lr_warmup_steps": str(facts.warmup_steps),
        "ss_max_train_steps": str(facts.total_steps),
        "ss_epoch": str(facts.epoch),
        "ss_steps": str(facts.step),
        "ss_num_batches_per_epoch": str(facts.batches_per_epoch),
        "ss_num_train_images": str(facts.num_train_images),
        "ss_num_reg_images": str(facts.num_reg_images),
        "ss_total_batch_size": str(t.batch_size * facts.processes * t.gradient_accumulation_steps),
        "ss_resize_interpolation": RESIZE_INTERPOLATION,
        # kohya writes these three for train_data_dir/reg_data_dir runs ...
        "ss_tag_frequency": json.dumps(facts.tag_frequency),
        "ss_dataset_dirs": json.dumps(facts.dataset_dirs),
        "ss_reg_dataset_dirs": json.dumps(facts.reg_dataset_dirs),
        "ss_bucket_info": json.dumps(facts.bucket_info),
        # ... and this one instead for dataset-config runs: lorafw writes both, so every reader finds its key
        "ss_datasets": _datasets(spec, facts),
        **KOHYA_OFF,
        "ss_num_validation_images": str(facts.num_validation_images),
        **spec_metadata(spec, Written(facts, name, v_pred, ztsnr, flow)),
        **modelspec(spec, facts, name, v_pred, saved_at, flow),
    }
    if facts.init_weights:  # kohya records nothing of its network_weights; a LoRA continued from another says which
        meta[INIT_WEIGHTS] = json.dumps(facts.init_weights, sort_keys=True)
    return {k: str(v) for k, v in meta.items()}
