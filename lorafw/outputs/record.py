"""The run record in every output folder: what ran, on what, with which libraries, and how it ended.

`config.yaml` is the resolved spec (`lorafw rerun RUN_DIR` runs it again as is); `run.json`
holds versions, device, the dataset's fingerprint, times and the final figures.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from lorafw.config.spec import RunSpec
from lorafw.outputs.atomic import atomic_write
from lorafw.run_folder import CONFIG, RECORD

LIBRARIES = ("lorafw", "torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "bitsandbytes",
             "prodigyopt", "came-pytorch", "lycoris-lora", "hydra-core", "omegaconf")


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            continue
    return out


def device_info(device: Any) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"device": str(device), "torch_threads": torch.get_num_threads()}
    if getattr(device, "type", "") == "cuda":
        idx = device.index or 0
        props = torch.cuda.get_device_properties(idx)
        info.update(name=props.name, memory_gb=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}")
    else:
        info["name"] = platform.processor() or platform.machine()
    return info


def write_config(run_dir: Path, spec: RunSpec) -> Path:
    from omegaconf import OmegaConf

    header = "# lorafw resolved run config: `lorafw rerun <this folder>` trains it again\n"
    return atomic_write(run_dir / CONFIG, header + OmegaConf.to_yaml(spec.to_dict()))


def write_record(run_dir: Path, record: dict[str, Any]) -> Path:
    return atomic_write(run_dir / RECORD, json.dumps(record, indent=2, default=str) + "\n")


def read_record(run_dir: Path) -> dict[str, Any] | None:
    p = Path(run_dir) / RECORD
    if not p.is_file():
        return None
    return json.loads(p.read_text())


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
