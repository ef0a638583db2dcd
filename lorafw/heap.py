"""Keep freed memory for reuse while training on a CPU (glibc's malloc), instead of returning it to the system.

Every training step allocates and frees the same activations, many of them megabytes to tens of megabytes. glibc
serves large blocks with mmap and gives them back with munmap on free (and trims the heap's top), so each step
the kernel maps, zeroes and faults in the same memory again: on a full-size SD1.5 step at 256 px, ~470,000 page
faults and ~0.7 s of system time out of ~7.5 s (1 thread; benchmarks/step_profile.py). With mmap off and trimming
off for the duration, a freed block stays in the heap and the next step reuses it: the faults and the system
time go (measured: ~1,000 faults), and the peak resident memory is the same (each step reaches it anyway).

Nothing computed changes (where a tensor's memory comes from does not enter any result). The settings are
restored and the kept memory trimmed when training ends. Elsewhere than glibc (macOS, Windows, musl) this does
nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import sys
from typing import Iterator

log = logging.getLogger("lorafw")

# glibc's mallopt parameters (malloc.h) and their defaults
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # only glibc has it (musl has no mallopt tunables worth setting)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """For the block: large allocations from the heap (no mmap) and no trimming; yields whether that is in effect."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield False
        return
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)):
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        yield False
        return
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)  # what training kept goes back to the system
