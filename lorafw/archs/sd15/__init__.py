"""SD1.5 (NovelAI "animefull" and its finetunes): CLIP-L's chunked, clip-skipped hidden states as the UNet's
`encoder_hidden_states`; the LoRA file names UNet layers the diffusers way (`lora_unet_down_blocks_0_…`) and the
text encoder `lora_te_text_model_…`."""

from __future__ import annotations

from typing import Any

from lorafw.archs.protocol import BucketStep, Models, Text
from lorafw.archs.unet_family import UNetFamily
from lorafw.models.text import encode_sd15, tokenize


class SD15(UNetFamily):
    name = "sd15"
    label = "SD1.5"
    te_prefixes = ("lora_te",)
    base_model_version = "sd_v1"
    modelspec_architecture = "stable-diffusion-v1/lora"
    modelspec_implementation = "diffusers"
    bucket_step = BucketStep(64, "train_network.py", "the VAE's 8x and the UNet's three 2x downsamplings")

    def encode_text(self, models: Models, captions: list[str], train: Any) -> Text:
        ids = tokenize(models.tokenizers[0], captions, train.max_token_length)
        return {"encoder_hidden_states": encode_sd15(models.text_encoders[0], ids, train.clip_skip)}


ARCH = SD15()
