"""The SD1.5-architecture trainer (NovelAI "animefull" and other SD1.5 finetunes): lorafw/trainers/trainer.py
with SD1.5's conditioning (lorafw/trainers/arch.py: CLIP-L, clip-skipped, as `encoder_hidden_states`)."""

from __future__ import annotations

from lorafw.trainers.arch import SD15
from lorafw.trainers.trainer import Trainer


class SD15Trainer(Trainer):
    architecture = SD15
