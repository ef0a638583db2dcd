"""SDXL (Pony Diffusion V6 XL, Illustrious XL, NoobAI-XL): CLIP-L and OpenCLIP bigG (hidden state −2 of each,
concatenated) plus bigG's pooled projection and each image's size and crop (`time_ids`); the LoRA file names UNet
layers in the original layout (`lora_unet_input_blocks_4_1_…`) and the encoders `lora_te1_` / `lora_te2_`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

from lorafw.archs.protocol import BucketStep, Models, Text
from lorafw.archs.unet_family import UNetFamily
from lorafw.data.buckets import size_conditioning
from lorafw.models.ldm_layout import UNetLayout, unet_to_original
from lorafw.models.text import encode_sdxl, tokenize
from lorafw.network.targets import unet_namer


class SDXL(UNetFamily):
    name = "sdxl"
    label = "SDXL"
    te_prefixes = ("lora_te1", "lora_te2")
    base_model_version = "sdxl_base_v1-0"
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    modelspec_implementation = "https://github.com/Stability-AI/generative-models"
    bucket_step = BucketStep(32, "sdxl_train_network.py", "the VAE's 8x and the UNet's two 2x downsamplings")

    def encode_text(self, models: Models, captions: list[str], train: Any) -> Text:
        n = train.max_token_length
        ids1 = tokenize(models.tokenizers[0], captions, n)
        ids2 = tokenize(models.tokenizers[1], captions, n)
        states, pooled = encode_sdxl(models.text_encoders[0], models.text_encoders[1], ids1, ids2)
        return {"encoder_hidden_states": states, "text_embeds": pooled}

    def conditioning(self, text: Text, data: Any, batch: list[int], flips: list[bool]) -> dict[str, Any]:
        embeds = text["text_embeds"]
        sizes = [size_conditioning(data.images[i].entry.size, data.images[i].placement, f) for i, f in zip(batch, flips)]
        import torch

        time_ids = torch.tensor(sizes, dtype=embeds.dtype).to(embeds.device, non_blocking=embeds.device.type == "cuda")
        return {"encoder_hidden_states": text["encoder_hidden_states"],
                "added_cond_kwargs": {"text_embeds": embeds, "time_ids": time_ids}}

    def denoiser_namer(self, denoiser: torch.nn.Module) -> Callable[[str], str]:
        layout = UNetLayout.from_config(dict(denoiser.config))  # type: ignore[arg-type]
        return unet_namer(lambda path: unet_to_original(path, layout))


ARCH = SDXL()
