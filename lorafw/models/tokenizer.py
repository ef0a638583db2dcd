"""The CLIP tokenizers, from data shipped inside lorafw (nothing is downloaded).

SD1.5's tokenizer and SDXL's first are CLIP ViT-L/14's BPE (pad = <|endoftext|>); SDXL's
second (OpenCLIP bigG) is the same vocabulary and merges with pad token "!" (id 0).
tools/make_clip_tokenizer.py regenerates the files from open_clip_torch's published merges.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path


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
