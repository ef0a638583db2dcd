"""lorafw: declarative LoRA / LoCon / DoRA training for SD1.5, SDXL (Pony, Illustrious, NoobAI) and Anima models.

From Python (e.g. a Colab notebook):

    import lorafw
    spec = lorafw.compose("sd15_character", ["base_model.path=/models/animefull.safetensors",
                                             "dataset.root=/data/hsr_kafka"])
    spec = lorafw.override(spec, "train.epochs=8", "network.dim=32")
    result = lorafw.train(spec)
    result.lora_files, result.loss_history

Importing lorafw imports no torch; training does.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["compose", "load_spec", "override", "train", "RunSpec", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: `import lorafw` stays fast
    if name in ("compose", "load_spec"):
        from lorafw.config import compose as _c

        return getattr(_c, name)
    if name == "override":  # a new, re-validated spec with key=value overrides applied
        from lorafw.config.compose import override

        return override
    if name == "train":
        from lorafw.run import train

        return train
    if name == "RunSpec":
        from lorafw.config.spec import RunSpec

        return RunSpec
    raise AttributeError(name)
