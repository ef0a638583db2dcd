"""What a model family is, as the trainer sees it: the `Architecture` protocol and the `Models` it loads.

A family is one package (`lorafw/archs/<name>/`, or any installed package) whose object implements this
protocol and is registered under the `lorafw.architectures` entry-point group (lorafw/archs/__init__.py).
The trainer (lorafw/trainers/) calls only these members; nothing outside a family's package asks which
family it is. The step loop, caches, saving, resume and evaluation are the same for every family.

    recognise   inspect(path) → the checkpoint's description, from its header alone (no weights)
    load        load(spec, info, objective) → Models: denoiser, latent codec, text encoder(s), tokenizers
    condition   encode_text (cacheable: it depends on the caption only) → conditioning (per batch: sizes, flips)
    denoise     denoise(models, x_t, t, cond) → the model's prediction
    objectives  predictions: what the family can be trained to predict (ε, v, flow)
    adapters    targets (which blocks' layers get adapters), te_prefixes, denoiser_namer (file names ↔ layers);
                optionally text_encoder_namer(prefix, te) where the text encoders' file names are not kohya's CLIP
                ones (`lora_te_text_model_…`; Anima's Qwen3: `lora_te_layers_0_…`)
    sample      renderer(...) → an object with render(prompt, sampler) → PIL image (samples, grid)
    kohya       base_model_version / modelspec_architecture / modelspec_implementation (the LoRA file's metadata)
    optional    side_files {base_model key: what}: files it needs besides base_model.path (Anima's text encoder, VAE);
                text_encoder_namer; flow_timestep_scale (the time a flow denoiser takes, × σ);
                bucket_step: BucketStep, what dataset.bucket_reso_steps (and the sides of an image trained without
                buckets) must divide by; without it, 8 (the VAE's)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol

if TYPE_CHECKING:  # a family is listed and its header read without torch (`lorafw plan`)
    import torch

Text = dict[str, "torch.Tensor"]


@dataclass
class Models:
    """A loaded base model, frozen, on the CPU in the file's dtype (or fp32) until the trainer places and casts it
    (trainers/setup.cast_frozen): a 2B model is not copied to fp32 on the way."""

    info: Any  # the family's description of the checkpoint (what inspect returned)
    denoiser: torch.nn.Module  # the UNet or DiT
    vae: Any  # the latent codec: .encode(pixels).latent_dist, .decode(z).sample, .config.scaling_factor
    text_encoders: list[torch.nn.Module]
    tokenizers: list[Any]
    noise_scheduler: Any  # the training schedule (DDPM for ε/v)


@dataclass(frozen=True)
class BucketStep:
    """What a family's bucket sides must be multiples of, and where sd-scripts says so: its trainer script calls
    verify_bucket_reso_steps(multiple), which asserts bucket_reso_steps % multiple == 0 when buckets are on."""

    multiple: int
    kohya_script: str  # e.g. "train_network.py"
    why: str  # e.g. "the VAE's 8x and the UNet's three 2x downsamplings"
    # what the sides of an image trained without buckets (exactly dataset.resolution's W×H) must divide by: 1 for a
    # diffusers UNet, which sizes its upsamplings to any latent (sd-scripts trains "512,650" so); a DiT's patches
    # need whole ones
    exact: int = 1


@dataclass(frozen=True)
class AdapterTargets:
    """Where adapters go, by the class names of the blocks holding the layers (kohya's choice per family):
    Linear and 1×1 layers inside `denoiser`, k×k convolutions (LoCon) inside `denoiser_conv` too, the
    text encoders' layers inside `text_encoder`, and, with network.train_llm_adapter, the layers inside the
    denoiser's `llm_adapter` blocks (Anima's LLM adapter), trained at optimizer.llm_adapter_lr."""

    denoiser: tuple[str, ...]
    denoiser_conv: tuple[str, ...]
    text_encoder: tuple[str, ...]
    llm_adapter: tuple[str, ...] = ()


class Architecture(Protocol):
    name: str  # base_model.arch
    label: str  # what the user reads ("SDXL")
    te_prefixes: tuple[str, ...]  # the LoRA file's text-encoder prefixes, one per encoder ("lora_te1", …)
    predictions: tuple[str, ...]  # the objectives it trains: "epsilon", "v_prediction", "flow"
    targets: AdapterTargets
    base_model_version: str  # kohya's ss_base_model_version
    modelspec_architecture: str
    modelspec_implementation: str

    def inspect(self, path: str) -> Any:
        """The checkpoint's description from its header (or folder configs) only; a ModelError naming what the
        file is when it is not this family."""

    def load(self, spec: Any, info: Any, objective: Any) -> Models:
        """Every part of the base model (with the external VAE / text encoder the spec names), frozen."""

    def encode_text(self, models: Models, captions: list[str], train: Any) -> Text:
        """Text states for `captions`, keyed by name; they depend on the caption only, so they can be cached."""

    def conditioning(self, text: Text, data: Any, batch: list[int], flips: list[bool]) -> dict[str, Any]:
        """The denoiser's keyword arguments for one batch (text states plus what the family adds per image, read
        from `data.images[i]` for i in `batch`: size, placement; when a step crops at random, `data` is the batch's
        items as placed that step, item j as image j, TrainData.placed)."""

    def denoise(self, models: Models, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        """The denoiser's prediction for noisy latents `x_t` at timesteps `t`."""

    def denoiser_namer(self, denoiser: torch.nn.Module) -> Callable[[str], str]:
        """Module path in the denoiser → the layer's name in the LoRA file (what the UIs read)."""

    def renderer(self, models: Models, train: Any, device: torch.device, parking: Any = None) -> Any:
        """A sampler for sample images and the grid: `.render(prompt, sampler) → PIL.Image`."""

