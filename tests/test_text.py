"""Tokenizer data shipped in the package, 75-token chunking up to 225 tokens, clip skip."""

from __future__ import annotations

import pytest
import torch

from lorafw.models.text import CHUNK, chunk_token_ids, encode_sd15, final_layer_norm, merge_windows, tokenize
from lorafw.models.tokenizer import clip_tokenizer

BOS, EOS = 49406, 49407


def test_packaged_tokenizer_is_clip_vit_l():
    tok = clip_tokenizer()
    assert len(tok) == 49408 and (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (BOS, EOS, EOS)
    assert tok("a photo of a cat").input_ids == [BOS, 320, 1125, 539, 320, 2368, EOS]  # CLIP's reference ids


def test_sdxl_second_tokenizer_pads_with_exclamation_mark():
    tok = clip_tokenizer("!")
    assert tok.pad_token_id == 0 and tok("a photo of a cat").input_ids == [BOS, 320, 1125, 539, 320, 2368, EOS]


def test_one_window_for_75_tokens():
    (w,) = chunk_token_ids([1, 2, 3], 75, BOS, EOS, EOS)
    assert len(w) == 77 and w[:5] == [BOS, 1, 2, 3, EOS] and w[5:] == [EOS] * 72


def test_three_windows_for_225_tokens():
    toks = list(range(1, 201))  # 200 tokens: windows hold 75, 75, 50
    ws = chunk_token_ids(toks, 225, BOS, EOS, EOS)
    assert [len(w) for w in ws] == [77, 77, 77]
    assert all(w[0] == BOS for w in ws)
    assert ws[0][1:76] == toks[:75] and ws[1][1:76] == toks[75:150]
    assert ws[2][1:51] == toks[150:] and ws[2][51] == EOS
    assert ws[0][76] == EOS and ws[1][76] == EOS  # windows whose text continues still end in EOS


def test_captions_longer_than_the_limit_are_cut():
    ws = chunk_token_ids(list(range(1, 301)), 225, BOS, EOS, EOS)
    assert [t for w in ws for t in w[1:76]] == list(range(1, 226))


def test_windows_with_a_pad_that_is_not_eos():
    ws = chunk_token_ids([5, 6], 150, BOS, EOS, 0)
    assert ws[0][:4] == [BOS, 5, 6, EOS] and ws[0][4:] == [0] * 73
    assert ws[1][:3] == [BOS, EOS, 0]  # an all-padding window still holds an EOS (kohya's rule)


def test_max_token_length_must_be_a_multiple_of_75():
    with pytest.raises(ValueError):
        chunk_token_ids([1], 100, BOS, EOS, EOS)


def test_merged_positions():
    states = torch.arange(3 * 77, dtype=torch.float32).reshape(1, 231, 1)
    out = merge_windows(states, 3)
    assert out.shape == (1, 2 + 3 * CHUNK, 1)  # 227: first BOS, 3 × 75, last position
    idx = out[0, :, 0].long().tolist()
    assert idx[0] == 0 and idx[1:76] == list(range(1, 76)) and idx[76:151] == list(range(78, 153)) and idx[-1] == 230


def test_encode_shapes_and_clip_skip(tiny_parts):
    te = tiny_parts["text_encoder"]
    tok = clip_tokenizer()
    for n, length in ((75, 77), (150, 152), (225, 227)):
        ids = tokenize(tok, ["1girl, kafka, sunglasses", "solo"], n)
        assert ids.shape == (2, n // 75, 77)
        with torch.no_grad():
            assert encode_sd15(te, ids, 2).shape == (2, length, 32)
    ids = tokenize(tok, ["1girl, kafka"], 75)
    with torch.no_grad():
        out = te(ids[:, 0], output_hidden_states=True)
        assert torch.allclose(encode_sd15(te, ids, 1), out.last_hidden_state, atol=1e-6)
        assert torch.allclose(encode_sd15(te, ids, 2), final_layer_norm(te)(out.hidden_states[-2]), atol=1e-6)
        assert not torch.allclose(encode_sd15(te, ids, 2), encode_sd15(te, ids, 1))


def test_each_window_is_encoded_on_its_own(tiny_parts):
    te = tiny_parts["text_encoder"]
    ids = tokenize(clip_tokenizer(), [", ".join(["long hair"] * 40)], 225)
    with torch.no_grad():
        whole = encode_sd15(te, ids, 2)
        second = final_layer_norm(te)(te(ids[:, 1], output_hidden_states=True).hidden_states[-2])
    assert torch.allclose(whole[:, 76:151], second[:, 1:76], atol=1e-6)
