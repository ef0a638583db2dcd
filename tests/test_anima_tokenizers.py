"""Anima's bundled tokenizers give the ids sd-scripts' Anima trainer gives.

Every expected id below was produced by sd-scripts' own loaders on its configs/qwen3_06b/ and configs/t5_old/ files
(AutoTokenizer on the folder; T5TokenizerFast(vocab_file=spiece.model, tokenizer_file=tokenizer.json)), identical
under transformers 4.54.1 (sd-scripts' pin) and 5.25; the bundled files matched those on 3000 more random captions.
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

import pytest

from lorafw.models.tokenizer import anima_tokenizer_dir, qwen3_tokenizer, t5_tokenizer

CAPTIONS = [
    "1girl, solo, long_hair, looking_at_viewer, smile, blue_eyes, (masterpiece:1.2), best quality",
    "hatsune_miku, \\(cosplay\\), saber_(fate), :d, ^_^",
    "初音ミク、ツインテール",
    "cat girl 🐱✨, pink hair",
    "  double  spaces\tand\nnewlines  ",
    "<|im_start|>user</s><think>",  # each tokenizer's own special tokens are parsed as such, as in sd-scripts
]
QWEN3_IDS = [
    [16, 28552, 11, 13529, 11, 1293, 1523, 1310, 11, 3330, 3752, 80344, 11, 15289, 11, 6303, 62, 57231, 11, 320,
     13629, 22362, 25, 16, 13, 17, 701, 1850, 4271],
    [71, 1862, 2886, 717, 38242, 11, 17767, 9407, 1363, 59, 701, 41004, 8361, 69, 349, 701, 549, 67, 11, 6306, 67280],
    [84607, 78685, 124486, 28120, 5373, 124788, 75071, 56833, 63078],
    [4616, 3743, 11162, 238, 109, 144232, 11, 18217, 6869],
    [220, 1990, 220, 12621, 52477, 198, 931, 7969, 256],
    [151644, 872, 522, 82, 29, 151667],
]
T5_IDS = [
    [209, 18722, 6, 6729, 6, 307, 834, 19176, 6, 479, 834, 144, 834, 4576, 49, 6, 3993, 6, 1692, 834, 13370, 7, 6,
     41, 7429, 8424, 10, 10917, 201, 200, 463, 1],
    [3, 547, 7, 444, 834, 20068, 76, 6, 3, 2, 599, 509, 7, 4895, 2, 201, 3, 7, 9, 1152, 834, 599, 89, 342, 201, 3, 10,
     26, 6, 3, 2, 834, 2, 1],
    [3, 2, 1],  # T5's vocabulary has no kana/kanji: <unk>
    [1712, 3202, 3, 2, 6, 5571, 1268, 1],
    [1486, 4856, 11, 126, 6972, 1],
    [3, 2, 9175, 603, 834, 10208, 9175, 3155, 10041, 1, 3, 2, 10337, 3155, 1],
]
LONG = ", ".join(f"tag_{i}_(series), very long_hair, looking at viewer" for i in range(120))  # ~1900 Qwen tokens


def sd_scripts_call(tok, captions: list[str]):
    """AnimaTokenizeStrategy.tokenize's call, for both tokenizers."""
    return tok(captions, truncation=True, padding="max_length", max_length=512)


@pytest.mark.parametrize("i", range(len(CAPTIONS)))
def test_qwen3_ids_are_sd_scripts_ids(i):
    assert qwen3_tokenizer()(CAPTIONS[i])["input_ids"] == QWEN3_IDS[i]  # no BOS/EOS added


@pytest.mark.parametrize("i", range(len(CAPTIONS)))
def test_t5_ids_are_sd_scripts_ids(i):
    assert t5_tokenizer()(CAPTIONS[i])["input_ids"] == T5_IDS[i]  # </s> (1) appended


def test_vocabularies_and_special_ids():
    q, t = qwen3_tokenizer(), t5_tokenizer()
    assert (q.vocab_size, len(q)) == (151643, 151669)  # Qwen3-0.6B's embedding has 151936 rows
    assert q.pad_token_id == q.eos_token_id == 151643 and q.bos_token_id is None
    assert q.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]) == [
        151643, 151644, 151645, 151667, 151668]
    assert (t.vocab_size, len(t)) == (32100, 32100)  # T5's embedding has 32128 rows
    assert (t.pad_token_id, t.eos_token_id, t.unk_token_id) == (0, 1, 2)
    assert t.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [32099, 32000]
    assert q.padding_side == t.padding_side == "right"


def test_padding_to_512_and_the_empty_caption():
    q = sd_scripts_call(qwen3_tokenizer(), [CAPTIONS[3], ""])
    assert q["input_ids"][0] == QWEN3_IDS[3] + [151643] * (512 - 9) and q["attention_mask"][0] == [1] * 9 + [0] * 503
    assert q["input_ids"][1] == [151643] * 512 and q["attention_mask"][1] == [0] * 512  # sd-scripts zeroes its embeds
    t = sd_scripts_call(t5_tokenizer(), [CAPTIONS[3], ""])
    assert t["input_ids"][0] == T5_IDS[3] + [0] * (512 - 8) and t["attention_mask"][0] == [1] * 8 + [0] * 504
    assert t["input_ids"][1] == [1] + [0] * 511 and t["attention_mask"][1] == [1] + [0] * 511  # = its caption dropout


def test_a_long_caption_is_cut_at_512():
    q = sd_scripts_call(qwen3_tokenizer(), [LONG])
    ids = q["input_ids"][0]
    assert len(ids) == 512 and ids[:8] == [4578, 62, 15, 8361, 19880, 701, 1602, 1293]
    assert ids[-4:] == [701, 1602, 1293, 1523] and q["attention_mask"][0] == [1] * 512  # cut mid-caption, no EOS
    t = sd_scripts_call(t5_tokenizer(), [LONG])
    ids = t["input_ids"][0]
    assert len(ids) == 512 and ids[:8] == [7860, 834, 632, 834, 599, 10833, 7, 201]
    assert ids[-4:] == [17831, 6, 7860, 1] and t["attention_mask"][0] == [1] * 512  # </s> kept last


def test_the_tokenizers_are_loaded_once():
    assert qwen3_tokenizer() is qwen3_tokenizer() and t5_tokenizer() is t5_tokenizer()


def test_the_tokenizer_files_are_package_data():
    """A wheel without them would download nothing and fail: the package-data globs must cover every file."""
    import tomllib  # Python 3.11+, as tests/test_import.py

    root = Path(__file__).resolve().parents[1]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lorafw.models"]
    models = anima_tokenizer_dir("t5").parents[1]
    files = [p for name in ("qwen3_06b", "t5") for p in anima_tokenizer_dir(name).iterdir()]
    needed = {"vocab.json", "merges.txt", "tokenizer_config.json", "tokenizer.json", "SOURCE.md"}
    assert {p.name for p in files} >= needed
    assert all(any(fnmatch(p.relative_to(models).as_posix(), g) for g in globs) for p in files)
