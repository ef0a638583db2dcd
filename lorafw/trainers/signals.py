"""Ctrl-C and SIGTERM during training: the first asks for a clean stop after the current step (state and
a usable LoRA are saved), the second stops at once (atomic writes keep every finished file whole)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from lorafw.trainers.common import log

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


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
            log.warning(f"{signal.Signals(signum).name}: finishing the current step, then saving state and a LoRA "
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
