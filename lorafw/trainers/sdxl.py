"""The SDXL-architecture trainer (Pony Diffusion V6 XL and other SDXL finetunes).

Everything is the SD1.5 trainer's (read lorafw/trainers/sd15.py top to bottom) except what SDXL
conditions on: two text encoders (CLIP-L and OpenCLIP bigG, hidden state −2 of each, concatenated,
plus bigG's pooled projection) and each image's size and crop (`time_ids`), and the file's key names
(`lora_unet_input_blocks_…` in the original layout, `lora_te1_` / `lora_te2_`).
"""

from __future__ import annotations

from typing import Any

import torch

from lorafw.data.buckets import size_conditioning
from lorafw.trainers.common import to_device
from lorafw.trainers.sd15 import SD15Trainer


class SDXLTrainer(SD15Trainer):
    arch = "sdxl"
    te_prefixes = ["lora_te1", "lora_te2"]

    def _unet_namer(self, unet_namer):
        from lorafw.models.ldm_layout import UNetLayout, unet_to_original

        layout = UNetLayout.from_config(dict(self.unet.config))
        return unet_namer(lambda path: unet_to_original(path, layout))

    def _encode_text(self, captions: list[str]) -> dict[str, torch.Tensor]:
        from lorafw.models.text import encode_sdxl, tokenize

        n = self.spec.train.max_token_length
        ids1 = tokenize(self.tokenizers[0], captions, n)
        ids2 = tokenize(self.tokenizers[1], captions, n)
        states, pooled = encode_sdxl(self.text_encoders[0], self.text_encoders[1], ids1, ids2)
        return {"encoder_hidden_states": states, "text_embeds": pooled}

    def _unet_kwargs(self, text: dict[str, torch.Tensor], batch: list[int], flips: list[bool], data: Any) -> dict[str, Any]:
        time_ids = to_device(torch.tensor(
            [size_conditioning(data.images[i].entry.size, data.images[i].placement, f) for i, f in zip(batch, flips)],
            dtype=text["text_embeds"].dtype), text["text_embeds"].device)
        return {
            "encoder_hidden_states": text["encoder_hidden_states"],
            "added_cond_kwargs": {"text_embeds": text["text_embeds"], "time_ids": time_ids},
        }
