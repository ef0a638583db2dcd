"""Anima's text side: the Qwen3-0.6B encoder (ComfyUI's single file, or a transformers folder), its tokenizer and
T5's, and the text states a caption gives (sd-scripts' strategy_anima).

A caption is tokenized twice: by Qwen3's tokenizer, padded to 512 and encoded (the final hidden states, zero at
the padding), and by T5's, whose ids (not encoded by any T5) are the LLM adapter's queries. All four tensors
depend on the caption only, so they are what the text cache holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from lorafw.archs.anima.files import check_role, qwen3_prefix
from lorafw.errors import ModelError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, Qwen3Config, Qwen3Model

QWEN3_TOKENS = 512  # sd-scripts' --qwen3_max_token_length default
T5_TOKENS = 512  # --t5_max_token_length


def tokenizers() -> tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase]:
    """(Qwen3's tokenizer, T5's), as lorafw ships them (lorafw/models/tokenizer.py)."""
    from lorafw.models.tokenizer import qwen3_tokenizer, t5_tokenizer

    return qwen3_tokenizer(), t5_tokenizer()


def qwen3_config(shapes: dict[str, tuple[int, ...]], prefix: str) -> Qwen3Config:
    """Qwen3Config from the encoder's tensor shapes; the rest is Qwen3-0.6B's (RoPE θ 10⁶, RMS ε 10⁻⁶, tied
    embeddings)."""
    from transformers import Qwen3Config

    p = prefix + "layers.0."
    vocab, hidden = shapes[prefix + "embed_tokens.weight"]
    head_dim = shapes[p + "self_attn.q_norm.weight"][0]
    layers = 1 + max(int(k[len(prefix):].split(".")[1]) for k in shapes if k.startswith(prefix + "layers."))
    return Qwen3Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=shapes[p + "mlp.gate_proj.weight"][0],
        num_hidden_layers=layers, num_attention_heads=shapes[p + "self_attn.q_proj.weight"][0] // head_dim,
        num_key_value_heads=shapes[p + "self_attn.k_proj.weight"][0] // head_dim, head_dim=head_dim,
        max_position_embeddings=32768, rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
        attention_bias=f"{p}self_attn.q_proj.bias" in shapes, use_cache=False)


def load_qwen3(path: Path) -> tuple[Qwen3Model, PreTrainedTokenizerBase | None]:
    """The Qwen3 encoder (a transformers Qwen3Model, fp32, frozen) and the folder's own tokenizer (None for a single
    file: the packaged one is Qwen3-0.6B's)."""
    from transformers import Qwen3Model

    key = "base_model.text_encoder"
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{key}={path} is a folder without config.json; give the Qwen3-0.6B folder "
                             "(config.json and model.safetensors) or ComfyUI's qwen_3_06b_base.safetensors")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(path), torch_dtype=torch.float32, local_files_only=True)
        model = getattr(model, "model", model)
        tok = None
        if any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    else:
        from safetensors.torch import load_file

        header = check_role(path, "text_encoder", key)
        shapes = header.shapes()
        prefix = qwen3_prefix(shapes)
        assert prefix is not None
        with torch.device("meta"):
            model = Qwen3Model(qwen3_config(shapes, prefix))
        state = {k[len(prefix):]: v for k, v in load_file(str(path)).items() if k.startswith(prefix)}
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if missing or unexpected:
            raise ModelError(f"{key}={path}: not a Qwen3 model this loader knows (missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]})")
        model.rotary_emb = type(model.rotary_emb)(config=model.config)  # its buffers were made on the meta device
        tok = None
    model.config.use_cache = False  # in the file's dtype: the trainer casts it (setup.cast_frozen)
    model.requires_grad_(False)
    return model.eval(), tok


def encode(te: torch.nn.Module, qwen_tok: PreTrainedTokenizerBase, t5_tok: PreTrainedTokenizerBase,
           captions: list[str]) -> dict[str, torch.Tensor]:
    """sd-scripts' AnimaTokenizeStrategy + AnimaTextEncodingStrategy: Qwen3's final hidden states (B, 512, hidden)
    zero at the padding, its mask, and the T5 ids and mask (B, 512) the adapter's queries are."""
    device = next(te.parameters()).device
    q = qwen_tok(captions, return_tensors="pt", truncation=True, padding="max_length", max_length=QWEN3_TOKENS)
    t5 = t5_tok(captions, return_tensors="pt", truncation=True, padding="max_length", max_length=T5_TOKENS)
    mask = q["attention_mask"].to(device)
    states = te(input_ids=q["input_ids"].to(device), attention_mask=mask).last_hidden_state
    states = states.masked_fill(~mask.bool().unsqueeze(-1), 0)
    return {"prompt_embeds": states, "attn_mask": mask, "t5_input_ids": t5["input_ids"].to(device),
            "t5_attn_mask": t5["attention_mask"].to(device)}
