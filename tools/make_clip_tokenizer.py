"""Regenerate lorafw's packaged CLIP tokenizer files from OpenAI's BPE merges.

Why: nothing may download at run time, and transformers' CLIPTokenizer wants
`vocab.json` + `merges.txt`. The merges ship on PyPI inside open_clip_torch's wheel
(`open_clip/bpe_simple_vocab_16e6.txt.gz`, MIT licence); we take that one data file
and derive the two files exactly as CLIP's reference tokenizer builds its vocabulary.

    pip download --no-deps open_clip_torch -d /tmp/oc
    unzip -o /tmp/oc/open_clip_torch-*.whl open_clip/bpe_simple_vocab_16e6.txt.gz -d /tmp/oc
    python tools/make_clip_tokenizer.py /tmp/oc/open_clip/bpe_simple_vocab_16e6.txt.gz
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "lorafw" / "models" / "tokenizer_data" / "clip"
N_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 256 bytes + 2 specials + merges = 49408


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte → printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def build(gz_path: Path) -> tuple[dict[str, int], list[str]]:
    lines = gzip.open(gz_path, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1 : N_MERGES + 1]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(vocab)}, merges


def main() -> None:
    gz = Path(sys.argv[1])
    vocab, merges = build(gz)
    assert len(vocab) == 49408, len(vocab)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"wrote {OUT} ({len(vocab)} tokens, {len(merges)} merges)")


if __name__ == "__main__":
    main()
