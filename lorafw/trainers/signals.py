"""Ctrl-C and SIGTERM during training: the first asks for a clean stop after the current step (state and
a usable LoRA are saved), the second stops at once (atomic writes keep every finished file whole)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType
from typing import Any

from lorafw.logs import log

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


def say(message: str) -> None:
    """A warning written straight to the stderr file descriptor (safe inside a signal handler)."""
    if log.isEnabledFor(30):  # WARNING: data-parallel workers other than the main one stay quiet
        try:
            os.write(sys.stderr.fileno(), f"[lorafw] {message}\n".encode())
        except (OSError, ValueError):  # stderr closed or replaced by an object without a descriptor
            pass


class StopRequests:
    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "StopRequests":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                current = signal.getsignal(sig)
                if current is signal.SIG_IGN:
                    continue  # started with the signal ignored (nohup, a background job): leave it so
                self._old[sig] = current
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
            # Not through logging: the signal may arrive while the main thread is inside a write to stderr, and
            # a buffered write re-entered from a handler fails ("reentrant call"). One unbuffered write cannot.
            say(f"{signal.Signals(signum).name}: finishing the current step, then saving state and a LoRA "
                "(press Ctrl-C again to stop at once)")
            return
        self._restore()
        raise KeyboardInterrupt

    def _restore(self) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()

    def __exit__(self, *exc: object) -> None:
        self._restore()
