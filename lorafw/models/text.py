"""Captions → text-encoder states: 75-token chunks, clip skip, the kohya way.

`max_token_length` 150 or 225 splits a caption's tokens into 75-token pieces, each wrapped
as <BOS> + 75 tokens + <EOS/PAD> (77 positions) and encoded separately; the outputs are joined
keeping the first <BOS>, each piece's 75 positions and the last position: 2 + 75·n positions
(227 for 225 tokens — the 3 × 77 = 231 encoder positions less the four inner BOS/EOS), exactly
as kohya sd-scripts trains. With 75 the caption is one ordinary 77-token window.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from lorafw import speed
from lorafw.errors import ModelError

CHUNK = 75  # tokens per piece, without BOS/EOS
WINDOW = CHUNK + 2


def chunk_token_ids(tokens: Sequence[int], max_token_length: int, bos: int, eos: int, pad: int) -> list[list[int]]:
    """Caption token ids (no BOS/EOS) → n windows of 77 ids, n = max_token_length // 75.

    The caption is cut at max_token_length tokens. A window whose text ends inside it gets an
    EOS at its last position; a window that starts with padding gets an EOS first (so every
    window holds an EOS, as the text encoder was trained), matching kohya's handling for pads
    that differ from EOS (SDXL's second tokenizer pads with "!"); with pad == EOS nothing changes.
    """
    if max_token_length % CHUNK:
        raise ValueError(f"max_token_length must be a multiple of {CHUNK}, got {max_token_length}")
    n = max_token_length // CHUNK
    body = list(tokens[:max_token_length])
    seq = [bos] + body + [eos] + [pad] * (max_token_length - len(body))  # max_token_length + 2 ids
    if n == 1:
        return [seq]
    windows = []
    for i in range(n):
        w = [bos] + seq[1 + CHUNK * i : 1 + CHUNK * (i + 1)] + [seq[-1]]
        if w[-2] not in (eos, pad):
            w[-1] = eos
        if w[1] == pad:
            w[1] = eos
        windows.append(w)
    return windows


def tokenize(tokenizer: Any, captions: Sequence[str], max_token_length: int):
    """Captions → LongTensor (batch, n_windows, 77)."""
    import torch

    out = []
    for cap in captions:
        ids = tokenizer(cap, add_special_tokens=False, truncation=False, verbose=False).input_ids
        out.append(
            chunk_token_ids(ids, max_token_length, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        )
    return torch.tensor(out, dtype=torch.long)


def merge_windows(states, n_windows: int):
    """(batch, n·77, dim) encoder outputs → (batch, 2 + 75·n, dim): first BOS, each window's body, last EOS."""
    import torch

    if n_windows == 1:
        return states
    parts = [states[:, :1]]
    for i in range(n_windows):
        start = i * WINDOW + 1
        parts.append(states[:, start : start + CHUNK])
    parts.append(states[:, -1:])
    return torch.cat(parts, dim=1)


def final_layer_norm(text_encoder: Any):
    """CLIPTextModel's final LayerNorm (transformers 5 dropped the `text_model` level; 4 has it)."""
    inner = getattr(text_encoder, "text_model", text_encoder)
    return inner.final_layer_norm


def check_ids(text_encoder: Any, input_ids) -> None:
    """Refuse token ids the text encoder has no embedding for (torch would stop with a bare IndexError)."""
    inner = getattr(text_encoder, "module", text_encoder)  # a DistributedDataParallel wrapper's model
    embeddings = inner.get_input_embeddings() if hasattr(inner, "get_input_embeddings") else None
    rows = getattr(embeddings, "num_embeddings", None)
    if rows is None:
        return
    top = int(input_ids.max()) if input_ids.numel() else 0
    if top >= rows or (input_ids.numel() and int(input_ids.min()) < 0):
        raise ModelError(f"a caption was tokenized to id {top}, outside the text encoder's vocabulary of {rows} ids: "
                         "the tokenizer does not belong to this model; use a diffusers folder with the model's own "
                         "tokenizer/ (lorafw reads it when present)")


RANDOM_ATTRS = ("p_dropout", "p_rank", "p_module", "dropout", "rank_dropout", "module_dropout")


def draws_random_numbers(module: Any) -> bool:
    """Whether running `module` in its current mode draws from torch's random generator: a dropout layer, or an
    adapter with (kohya's or LyCORIS's) dropout, rank or module dropout, in training mode."""
    import torch

    for m in module.modules():
        if not m.training:
            continue
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if any(isinstance(v := getattr(m, a, None), (int, float)) and not isinstance(v, bool) and v > 0
               for a in RANDOM_ATTRS):
            return True
    return False


def install_output_hooks(model: Any) -> None:
    """transformers 5 collects hidden states through forward hooks it installs on the encoder layers at the first
    call that asks for them, and never again: installed while layers are left out, the model would return too few
    hidden states for the rest of its life (a later full forward's hidden_states[-2] is then the wrong layer). So
    they are installed on the whole encoder first. transformers 4 collects them in the encoder's loop: nothing to do."""
    try:
        from transformers.utils.output_capturing import maybe_install_capturing_hooks
    except ImportError:
        return
    if getattr(model, "_can_record_outputs", None):
        maybe_install_capturing_hooks(model)


@contextlib.contextmanager
def layers_up_to(text_encoder: Any, hidden_state: int) -> Iterator[int]:
    """Run only the encoder layers that hidden state `hidden_state` (−1 the last, −2 the penultimate, …) needs;
    yields the index that state then has (−1 when layers were left out). The layers after it cannot change it
    (each layer reads only the one before), so the state is bit for bit what the whole encoder gives; leaving them
    out saves their forward (their backward never runs: nothing downstream reads them). Not when those layers draw
    random numbers (adapter dropouts while training): every later draw of the step (the UNet's adapters') would
    shift, so they run as before."""
    model = getattr(text_encoder, "module", text_encoder)  # a DistributedDataParallel wrapper's model
    inner = getattr(model, "text_model", model)  # transformers 4 has the level, 5 does not
    layers = getattr(getattr(inner, "encoder", None), "layers", None)
    drop = -1 - hidden_state
    if (drop <= 0 or layers is None or drop >= len(layers) or not speed.on("te_layers")
            or any(draws_random_numbers(layer) for layer in layers[len(layers) - drop:])):
        yield hidden_state
        return
    install_output_hooks(model)
    inner.encoder.layers = layers[: len(layers) - drop]
    try:
        yield -1
    finally:
        inner.encoder.layers = layers


def encode_sd15(text_encoder: Any, input_ids, clip_skip: int):
    """(batch, n, 77) ids → (batch, 77 or 2 + 75·n, dim): hidden state −clip_skip, then the final LayerNorm."""
    check_ids(text_encoder, input_ids)
    b, n, w = input_ids.shape
    flat = input_ids.reshape(b * n, w).to(text_encoder.device)
    with layers_up_to(text_encoder, -clip_skip) as index:
        out = text_encoder(flat, output_hidden_states=True, return_dict=True)
    states = final_layer_norm(text_encoder)(out.hidden_states[index])
    states = states.reshape(b, n * w, states.shape[-1])
    return merge_windows(states, n)


def encode_sdxl(te1: Any, te2: Any, ids1, ids2):
    """SDXL's conditioning: (batch, L, 768 + 1280) states and (batch, 1280) pooled embeddings.

    Both encoders' hidden state −2 (CLIP-L's layer 11, bigG's penultimate), no final LayerNorm,
    windows merged as for SD1.5 and concatenated on the channel axis; the pooled projection is
    bigG's, from the first window (as kohya and the SDXL pipeline do).
    """
    import torch

    check_ids(te1, ids1)
    check_ids(te2, ids2)
    b, n, w = ids1.shape
    with layers_up_to(te1, -2) as index:
        h1 = te1(ids1.reshape(b * n, w).to(te1.device), output_hidden_states=True).hidden_states[index]
    out2 = te2(ids2.reshape(b * n, w).to(te2.device), output_hidden_states=True)
    h2 = out2.hidden_states[-2]
    pooled = out2.text_embeds.reshape(b, n, -1)[:, 0]
    h1 = merge_windows(h1.reshape(b, n * w, -1), n)
    h2 = merge_windows(h2.reshape(b, n * w, -1), n)
    return torch.cat([h1, h2], dim=-1), pooled
