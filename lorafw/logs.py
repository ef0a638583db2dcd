"""lorafw's messages: the "lorafw" logger, progress bars, and logging for callers who set up none.

No other lorafw imports, so any module may use it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterator

log = logging.getLogger("lorafw")
# bitsandbytes warns on import, on CPUs with AVX512-BF16, that an optional 4-bit kernel package is missing;
# lorafw never uses 4-bit layers, so the line only confuses.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# transformers 5 warns, once per class, that CLIP's/SigLIP's image processors fall back to their PIL versions
# without torchvision; lorafw installs no torchvision on purpose (the registry's is a CUDA build) and the PIL
# processors are the ones it wants.
logging.getLogger("transformers.utils.import_utils").setLevel(logging.ERROR)


def ensure_logging() -> None:
    """Notebook callers (and `lorafw grid`) get lorafw's progress lines without configuring logging themselves."""
    if not logging.getLogger().handlers and not log.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("[lorafw] %(message)s"))
        log.addHandler(h)
        log.setLevel(logging.INFO)


@contextlib.contextmanager
def quiet(logger: str, level: int = logging.ERROR) -> Iterator[None]:
    """Raise one library logger's threshold for a moment (for warnings that do not apply to us)."""
    lg = logging.getLogger(logger)
    old = lg.level
    lg.setLevel(level)
    try:
        yield
    finally:
        lg.setLevel(old)


def progress_bar(shown: bool = True, **kwargs: Any):
    """tqdm in a terminal or a notebook (Colab); silent in logs and CI, where epoch lines say enough, and in
    every data-parallel process but the main one (`shown=False`)."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty() or "ipykernel" in sys.modules
    return tqdm(disable=not (interactive and shown), dynamic_ncols=True, **kwargs)
