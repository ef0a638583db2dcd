"""Anima's denoiser: diffusers' CosmosTransformer3DModel (the Cosmos-Predict2 DiT) and AnimaTextConditioner (the LLM
adapter) in one module, loaded from the DiT file's original (Cosmos) names, and those names back for the LoRA file.

The file's `net.blocks.N.…` names become diffusers' through diffusers' own Cosmos-2 table
(single_file_utils.convert_cosmos_transformer_checkpoint_to_diffusers); `net.llm_adapter.…` is already
AnimaTextConditioner's layout. The LoRA file names layers the way sd-scripts and ComfyUI do: the original dotted
name with dots → underscores (`lora_unet_blocks_0_self_attn_q_proj`, `lora_unet_llm_adapter_blocks_0_mlp_0`),
which `to_original` gives from the diffusers path.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Callable

import torch

from lorafw.archs.anima.files import ADAPTER, AnimaInfo
from lorafw.errors import ModelError

if TYPE_CHECKING:
    from diffusers import CosmosTransformer3DModel
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner

# diffusers name → Cosmos name, segment-anchored (the inverse of diffusers' Cosmos-2 rename table; a test checks
# that diffusers' converter maps every name this gives back to where it came from)
_TO_ORIGINAL = [(re.compile(p), r) for p, r in (
    (r"^transformer_blocks\.", "blocks."),
    (r"\.norm1\.linear_(\d)", r".adaln_modulation_self_attn.\1"),
    (r"\.norm2\.linear_(\d)", r".adaln_modulation_cross_attn.\1"),
    (r"\.norm3\.linear_(\d)", r".adaln_modulation_mlp.\1"),
    (r"\.attn1\.", ".self_attn."),
    (r"\.attn2\.", ".cross_attn."),
    (r"\.to_q(?=\.|$)", ".q_proj"),
    (r"\.to_k(?=\.|$)", ".k_proj"),
    (r"\.to_v(?=\.|$)", ".v_proj"),
    (r"\.to_out\.0(?=\.|$)", ".output_proj"),
    (r"\.norm_q(?=\.|$)", ".q_norm"),
    (r"\.norm_k(?=\.|$)", ".k_norm"),
    (r"\.ff\.net\.0\.proj(?=\.|$)", ".mlp.layer1"),
    (r"\.ff\.net\.2(?=\.|$)", ".mlp.layer2"),
    (r"^time_embed\.t_embedder\.", "t_embedder.1."),
    (r"^time_embed\.norm(?=\.|$)", "t_embedding_norm"),
    (r"^patch_embed\.proj(?=\.|$)", "x_embedder.proj.1"),
    (r"^norm_out\.linear_(\d)", r"final_layer.adaln_modulation.\1"),
    (r"^proj_out(?=\.|$)", "final_layer.linear"),
)]
# the RoPE tables Cosmos files keep as buffers; diffusers computes them (its converter drops them too)
ROPE_BUFFERS = ("pos_embedder.seq", "pos_embedder.dim_spatial_range", "pos_embedder.dim_temporal_range")
ROPE_SCALE = (1.0, 4.0, 4.0)  # (t, h, w) extrapolation: sd-scripts' and ComfyUI's Anima settings
MAX_FRAMES = 128


def to_original(path: str) -> str:
    """A diffusers CosmosTransformer3DModel name → the Cosmos name (`transformer_blocks.0.attn1.to_q` →
    `blocks.0.self_attn.q_proj`)."""
    for rx, repl in _TO_ORIGINAL:
        path = rx.sub(repl, path)
    return path


def to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DiT's tensors (Cosmos names, no prefix) under diffusers' names, by diffusers' own converter."""
    from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers

    return convert_cosmos_transformer_checkpoint_to_diffusers(dict(state))


def dit_config(info: AnimaInfo) -> dict[str, Any]:
    """CosmosTransformer3DModel's config for the DiT `info` describes.

    The padding-mask channel: Cosmos concatenates a (zero, for images) padding mask to the latents, and diffusers
    resizes the mask with torchvision first, which lorafw does not install. The model is therefore built with
    concat_padding_mask=False and one more input channel, and AnimaDenoiser concatenates the zero channel itself,
    already at latent size: the same patch-embedding input, no resize."""
    return dict(
        in_channels=info.in_channels + 1, out_channels=info.in_channels, num_attention_heads=info.heads,
        attention_head_dim=info.channels // info.heads, num_layers=info.blocks, mlp_ratio=info.mlp_ratio,
        text_embed_dim=info.text_dim, adaln_lora_dim=info.adaln_lora_dim,
        max_size=(MAX_FRAMES, info.rope_positions * info.patch, info.rope_positions * info.patch),
        patch_size=(1, info.patch, info.patch), rope_scale=ROPE_SCALE, concat_padding_mask=False,
        extra_pos_embed_type=None)


def adapter_config(shapes: dict[str, tuple[int, ...]]) -> dict[str, Any]:
    """AnimaTextConditioner's config from the adapter's tensor shapes (no prefix)."""
    try:
        vocab, target = shapes["embed.weight"]
        model_dim = shapes["blocks.0.cross_attn.q_proj.weight"][0]
        source = shapes["blocks.0.cross_attn.k_proj.weight"][1]
        head_dim = shapes["blocks.0.cross_attn.q_norm.weight"][0]
        hidden = shapes["blocks.0.mlp.0.weight"][0]
    except KeyError as e:
        raise ModelError(f"the LLM adapter is incomplete (no llm_adapter.{e.args[0]})") from None
    layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("blocks."))
    return dict(source_dim=source, target_dim=target, model_dim=model_dim, num_layers=layers,
                num_attention_heads=model_dim // head_dim, mlp_ratio=hidden / model_dim, target_vocab_size=vocab,
                use_self_attention="blocks.0.self_attn.q_proj.weight" in shapes,
                use_layer_norm="blocks.0.norm_mlp.bias" in shapes)


class AnimaDenoiser(torch.nn.Module):
    """The LLM adapter then the DiT, in one module, so adapters on either train, checkpoint and compile with it.

    forward(x (B, 16, h, w), t (B,) = σ as the DiT takes it, prompt_embeds (B, 512, 1024) Qwen3 states,
    attn_mask (B, 512), t5_input_ids (B, 512), t5_attn_mask (B, 512)) → the velocity (B, 16, h, w)."""

    _repeated_blocks = ["CosmosTransformerBlock", "AnimaTextConditionerBlock"]  # torch.compile's regions
    dit: CosmosTransformer3DModel
    llm_adapter: AnimaTextConditioner

    def __init__(self, dit: CosmosTransformer3DModel, llm_adapter: AnimaTextConditioner) -> None:
        super().__init__()
        self.dit, self.llm_adapter = dit, llm_adapter
        # the adapter stays frozen for the run (no network.train_llm_adapter): its output, the DiT's context, is a
        # function of the caption alone, so the family's text states are the context itself (cached with the text)
        self.context_is_text = False

    def forward(self, x: torch.Tensor, t: torch.Tensor, prompt_embeds: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, t5_input_ids: torch.Tensor | None = None,
                t5_attn_mask: torch.Tensor | None = None, context: torch.Tensor | None = None) -> torch.Tensor:
        """The velocity, from the Qwen3 states and T5 ids (the adapter runs here), or from `context` (its output,
        computed with the text when the adapter is frozen)."""
        if context is None:
            assert prompt_embeds is not None and attn_mask is not None and t5_input_ids is not None
            assert t5_attn_mask is not None
            context = self.context(prompt_embeds, attn_mask, t5_input_ids, t5_attn_mask)
        return self.velocity(x, t, context)

    def context(self, prompt_embeds: torch.Tensor, attn_mask: torch.Tensor, t5_input_ids: torch.Tensor,
                t5_attn_mask: torch.Tensor) -> torch.Tensor:
        """The DiT's cross-attention context: the T5-id queries attending to the Qwen3 states, zero at the T5
        padding (sd-scripts' Anima._preprocess_text_embeds; diffusers' conditioner multiplies by the mask)."""
        return self.llm_adapter(prompt_embeds, t5_input_ids.long(), target_attention_mask=t5_attn_mask,
                                source_attention_mask=attn_mask)

    def velocity(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The DiT on one frame: the zero padding-mask channel appended (see dit_config), the frame axis added
        and removed."""
        b, _, h, w = x.shape
        x5 = torch.cat([x, x.new_zeros(b, 1, h, w)], dim=1).unsqueeze(2)
        return self.dit(x5, t, context, return_dict=False)[0].squeeze(2)

    # what the trainer asks of a denoiser (trainers/setup.py inject_network)
    def enable_gradient_checkpointing(self) -> None:
        self.dit.enable_gradient_checkpointing()
        self.llm_adapter.enable_gradient_checkpointing()

    def compile_repeated_blocks(self, *args: object, **kwargs: object) -> None:
        """torch.compile each DiT and adapter block in place (diffusers' regional compilation: state-dict keys
        unchanged)."""
        names = set(self._repeated_blocks)
        for m in self.modules():
            if type(m).__name__ in names:
                m.compile(*args, **kwargs)

    def enable_xformers_memory_efficient_attention(self) -> None:
        self.dit.enable_xformers_memory_efficient_attention()
        self.llm_adapter.enable_xformers_memory_efficient_attention()


def build(info: AnimaInfo, dit_state: dict[str, torch.Tensor], adapter_state: dict[str, torch.Tensor],
          where: str) -> AnimaDenoiser:
    """The denoiser with every tensor of the file in place (Cosmos names; the adapter's without `llm_adapter.`);
    a ModelError naming what is missing or left over."""
    from diffusers import CosmosTransformer3DModel
    from diffusers.models.condition_embedders.condition_embedder_anima import AnimaTextConditioner

    from lorafw.logs import quiet

    state = to_diffusers({k: v for k, v in dit_state.items() if k not in ROPE_BUFFERS})
    with quiet("diffusers"), torch.device("meta"):
        dit = CosmosTransformer3DModel(**dit_config(info))
        adapter = AnimaTextConditioner(**adapter_config({k: tuple(v.shape) for k, v in adapter_state.items()}))
    for name, module, sd in (("DiT", dit, state), ("LLM adapter", adapter, adapter_state)):
        missing, unexpected = module.load_state_dict(sd, strict=False, assign=True)
        if missing or unexpected:
            raise ModelError(f"{where}: the {name} does not match an Anima {name} (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}); it is another Cosmos model or a damaged file")
    adapter.rotary_emb = type(adapter.rotary_emb)(adapter.config.model_dim // adapter.config.num_attention_heads)
    # (its inv_freq, a non-persistent buffer, was made on the meta device above)
    # in the file's dtypes, the tensors read from it (no fp32 copy of a 2B model: the trainer casts it once,
    # setup.cast_frozen, to the run's dtype)
    denoiser = AnimaDenoiser(dit, adapter)
    denoiser.requires_grad_(False)
    return denoiser.eval()


def namer(denoiser: torch.nn.Module) -> Callable[[str], str]:
    """AnimaDenoiser module path → the LoRA file's name (sd-scripts' networks/lora_anima.py: `lora_unet_` + the
    Cosmos dotted name with dots → underscores). KeyError for anything outside the DiT and adapter."""

    def name(path: str) -> str:
        if path.startswith("dit."):
            return "lora_unet_" + to_original(path[4:]).replace(".", "_")
        if path.startswith("llm_adapter."):
            return "lora_unet_" + path.replace(".", "_")
        raise KeyError(path)

    return name


def split_file(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A DiT file's tensors → (the DiT's, the adapter's), both without their prefixes."""
    dit, adapter = {}, {}
    head = prefix + ADAPTER
    for k, v in state.items():
        if k.startswith(head):
            adapter[k[len(head):]] = v
        elif k.startswith(prefix):
            dit[k[len(prefix):]] = v
    return dit, adapter
