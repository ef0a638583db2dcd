"""A diffusers folder's own tokenizer is used, and ids outside the text encoder's vocabulary are refused by name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lorafw.errors import ModelError
from lorafw.models.load import load_components
from lorafw.models.tokenizer import clip_tokenizer, clip_tokenizer_dir

SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def _copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _write_vocab(tok_dir: Path, vocab: dict[str, int], merges: list[str]) -> None:
    (tok_dir / "vocab.json").write_text(json.dumps(vocab))
    (tok_dir / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


def _clip_files() -> tuple[dict[str, int], list[str]]:
    vocab = json.loads((clip_tokenizer_dir() / "vocab.json").read_text())
    merges = (clip_tokenizer_dir() / "merges.txt").read_text().splitlines()[1:]
    return vocab, merges


def test_a_diffusers_folders_own_tokenizer_is_used(tiny_diffusers, tmp_path):
    folder = _copy_folder(tiny_diffusers, tmp_path / "own-tokenizer")
    vocab, merges = _clip_files()
    top = len(vocab) - len(SPECIALS)  # the same BPE, the ordinary tokens' ids reversed: every id differs
    _write_vocab(folder / "tokenizer", {t: (i if t in SPECIALS else top - 1 - i) for t, i in vocab.items()}, merges)
    c = load_components(folder)
    caption = "red circle, white background"
    ours = c.tokenizers[0](caption, add_special_tokens=False).input_ids
    bundled = clip_tokenizer()(caption, add_special_tokens=False).input_ids
    assert ours == [top - 1 - i for i in bundled] and ours != bundled
    from lorafw.models.text import encode_sd15, tokenize

    states = encode_sd15(c.text_encoders[0], tokenize(c.tokenizers[0], [caption], 75), clip_skip=1)
    assert states.shape == (1, 77, 32) and torch.isfinite(states).all()


def test_the_bundled_tokenizer_still_serves_folders_without_one(tiny_diffusers, tmp_path):
    folder = _copy_folder(tiny_diffusers, tmp_path / "no-tokenizer")
    shutil.rmtree(folder / "tokenizer")
    assert load_components(folder).tokenizers[0] is clip_tokenizer()


@pytest.fixture(scope="module")
def small_vocab_folder(tmp_path_factory, tiny_parts) -> Path:
    """A tiny diffusers folder whose text encoder embeds 1000 ids, with its own 1000-id tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from lorafw.models.tiny import TINY_CLIP_L, save_diffusers_folder

    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(**(TINY_CLIP_L | {"vocab_size": 1000, "bos_token_id": 998, "eos_token_id": 999})))
    folder = save_diffusers_folder(dict(tiny_parts, text_encoder=te), tmp_path_factory.mktemp("models") / "small-vocab")
    vocab, merges = _clip_files()
    kept = {t: i for t, i in vocab.items() if i < 998}  # 256 bytes, 256 word-final bytes, the first 486 merges
    kept |= {SPECIALS[0]: 998, SPECIALS[1]: 999}
    _write_vocab(folder / "tokenizer", kept, merges[: 998 - 512])
    return folder


def test_a_smaller_vocabulary_trains_with_its_own_tokenizer(small_vocab_folder):
    from lorafw.models.text import encode_sd15, tokenize

    c = load_components(small_vocab_folder)
    ids = tokenize(c.tokenizers[0], ["red circle, white background, a long caption about things"], 150)
    assert int(ids.max()) == 999 and ids.shape == (1, 2, 77)  # every id < 1000 (999: EOS/pad)
    assert encode_sd15(c.text_encoders[0], ids, clip_skip=2).shape == (1, 152, 32)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused_at_load(small_vocab_folder, tmp_path):
    folder = _copy_folder(small_vocab_folder, tmp_path / "lost-tokenizer")
    shutil.rmtree(folder / "tokenizer")  # falls back to the bundled 49408-id CLIP tokenizer
    with pytest.raises(ModelError, match=r"embeds 1000 token ids but its tokenizer \(lorafw's bundled CLIP tokenizer\) "
                                         r"has 49408.*tokenizer/"):
        load_components(folder)


def test_ids_outside_the_vocabulary_are_a_message_not_an_index_error(small_vocab_folder):
    from lorafw.models.text import encode_sd15

    c = load_components(small_vocab_folder)
    ids = torch.full((1, 1, 77), 5, dtype=torch.long)
    ids[0, 0, 3] = 49407
    with pytest.raises(ModelError, match="id 49407, outside the text encoder's vocabulary of 1000 ids"):
        encode_sd15(c.text_encoders[0], ids, clip_skip=1)


def test_a_broken_tokenizer_folder_is_named(tiny_diffusers, tmp_path):
    folder = _copy_folder(tiny_diffusers, tmp_path / "broken-tokenizer")
    (folder / "tokenizer" / "vocab.json").write_text("{not json")
    with pytest.raises(ModelError, match=f"{folder / 'tokenizer'}: cannot load the model's tokenizer"):
        load_components(folder)
