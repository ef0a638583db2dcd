"""What differs between the architectures a trainer handles: how captions become UNet conditioning, and how
the LoRA file names the UNet's layers. Everything else (the step math in step.py, the loop, the files) is shared.

- SD1.5: CLIP-L's (chunked, clip-skipped) hidden states as `encoder_hidden_states`; diffusers layer names.
- SDXL (Pony V6 XL, Illustrious, NoobAI): CLIP-L and OpenCLIP bigG (hidden state −2 of each, concatenated)
  plus bigG's pooled projection and each image's size and crop (`time_ids`); original-layout layer names
  (`lora_unet_input_blocks_…`) and `lora_te1_` / `lora_te2_`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from lorafw.placement import to_device

Text = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Arch:
    name: str
    te_prefixes: tuple[str, ...]
    # (tokenizers, text encoders, captions, spec.train) → text states
    encode_text: Callable[[list, list, list[str], Any], Text]
    # (text states, the dataset, the batch's image indices, their flips) → the UNet's keyword arguments
    unet_kwargs: Callable[[Text, Any, list[int], list[bool]], dict[str, Any]]
    # (the UNet, lorafw.network.targets.unet_namer) → how the file names UNet layers
    unet_namer: Callable[[Any, Callable], Any]


def _sd15_text(tokenizers: list, text_encoders: list, captions: list[str], train: Any) -> Text:
    from lorafw.models.text import encode_sd15, tokenize

    ids = tokenize(tokenizers[0], captions, train.max_token_length)
    return {"encoder_hidden_states": encode_sd15(text_encoders[0], ids, train.clip_skip)}


def _sd15_kwargs(text: Text, data: Any, batch: list[int], flips: list[bool]) -> dict[str, Any]:
    return {"encoder_hidden_states": text["encoder_hidden_states"]}


def _sd15_namer(unet: Any, unet_namer: Callable) -> Any:  # SD1.5 files name UNet layers the diffusers way
    return unet_namer(None)


def _sdxl_text(tokenizers: list, text_encoders: list, captions: list[str], train: Any) -> Text:
    from lorafw.models.text import encode_sdxl, tokenize

    n = train.max_token_length
    ids1 = tokenize(tokenizers[0], captions, n)
    ids2 = tokenize(tokenizers[1], captions, n)
    states, pooled = encode_sdxl(text_encoders[0], text_encoders[1], ids1, ids2)
    return {"encoder_hidden_states": states, "text_embeds": pooled}


def _sdxl_kwargs(text: Text, data: Any, batch: list[int], flips: list[bool]) -> dict[str, Any]:
    from lorafw.data.buckets import size_conditioning

    time_ids = to_device(torch.tensor(
        [size_conditioning(data.images[i].entry.size, data.images[i].placement, f) for i, f in zip(batch, flips)],
        dtype=text["text_embeds"].dtype), text["text_embeds"].device)
    return {
        "encoder_hidden_states": text["encoder_hidden_states"],
        "added_cond_kwargs": {"text_embeds": text["text_embeds"], "time_ids": time_ids},
    }


def _sdxl_namer(unet: Any, unet_namer: Callable) -> Any:
    from lorafw.models.ldm_layout import UNetLayout, unet_to_original

    layout = UNetLayout.from_config(dict(unet.config))
    return unet_namer(lambda path: unet_to_original(path, layout))


SD15 = Arch("sd15", ("lora_te",), _sd15_text, _sd15_kwargs, _sd15_namer)
SDXL = Arch("sdxl", ("lora_te1", "lora_te2"), _sdxl_text, _sdxl_kwargs, _sdxl_namer)
