"""Anima (CircleStone Labs / Comfy Org): NVIDIA's Cosmos-Predict2-2B DiT with an LLM adapter, Qwen3-0.6B as text
encoder, the Qwen-Image VAE (16 channels, 8×), rectified flow. Trained as sd-scripts' anima_train_network.py does,
from ComfyUI's split files: base_model.path the DiT (adapter inside), base_model.text_encoder Qwen3,
base_model.vae the VAE.

    files.py     which file is which (header only), the DiT's description
    dit.py       the denoiser (LLM adapter + DiT in one module), the file's Cosmos names ↔ diffusers'
    text.py      Qwen3, the Qwen3 and T5 tokenizers, the text states of a caption
    codec.py     the Qwen-Image VAE as an image codec with normalised latents
    sampling.py  the flow Euler sampler for samples and the grid
    tiny.py      the three files with random weights (tests, benchmark)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from lorafw.archs.anima import files
from lorafw.archs.protocol import AdapterTargets, BucketStep, Models, Text
from lorafw.config.prediction import Resolved
from lorafw.config.spec import RunSpec, TrainSpec
from lorafw.network.targets import kohya_name

if TYPE_CHECKING:
    import torch

    from lorafw.archs.anima.sampling import FlowRenderer
    from lorafw.placement import Parking

# sd-scripts' networks/lora_anima.py: the q, k, v, output projections of self- and cross-attention and the two MLP
# layers of each DiT block (in diffusers' CosmosTransformerBlock: the Attention and FeedForward modules; the AdaLN
# modulation, embedders and final layer are left out, as sd-scripts' default exclude pattern does); with
# network.train_llm_adapter the adapter's blocks; Qwen3's attention and MLP
QWEN3_CONTAINERS = ("Qwen3Attention", "Qwen3MLP")  # sd-scripts' TEXT_ENCODER_TARGET_REPLACE_MODULE
TARGETS = AdapterTargets(denoiser=("Attention", "FeedForward"), denoiser_conv=(), text_encoder=QWEN3_CONTAINERS,
                         llm_adapter=("AnimaTextConditionerBlock",))


class Anima:
    name = "anima"
    label = "Anima"
    te_prefixes: tuple[str, ...] = ("lora_te",)
    predictions: tuple[str, ...] = ("flow",)
    flow_timestep_scale = 1.0  # the DiT takes σ itself (sd-scripts feeds timesteps / 1000)
    targets = TARGETS
    side_files = files.SIDE_FILES  # config validation asks for them before any load
    # what sd-scripts writes: ss_base_model_version from AnimaNetworkTrainer.load_target_model, the modelspec from
    # get_sai_model_spec_dataclass(..., anima="preview") (library/sai_model_spec.py)
    base_model_version = "anima"
    modelspec_architecture = "anima-preview/lora"
    modelspec_implementation = "https://huggingface.co/circlestone-labs/Anima"
    bucket_step = BucketStep(16, "anima_train_network.py", "the VAE's 8x and the DiT's 2x2 patches", exact=16)

    def inspect(self, path: str) -> files.AnimaInfo:
        from lorafw.paths import expand

        return files.inspect(expand(path))

    def load(self, spec: RunSpec, info: files.AnimaInfo, objective: Resolved | None) -> Models:
        from lorafw.archs.anima.load import load

        return load(spec, info)

    def encode_text(self, models: Models, captions: list[str], train: TrainSpec | None) -> Text:
        """sd-scripts' text states (Qwen3's, T5 ids); with the LLM adapter frozen for the run, its output instead
        (the DiT's context: what the adapter would compute from them at every step, computed once per caption
        when the text is cached). The adapter joins the text encoder's device and dtype for it (the trainer has
        cast the encoder to the run's; it casts the whole denoiser the same way next)."""
        from lorafw.archs.anima.dit import AnimaDenoiser
        from lorafw.archs.anima.text import encode

        states = encode(models.text_encoders[0], models.tokenizers[0], models.tokenizers[1], captions)
        denoiser = models.denoiser
        if not (isinstance(denoiser, AnimaDenoiser) and denoiser.context_is_text):
            return states
        te = next(models.text_encoders[0].parameters())
        denoiser.llm_adapter.to(te.device, te.dtype)
        return {"context": denoiser.context(states["prompt_embeds"], states["attn_mask"], states["t5_input_ids"],
                                            states["t5_attn_mask"])}

    def conditioning(self, text: Text, data: object, batch: list[int], flips: list[bool]) -> dict[str, torch.Tensor]:
        """The text states as the denoiser takes them; ids and masks stay integer (a cache or a cast may have made
        them floating: T5 ids above 256 are not exact in bf16, so callers must not cast them). A frozen adapter's
        output (see encode_text) is the context itself."""
        if "context" in text:
            return {"context": text["context"]}
        return {"prompt_embeds": text["prompt_embeds"], "attn_mask": text["attn_mask"],
                "t5_input_ids": text["t5_input_ids"].long(), "t5_attn_mask": text["t5_attn_mask"]}

    def denoise(self, models: Models, x_t: torch.Tensor, t: torch.Tensor,
                cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The velocity at σ = `t` (B,). The DiT takes σ as sd-scripts' trainer feeds it: σ·1000 rounded to the
        weight dtype, then / 1000 (anima_train_network.get_noise_pred_and_target)."""
        dtype = next(models.denoiser.parameters()).dtype
        t = (t * 1000).to(dtype) / 1000.0
        return models.denoiser(x_t, t, **cond)

    def denoiser_namer(self, denoiser: torch.nn.Module) -> Callable[[str], str]:
        from lorafw.archs.anima.dit import namer

        return namer(denoiser)

    def text_encoder_namer(self, prefix: str, text_encoder: torch.nn.Module) -> Callable[[str], str]:
        """Qwen3's layers as sd-scripts names them: `lora_te_layers_0_mlp_gate_proj` (no `text_model.` level)."""
        return lambda path: kohya_name(prefix, path)

    def renderer(self, models: Models, train: TrainSpec | None, device: torch.device,
                 parking: Parking | None = None) -> FlowRenderer:
        from lorafw.archs.anima.sampling import FlowRenderer

        return FlowRenderer(self, models, train, device, parking)


ARCH = Anima()
