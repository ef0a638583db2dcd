"""Image decoding ahead of the device, in worker threads.

Decoding a booru JPEG/PNG and resizing it with Lanczos takes tens to hundreds of ms of CPU; the VAE
encodes it on a GPU in a few. Done one after another, the device waits on the CPU. `Ahead` keeps up to
`depth` items in flight on a thread pool (PIL and numpy release the GIL while they decode and resample)
and hands results back in the order asked, so nothing downstream (latents, seeds, files) depends on
how many workers ran. Threads, not processes: the work is GIL-free, and threads need no pickling of
the dataset, no fork of a process holding a CUDA context, and no start-up cost per epoch.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def resolve_workers(workers: int | None, device_type: str = "cuda") -> int:
    """Loader threads for `dataset.workers`: as given; or (None) one per core, at most 8, when the model
    runs on an accelerator, and none on a CPU, where torch's own threads already use every core (measured
    on 2 cores: the tiny VAE's cache build lost ~30% with 2 loader threads beside it)."""
    if workers is not None:
        return workers
    return 0 if device_type == "cpu" else max(1, min(8, os.cpu_count() or 1))


class Ahead(Generic[T, R], Iterator[R]):
    """`map(fn, items)` with `workers` threads working up to `depth` items ahead of the one being handed
    over (default 2 per worker), started at construction so the first are ready when asked for: memory
    holds at most depth + 1 results.

    Results come in the order of `items`; an exception from `fn` is raised when its item is reached (every
    item before it is delivered first). `workers=0` runs `fn` in the caller's thread, lazily: the exact
    behaviour the threaded path must reproduce. `close()` (or leaving a `with` block) cancels what has not
    started and waits for what has.
    """

    def __init__(self, fn: Callable[[T], R], items: Iterable[T], workers: int, depth: int | None = None) -> None:
        self._fn, self._items = fn, iter(items)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lorafw-load") if workers > 0 else None
        self._pending: deque[Future[R]] = deque()
        self._depth = max(1, depth if depth is not None else 2 * workers)
        self._top_up()

    def _top_up(self) -> None:
        if self._pool is None:
            return
        while len(self._pending) < self._depth:
            item = next(self._items, _END)
            if item is _END:
                return
            self._pending.append(self._pool.submit(self._fn, item))

    def __next__(self) -> R:
        if self._pool is None:
            return self._fn(next(self._items))
        if not self._pending:
            self.close()
            raise StopIteration
        future = self._pending.popleft()
        self._top_up()  # keep the workers busy while the caller uses this result
        try:
            return future.result()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for f in self._pending:
            f.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def __enter__(self) -> Ahead[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_END = object()


class Lookahead(Generic[T, R]):
    """Results of `fn` for a sequence of keys known in advance, computed `Ahead` and taken in order.

    The trainer knows every batch (and flip) of an epoch before it starts. `take(key)` returns the
    prefetched result when `key` is the next one expected and None otherwise (the caller then computes it
    itself): a lookahead can only save time, never change what is computed.
    """

    def __init__(self, fn: Callable[[T], R], keys: list[T], workers: int, depth: int | None = None) -> None:
        self._keys = deque(keys)
        self._ahead = Ahead(fn, keys, workers, depth)
        self.served = self.missed = 0  # how often the prefetch was used / the caller had to compute itself

    def take(self, key: T) -> R | None:
        if not self._keys or self._keys[0] != key:
            self.missed += 1
            return None
        self._keys.popleft()
        self.served += 1
        return next(self._ahead)

    def close(self) -> None:
        self._keys.clear()
        self._ahead.close()
