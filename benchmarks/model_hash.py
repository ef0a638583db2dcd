"""What kohya's base-model hashes cost lorafw: the first run on a checkpoint, and every run after it.

    python benchmarks/model_hash.py              # a 2 GiB file (SD1.5's size in fp16) in the temp folder
    python benchmarks/model_hash.py --gib 6.5 --dir /data   # SDXL's size, on the disk checkpoints live on

Writes a file of random bytes, then times (lorafw/outputs/model_hash.py): the legacy short hash (64 KiB read),
the whole-file sha256 (the file was just written, so it comes from the page cache: a CPU figure; a checkpoint
read cold from disk adds the disk's read time), the first `base_model_keys` with an empty cache (both hashes and
the cache write) and a cached `base_model_keys` (a stat and a small JSON read: what every later run pays).
In a training run the first hashing happens in a thread while the run caches latents and trains, so it is not
on the step path at all. Figures only: nothing here asserts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lorafw.outputs import model_hash as mh  # noqa: E402


def timed(fn, *args):
    t = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=2.0, help="file size in GiB")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to write the file (removed afterwards)")
    a = ap.parse_args()
    size = int(a.gib * 2**30)
    with tempfile.TemporaryDirectory(dir=a.dir) as tmp:
        path, cache = Path(tmp) / "model.safetensors", Path(tmp) / "hashes.json"
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 64 << 20)
                f.write(os.urandom(n))
                left -= n
        legacy, t_legacy = timed(mh.legacy_model_hash, path)
        full, t_full = timed(mh.file_sha256, path)
        _, t_first = timed(mh.base_model_keys, path, None, cache)
        keys, t_cached = timed(mh.base_model_keys, path, None, cache)
        assert keys == {"ss_sd_model_hash": legacy, "ss_new_sd_model_hash": full}
        gib = size / 2**30
        print(f"file: {gib:.2f} GiB in {tmp}")
        print(f"legacy short hash (ss_sd_model_hash):      {t_legacy * 1e3:8.2f} ms")
        print(f"sha256 of the whole file (page cache):     {t_full:8.2f} s   ({gib / t_full:.2f} GiB/s)")
        print(f"first run: both hashes + cache write:      {t_first:8.2f} s")
        print(f"every later run: cache hit:                {t_cached * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
