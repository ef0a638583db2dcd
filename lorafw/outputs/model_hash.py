"""The base checkpoint's hashes as kohya sd-scripts writes them into a LoRA (`ss_sd_model_hash`,
`ss_new_sd_model_hash`, and `ss_vae_hash` / `ss_new_vae_hash` for an external VAE), cached per file.

- `legacy_model_hash`: A1111's old short hash, kohya's `train_util.model_hash`: sha256 of the 64 KiB at offset
  1 MiB, first 8 hex digits. A file shorter than 1 MiB hashes the empty string (`e3b0c442`), one that ends
  inside the window hashes what is there — as kohya's `seek` + `read` do.
- `file_sha256`: sha256 of the whole file, kohya's `train_util.calculate_sha256` (A1111's "new" hash; Civitai
  looks models up by it).
- A path that is not a file gets kohya's strings: "IsADirectory" for a folder (a diffusers base model: kohya
  opens it, catches IsADirectoryError and writes that; it also writes it on PermissionError), "NOFILE" for a
  missing file.

Hashing a 7 GB checkpoint reads all of it (seconds to tens of seconds), so results are cached in a small JSON
file keyed by the absolute path with the file's size and mtime: `$LORAFW_HASH_CACHE`, else
`$XDG_CACHE_HOME/lorafw/model_hashes.json` (`~/.cache/...`). A missing, corrupt or unwritable cache only costs
the hashing again; it never fails a run. The trainer hashes in a background thread (`in_background`): hashlib
releases the GIL, so even the first run of a new base file waits for nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("lorafw")

LEGACY_OFFSET, LEGACY_LENGTH = 0x100000, 0x10000  # kohya's model_hash: 64 KiB at 1 MiB
CHUNK = 1 << 20
CACHE_ENV = "LORAFW_HASH_CACHE"
CACHE_VERSION = 1
MAX_ENTRIES = 512  # a user has a few dozen checkpoints; the oldest entries go first
NOFILE, NOT_A_FILE = "NOFILE", "IsADirectory"  # kohya's values when the path cannot be read as a file


def legacy_model_hash(path: str | Path) -> str:
    """kohya's `model_hash` (A1111's old hash): sha256 of bytes [1 MiB, 1 MiB + 64 KiB), 8 hex digits."""
    with open(path, "rb") as f:
        f.seek(LEGACY_OFFSET)
        return hashlib.sha256(f.read(LEGACY_LENGTH)).hexdigest()[:8]


def file_sha256(path: str | Path) -> str:
    """kohya's `calculate_sha256`: sha256 of the whole file, 64 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_file() -> Path:
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lorafw" / "model_hashes.json"


def _read_cache(path: Path) -> dict[str, dict[str, Any]]:
    """The cached entries, or {} when the file is missing, unreadable, or not what we wrote."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    files = doc.get("files") if isinstance(doc, dict) and doc.get("version") == CACHE_VERSION else None
    return {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def _write_cache(path: Path, files: dict[str, dict[str, Any]]) -> None:
    """Best effort, atomic (a temporary file renamed into place): a failure is logged, never raised."""
    if len(files) > MAX_ENTRIES:
        keep = sorted(files, key=lambda k: files[k].get("hashed_at", 0))[-MAX_ENTRIES:]
        files = {k: files[k] for k in keep}
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"version": CACHE_VERSION, "files": files}, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        log.debug(f"model hash cache {path} not written ({e})")
        try:
            tmp.unlink()
        except OSError:
            pass


def file_hashes(path: str | Path, cache: Path | None = None) -> tuple[str, str]:
    """(legacy short hash, full sha256) of a file, from the cache when its size and mtime are unchanged.
    Raises OSError as `open` does (the caller maps it to kohya's strings)."""
    p = Path(path).resolve()
    st = p.stat()
    if not p.is_file():
        raise IsADirectoryError(21, "Is a directory", str(p))
    cache = cache if cache is not None else cache_file()
    key, stamp = str(p), {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    hit = _read_cache(cache).get(key)
    if hit and all(hit.get(k) == v for k, v in stamp.items()) and isinstance(hit.get("sha256"), str) \
            and isinstance(hit.get("legacy"), str):
        return hit["legacy"], hit["sha256"]
    t0 = time.perf_counter()
    legacy, full = legacy_model_hash(p), file_sha256(p)
    log.info(f"hashed {p.name} ({st.st_size / 2**30:.2f} GiB) in {time.perf_counter() - t0:.1f} s; cached in {cache}")
    files = _read_cache(cache)  # re-read: another run may have added entries meanwhile
    files[key] = {**stamp, "legacy": legacy, "sha256": full, "hashed_at": time.time()}
    _write_cache(cache, files)
    return legacy, full


def kohya_hashes(path: str | Path, cache: Path | None = None) -> tuple[str, str]:
    """`file_hashes`, with kohya's strings where the path is not a readable file (see the module doc)."""
    try:
        return file_hashes(path, cache)
    except FileNotFoundError:
        return NOFILE, NOFILE
    except (IsADirectoryError, PermissionError):
        return NOT_A_FILE, NOT_A_FILE


def base_model_keys(model: str | Path, vae: str | Path | None = None, cache: Path | None = None) -> dict[str, str]:
    """The hash keys kohya's train_network.py writes for the base model and, when given, the external VAE
    (kohya hashes any path that exists; lorafw's base model always exists locally, nothing is downloaded)."""
    out: dict[str, str] = {}
    if os.path.exists(model):
        out["ss_sd_model_hash"], out["ss_new_sd_model_hash"] = kohya_hashes(model, cache)
    if vae is not None and os.path.exists(vae):
        out["ss_vae_hash"], out["ss_new_vae_hash"] = kohya_hashes(vae, cache)
    return out


class Background:
    """`fn(*args)` in a daemon thread; `result()` waits for it. A failure is logged and gives `default`:
    metadata must never fail a run."""

    def __init__(self, fn: Callable[..., Any], *args: Any, default: Any = None, what: str = "") -> None:
        self._value, self._default, self._what = default, default, what or getattr(fn, "__name__", "task")
        self._thread = threading.Thread(target=self._run, args=(fn, args), name=f"lorafw-{self._what}", daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            self._value = fn(*args)
        except Exception as e:  # noqa: BLE001 — reported, and the run goes on without the value
            log.warning(f"{self._what} failed ({type(e).__name__}: {e}); the LoRA files are written without it")
            self._value = self._default

    def result(self) -> Any:
        self._thread.join()
        return self._value


def in_background(model: str | Path, vae: str | Path | None = None) -> Background:
    """`base_model_keys` in a background thread (started after the weights are loaded, so the file is read
    from the page cache), joined when the first LoRA file is written."""
    return Background(base_model_keys, model, vae, default={}, what="hashing the base model")
