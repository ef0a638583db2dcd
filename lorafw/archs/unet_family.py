"""What SD1.5 and SDXL share: the original-layout (LDM) checkpoint read by lorafw/models/ (detect, load), a
diffusers UNet2DConditionModel called with `encoder_hidden_states`, a DDPM schedule (ε or v), kohya's adapter
targets, and a diffusers pipeline for samples. Each family's package (archs/sd15, archs/sdxl) adds its text
conditioning and its file names."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import torch

from lorafw.archs.protocol import AdapterTargets, Models, Text
from lorafw.models.load import check_arch, inspect_base_model, load_components
from lorafw.network.targets import TE_CONTAINERS, UNET_ATTN_CONTAINERS, UNET_CONV_CONTAINERS, unet_namer
from lorafw.paths import expand


class UNetFamily:
    name = ""
    label = ""
    te_prefixes: tuple[str, ...] = ()
    predictions = ("epsilon", "v_prediction", "flow")  # flow: rectified-flow SDXL checkpoints (docs/models.md)
    flow_timestep_scale = 1000.0  # a flow UNet is called at t = σ·1000, as those checkpoints were trained
    targets = AdapterTargets(UNET_ATTN_CONTAINERS, UNET_CONV_CONTAINERS, TE_CONTAINERS)
    base_model_version = ""
    modelspec_architecture = ""
    modelspec_implementation = ""

    def inspect(self, path: str) -> Any:
        info = inspect_base_model(expand(path))
        check_arch(info, self.name, path)  # another family's checkpoint: named, with the recipe that trains it
        return info

    def load(self, spec: Any, info: Any, objective: Any) -> Models:
        bm = spec.base_model
        c = load_components(expand(bm.path), expand(bm.vae) if bm.vae else None, expected_arch=self.name,
                            objective=objective)
        return Models(c.info, c.unet, c.vae, c.text_encoders, c.tokenizers, c.noise_scheduler)

    def encode_text(self, models: Models, captions: list[str], train: Any) -> Text:
        raise NotImplementedError

    def conditioning(self, text: Text, data: Any, batch: list[int], flips: list[bool]) -> dict[str, Any]:
        return {"encoder_hidden_states": text["encoder_hidden_states"]}

    def denoise(self, models: Models, x_t: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
        return models.denoiser(x_t, t, **cond).sample

    def denoiser_namer(self, denoiser: torch.nn.Module) -> Callable[[str], str]:
        return unet_namer(None)

    def renderer(self, models: Models, train: Any, device: torch.device, parking: Any = None) -> Any:
        from lorafw.sampling.render import Renderer  # heavy: diffusers' pipelines, only when sampling

        return Renderer(self.name, models.denoiser, models.vae, models.text_encoders, models.tokenizers,
                        models.noise_scheduler, train.max_token_length, train.clip_skip, device, parking=parking)
