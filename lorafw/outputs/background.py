"""Files written while training goes on: one background thread writes them in the order they were handed over.

An epoch's LoRA file and state.pt take from a fraction of a second to seconds to serialize, hash and fsync; on
the training thread that time is added to the step after the epoch. Here the trainer hands a job over and the
writer thread serializes and writes (each file still atomically: lorafw/outputs/atomic.py) while the next step's
forward and backward passes run. The LoRA tensors are copies; the optimizer state and weights are read live,
which is safe because the next step waits for the writer before it changes them (lorafw/trainers/loop.py).

`wait()` blocks until every job handed over is on disk and raises the first error a job met (a full disk, a
read-only folder: the same OutputError, one step later). The trainer waits in each optimizer step before the
update, before a stop (Ctrl-C, NaN) and at the run's end, so a file is never more than one step behind and a run
never exits with a write in flight. With `background=False` (lorafw.speed's async_save off) every job runs at once.
"""

from __future__ import annotations

import contextlib
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Iterator

WRITER_NICE = 10


def yield_to_training() -> None:
    """The writer thread at a lower scheduling priority (Linux: per thread) than the training threads: where they
    keep every core busy (a CPU run) it takes the gaps, instead of delaying a thread that the others then wait
    for at their next barrier; when the step waits for it, it gets the CPU anyway."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), WRITER_NICE)
    except (AttributeError, OSError):  # Windows; or not allowed: the default priority
        pass


class Writer:
    def __init__(self, background: bool = True) -> None:
        self.background = background
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._held: list[tuple[Callable[..., Any], tuple, dict]] | None = None
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Jobs submitted in the block start when it ends: the copies of an epoch's end (LoRA, state) are all taken
        before the thread starts serializing, rather than competing with it for the interpreter."""
        if not self.background or self._held is not None:
            yield
            return
        self._held = []
        try:
            yield
        finally:
            jobs, self._held = self._held, None
            for job, args, kwargs in jobs:
                self.submit(job, *args, **kwargs)

    def submit(self, job: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run `job(*args, **kwargs)` on the writer thread after the jobs before it (or now, in the foreground)."""
        if not self.background:
            job(*args, **kwargs)
            return
        if self._held is not None:
            self._held.append((job, args, kwargs))
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lorafw-writer", initializer=yield_to_training)
        with self._lock:
            self._pending.append(self._pool.submit(job, *args, **kwargs))

    def wait(self) -> None:
        """Block until every job handed over has finished; raise the first error one of them met."""
        with self._lock:
            pending, self._pending = self._pending, []
        error: BaseException | None = None
        for f in pending:
            try:
                f.result()
            except BaseException as e:  # noqa: BLE001 - re-raised below, after the later jobs finished too
                error = error or e
        if error is not None:
            raise error

    def close(self) -> None:
        """Wait, then stop the thread (the writer can be used again: a new thread starts on the next job)."""
        try:
            self.wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
