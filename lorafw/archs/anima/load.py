"""Anima's parts from the spec's files: the DiT (and its LLM adapter, or base_model.llm_adapter's), Qwen3 from
base_model.text_encoder, the Qwen-Image VAE from base_model.vae, the tokenizers, the flow schedule. Every file's
role is checked before its weights are read (files.check_role)."""

from __future__ import annotations

from pathlib import Path

import torch

from lorafw.archs.anima import dit as dit_mod
from lorafw.archs.anima.codec import load_vae
from lorafw.archs.anima.files import ADAPTER, DIT_PREFIXES, SIDE_FILES, AnimaInfo, check_role, role
from lorafw.archs.anima.text import load_qwen3, tokenizers
from lorafw.archs.protocol import Models
from lorafw.config.spec import BaseModelSpec, RunSpec
from lorafw.errors import ConfigError, ModelError
from lorafw.models.header import read_header
from lorafw.paths import expand


def missing_files(bm: BaseModelSpec, info: AnimaInfo) -> list[str]:
    """The spec's problems: the files Anima needs that base_model does not name."""
    out = [f"base_model.{key}: Anima needs {what}; pass base_model.{key}=PATH"
           for key, what in SIDE_FILES.items() if not getattr(bm, key)]
    if not info.adapter and not bm.llm_adapter:
        out.append(f"base_model.llm_adapter: base_model.path={bm.path} is a DiT without the LLM adapter "
                   "(no net.llm_adapter.* tensors); give Anima's DiT file, or the adapter's weights here")
    return out


def load(spec: RunSpec, info: AnimaInfo) -> Models:
    from diffusers import FlowMatchEulerDiscreteScheduler
    from safetensors.torch import load_file

    bm = spec.base_model
    problems = missing_files(bm, info)
    if problems:
        raise ConfigError(problems)
    assert bm.text_encoder is not None and bm.vae is not None
    path = expand(bm.path)
    check_role(path, "dit", "base_model.path")
    dit_state, adapter_state = dit_mod.split_file(load_file(str(path)), info.prefix)
    if bm.llm_adapter:
        adapter_state = read_adapter(expand(bm.llm_adapter))
    denoiser = dit_mod.build(info, dit_state, adapter_state, str(path))
    network = getattr(spec, "network", None)  # (a spec with no network section: a bare load, the states as they are)
    denoiser.context_is_text = network is not None and not network.train_llm_adapter  # frozen adapter: see encode_text
    del dit_state, adapter_state
    text_encoder, own_tokenizer = load_qwen3(expand(bm.text_encoder))
    qwen_tok, t5_tok = tokenizers()
    if own_tokenizer is not None:  # a Qwen3 folder's own tokenizer, as sd-scripts reads it
        qwen_tok = own_tokenizer
    rows = text_encoder.get_input_embeddings().num_embeddings
    if len(qwen_tok) > rows:
        raise ModelError(f"base_model.text_encoder={bm.text_encoder} embeds {rows} token ids but Qwen3's tokenizer has "
                         f"{len(qwen_tok)}: it is not Qwen3-0.6B")
    if denoiser.llm_adapter.embed.num_embeddings < len(t5_tok):
        raise ModelError(f"the LLM adapter embeds {denoiser.llm_adapter.embed.num_embeddings} T5 ids but T5's "
                         f"tokenizer has {len(t5_tok)}: it is not Anima's adapter")
    codec = load_vae(expand(bm.vae))
    # sd-scripts' training schedule (get_noise_scheduler); lorafw's flow objective draws σ itself
    schedule = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=spec.train.discrete_flow_shift)
    return Models(info, denoiser, codec, [text_encoder], [qwen_tok, t5_tok], schedule)


def read_adapter(path: Path) -> dict[str, torch.Tensor]:
    """base_model.llm_adapter's tensors without their prefix: the adapter alone (`llm_adapter.…`, `net.llm_adapter.…`
    or bare `blocks.N.…`), or another Anima DiT file's adapter."""
    from safetensors.torch import load_file

    key = "base_model.llm_adapter"
    if path.is_file() and path.suffix == ".safetensors" and role(read_header(path)) == "dit":
        header = read_header(path)
        state = load_file(str(path))
        prefix = next(p for p in DIT_PREFIXES if f"{p}x_embedder.proj.1.weight" in header.tensors)
        _, adapter = dit_mod.split_file(state, prefix)
        if not adapter:
            raise ModelError(f"{key}={path} is a DiT without the LLM adapter; give the adapter's weights")
        return adapter
    check_role(path, "llm_adapter", key)
    state = load_file(str(path))
    for p in (*(d + ADAPTER for d in DIT_PREFIXES if d), ADAPTER, ""):
        if f"{p}blocks.0.cross_attn.q_proj.weight" in state:
            return {k[len(p):]: v for k, v in state.items() if k.startswith(p)}
    raise ModelError(f"{key}={path}: no LLM adapter blocks in it")
