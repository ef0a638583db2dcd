"""The SDXL-architecture trainer (Pony Diffusion V6 XL, Illustrious XL, NoobAI-XL): lorafw/trainers/trainer.py
with SDXL's conditioning and key names (lorafw/trainers/arch.py: two text encoders plus pooled states and
`time_ids`; `lora_unet_input_blocks_…`, `lora_te1_` / `lora_te2_`)."""

from __future__ import annotations

from lorafw.trainers.arch import SDXL
from lorafw.trainers.trainer import Trainer


class SDXLTrainer(Trainer):
    architecture = SDXL
